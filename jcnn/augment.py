"""Data augmentation on device: random crops (zero or reflect padding), horizontal flips
(random or alternating by epoch), cutout.

>>> X_aug = random_crop_flip(key, X)          # X (N, C, H, W), same shape out  # doctest: +SKIP

The standard CIFAR-10 recipe: pad every image with ``pad`` zeros on each side, cut a random
``H × W`` window out of the padded image (so the content shifts by up to ``pad`` pixels each
way), and mirror it left-right with probability 1/2. Every image of the batch draws its own
offset and flip from ``key``.

Pure ``jax.numpy``: it runs inside a jitted training step, under ``jax.vmap`` and on any
device, and the same key gives the same batch. On mean-subtracted data a zero pixel is the
mean pixel, which is what the padding should be.

Cutout (DeVries & Taylor, 2017) zeroes a ``size × size`` square of each image, centred on a
uniformly random pixel (the part that falls outside the image is dropped), so that the net
cannot rely on any one region.

The :class:`jcnn.solver.Solver` takes it as ``augment=random_crop_flip`` (or
``functools.partial(random_crop_flip, pad=4, cutout=8)``), applied to each minibatch inside
the jitted step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from jcnn._validate import nonnegative_int

__all__ = ["alternating_flip_crop", "cutout", "random_crop", "random_crop_flip", "random_flip"]


def _check(X, value: int, name: str = "pad") -> tuple[jax.Array, int]:
    X = jnp.asarray(X)
    if X.ndim != 4:
        raise ValueError(f"X must be a batch of images (N, C, H, W), got shape {tuple(X.shape)}")
    return X, nonnegative_int(name, value)


# ``padding`` -> jnp.pad's mode: zeros (the mean pixel of mean-subtracted data), or the
# image mirrored at its border without repeating the edge pixels.
_PAD_MODES = {"zeros": "constant", "reflect": "reflect"}


def _check_padding(padding: str, pad: int, X: jax.Array) -> str:
    if padding not in _PAD_MODES:
        raise ValueError(f"padding must be one of {sorted(_PAD_MODES)}, got {padding!r}")
    if padding == "reflect" and pad >= min(X.shape[2:]):
        raise ValueError(f"pad={pad} must be smaller than the images {X.shape[2:]} to reflect")
    return _PAD_MODES[padding]


def _crop(key: jax.Array, X: jax.Array, pad: int, mode: str = "constant") -> jax.Array:
    if pad == 0:
        return X
    n, c, h, w = X.shape
    offsets = jax.random.randint(key, (n, 2), 0, 2 * pad + 1)
    padded = jnp.pad(X, ((0, 0), (0, 0), (pad, pad), (pad, pad)), mode=mode)

    def one(img, off):
        zero = jnp.zeros((), off.dtype)
        return lax.dynamic_slice(img, (zero, off[0], off[1]), (c, h, w))

    return jax.vmap(one)(padded, offsets)


def _flip(key: jax.Array, X: jax.Array) -> jax.Array:
    flips = jax.random.bernoulli(key, 0.5, (X.shape[0],))
    return jnp.where(flips[:, None, None, None], X[..., ::-1], X)


def _cutout(key: jax.Array, X: jax.Array, size: int) -> jax.Array:
    if size == 0:
        return X
    n, _, h, w = X.shape
    k_row, k_col = jax.random.split(key)
    top = jax.random.randint(k_row, (n, 1, 1), 0, h) - size // 2
    left = jax.random.randint(k_col, (n, 1, 1), 0, w) - size // 2
    rows = jnp.arange(h)[None, :, None]
    cols = jnp.arange(w)[None, None, :]
    inside = (rows >= top) & (rows < top + size) & (cols >= left) & (cols < left + size)
    return jnp.where(inside[:, None], jnp.zeros((), X.dtype), X)


def cutout(key: jax.Array, X, *, size: int = 8) -> jax.Array:
    """Each image of ``X`` (N, C, H, W) with a ``size × size`` square set to 0 (every
    channel), centred on a uniformly random pixel and clipped at the borders.

    Args:
        key: a ``jax.random`` key; the same key gives the same output.
        X: a batch of images ``(N, C, H, W)``.
        size: side of the square, a non-negative int; 0 leaves ``X`` as it is.

    Returns:
        An array of the shape and dtype of ``X``.

    Raises:
        ValueError: if ``X`` is not rank 4, or naming ``size`` if it is not a non-negative int.
    """
    X, size = _check(X, size, "size")
    return _cutout(key, X, size)


def random_crop(key: jax.Array, X, *, pad: int = 4, padding: str = "zeros") -> jax.Array:
    """Each image of ``X`` (N, C, H, W) padded with ``pad`` pixels per side and cropped back
    to H × W at a uniformly random offset in ``[0, 2·pad]`` along each axis.

    Args:
        key: a ``jax.random`` key; the same key gives the same output.
        X: a batch of images ``(N, C, H, W)``.
        pad: padding per side, a non-negative int (the largest shift); 0 leaves ``X``.
        padding: what the padding holds: ``"zeros"`` (default), or ``"reflect"``: the
            image mirrored at its border (the edge pixel not repeated; airbench's choice).

    Returns:
        An array of the shape and dtype of ``X``.

    Raises:
        ValueError: if ``X`` is not rank 4, naming ``pad`` if it is not a non-negative int
            (or, to reflect, not smaller than the images), or naming ``padding``.
    """
    X, pad = _check(X, pad)
    return _crop(key, X, pad, _check_padding(padding, pad, X))


def random_flip(key: jax.Array, X) -> jax.Array:
    """Each image of ``X`` (N, C, H, W) mirrored left-right with probability 1/2.

    Args:
        key: a ``jax.random`` key; the same key gives the same output.
        X: a batch of images ``(N, C, H, W)``.

    Returns:
        An array of the shape and dtype of ``X``.

    Raises:
        ValueError: if ``X`` is not rank 4.
    """
    X, _ = _check(X, 0)
    return _flip(key, X)


def random_crop_flip(
    key: jax.Array, X, *, pad: int = 4, cutout: int = 0, padding: str = "zeros"
) -> jax.Array:
    """:func:`random_crop` then :func:`random_flip` (then :func:`cutout` if ``cutout`` > 0),
    each with its own part of ``key``.

    Args:
        key: a ``jax.random`` key; the same key gives the same output.
        X: a batch of images (N, C, H, W), any float dtype (kept).
        pad: padding per side, i.e. the largest shift in pixels; 0 only flips.
        cutout: side of the square zeroed in each image; 0 (default): none.
        padding: ``"zeros"`` (default) or ``"reflect"``, as in :func:`random_crop`.

    Returns:
        An array of the shape and dtype of ``X``.

    Raises:
        ValueError: if ``X`` is not rank 4, naming ``pad`` or ``cutout`` if it is not a
            non-negative int, or naming ``padding``.
    """
    X, pad = _check(X, pad)
    _, size = _check(X, cutout, "cutout")
    mode = _check_padding(padding, pad, X)
    k_crop, k_flip = jax.random.split(key)
    out = _flip(k_flip, _crop(k_crop, X, pad, mode))
    if size:  # a third key only then, so that cutout=0 draws exactly as before
        out = _cutout(jax.random.fold_in(key, 2), out, size)
    return out


# A fixed direction in image space: the sign of an image's projection on it is the image's
# own random bit (which half of the data starts mirrored), with no index to carry around.
_FLIP_BIT_SEED = 0x666C6970


def _image_bits(X: jax.Array) -> jax.Array:
    direction = jax.random.normal(jax.random.key(_FLIP_BIT_SEED), X.shape[1:], jnp.float32)
    direction = direction - jnp.mean(direction)
    proj = jnp.einsum("nchw,chw->n", X.astype(jnp.float32), direction)
    return proj > 0


def alternating_flip_crop(
    key: jax.Array, X, *, step, steps_per_epoch: int, pad: int = 2, cutout: int = 0
) -> jax.Array:
    """airbench's augmentation: random translation by up to ``pad`` pixels with *reflect*
    padding, and "alternating" flips: every image is mirrored in every other epoch.

    Half of the images (chosen by a fixed random bit of each image: the sign of its
    projection on a fixed random direction, so no image index is needed) are mirrored in
    even epochs and the other half in odd ones, where the epoch is ``step //
    steps_per_epoch``: over any two consecutive epochs each image is seen once each way,
    which beats independent coin flips for short runs (Jordan, 2024). Use it with a
    sampler that visits every image once per epoch.

    Args:
        key: a ``jax.random`` key (the translations).
        X: a batch of images ``(N, C, H, W)``.
        step: the update count (an int or an integer scalar array).
        steps_per_epoch: updates per epoch, a positive int.
        pad: the largest shift in pixels, a non-negative int smaller than H and W.
        cutout: then zero a square of this side in each image (:func:`cutout`); 0
            (default): none.

    Returns:
        An array of the shape and dtype of ``X``.

    Raises:
        ValueError: if ``X`` is not rank 4, ``pad`` is negative or not smaller than the
            images, ``steps_per_epoch`` is not positive, or naming ``cutout`` if it is not a
            non-negative int.
    """
    _, size = _check(X, cutout, "cutout")
    X, pad = _check(X, pad)
    mode = _check_padding("reflect", pad, X)
    if int(steps_per_epoch) < 1:
        raise ValueError(f"steps_per_epoch must be a positive int, got {steps_per_epoch!r}")
    odd_epoch = (jnp.asarray(step) // int(steps_per_epoch)) % 2 == 1
    flip = _image_bits(X) ^ odd_epoch
    out = _crop(key, X, pad, mode)
    out = jnp.where(flip[:, None, None, None], out[..., ::-1], out)
    if size:  # a second key only then, so that cutout=0 draws exactly as before
        out = _cutout(jax.random.fold_in(key, 2), out, size)
    return out
