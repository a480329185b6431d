"""The airbench-style CIFAR-10 net (Jordan, 2024, "94% on CIFAR-10 in 3.29 seconds on a
single GPU"), on the hand-written layers.

::

    whitening conv k×k (frozen filters from the data, trained bias) - gelu
    [conv3×3 - 2×2 max pool - batchnorm(shift) - gelu - conv3×3 - batchnorm(shift) - gelu]
        × one block per entry of widths (airbench94: 3), widths[s] filters each
    global max pool - affine (no bias) - × head_scale

With ``convs_per_block = n > 2`` (airbench96: 3) each block has n convolutions, and the
output of the first (after its pool, batchnorm and GELU) is added to that of the last
(:func:`jcnn.layers.residual_add`): a residual connection over the n − 1 convolutions that
keep the block's width and size. The last convolution's GELU comes before the add
(airbench96 as first published) or, with ``gelu_after_add``, after it (its 2024 revision)::

    ... conv3×3 - batchnorm(shift) - (+ first's output) - gelu

The convolutions have no bias (the batchnorm shift follows them); every batchnorm has its
scale fixed at 1 (:func:`jcnn.layers.batchnorm_gelu`). Max pools floor: a 31 × 31 map pools to
15 × 15, the last row and column dropped.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jcnn.layers.losses import check_label_smoothing
from jcnn.models import _common as C

__all__ = ["AirbenchNet", "whitening_filters"]


def whitening_filters(X: Any, kernel_size: int, *, eps: float = 5e-4) -> np.ndarray:
    """Filters that whiten the ``kernel_size × kernel_size`` patches of images ``X``.

    With Σ the (uncentred) covariance of every patch of ``X`` flattened to ``d = C·k²``
    values, ``Σ = V diag(λ) Vᵀ``, filter ``i`` is ``v_i / √(λ_i + ε)`` (largest λ first),
    followed by the negatives of the same ``d`` filters, so that a following GELU sees each
    direction with both signs. ``ε = eps · trace(Σ)/d`` is relative to the mean eigenvalue,
    so the filters do not depend on the scale of the pixels.

    Args:
        X: images ``(N, C, H, W)`` (host or device array; read as float64).
        kernel_size: the patch side k, a positive int no larger than H or W.
        eps: the regulariser relative to the mean eigenvalue, > 0.

    Returns:
        float32 filters ``(2·d, C, k, k)``, ``d = C·k²``.

    Raises:
        ValueError: ``X`` not rank 4 or empty; ``kernel_size`` larger than the images;
            ``eps`` not > 0.
    """
    X = np.asarray(X, np.float64)
    if X.ndim != 4 or X.shape[0] == 0:
        raise ValueError(f"X must be a non-empty batch of images (N, C, H, W), got {X.shape}")
    k = C.positive_int("kernel_size", kernel_size)
    n, c, h, w = X.shape
    if k > h or k > w:
        raise ValueError(f"kernel_size={k} is larger than the images ({h}x{w})")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps!r}")
    d = c * k * k
    cov = np.zeros((d, d))
    for start in range(0, n, 1000):  # patches of 1,000 images at a time
        chunk = X[start : start + 1000]
        taps = [
            chunk[:, :, i : h - k + 1 + i, j : w - k + 1 + j] for i in range(k) for j in range(k)
        ]
        patches = np.stack(taps, axis=2)  # (n, c, k·k, h', w'), the (c, kh, kw) order
        flat = patches.transpose(0, 3, 4, 1, 2).reshape(-1, d)
        cov += flat.T @ flat
    cov /= n * (h - k + 1) * (w - k + 1)
    lam, vec = np.linalg.eigh(cov)
    lam, vec = lam[::-1], vec[:, ::-1]  # largest first
    scaled = (vec / np.sqrt(lam + eps * np.trace(cov) / d)).T.reshape(d, c, k, k)
    return np.concatenate([scaled, -scaled]).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class AirbenchNet(C.Model):
    """The airbench94 net on NCHW images (module docs); activations are NHWC inside.

    Parameters and state (``init`` returns ``(params, state)``)::

        params['whiten']     = {'w': (2·C·k², C, k, k), 'b': (2·C·k²,)}
        params['conv{s}_1']  = {'w': (widths[s-1], C_in, 3, 3)}      (no bias)
        params['conv{s}_{a}'] = {'w': (widths[s-1], widths[s-1], 3, 3)}  a = 2..convs_per_block
        params['norm{s}_{a}'] = {'beta': (widths[s-1],)}              (no scale)
        params['out']        = {'w': (widths[-1], num_classes)}       (no bias)
        state['norm{s}_{a}'] = {'running_mean', 'running_var'}

    ``init`` follows PyTorch's defaults (uniform ``±1/√fan_in`` weights) with the first
    ``min(F, C_in)`` filters of every 3×3 conv set to the identity (a Dirac kernel per input
    channel); the whitening filters need the data: use :meth:`init_with_data`. The scores are
    ``head_scale · (features @ w_out)``. ``bn_momentum`` is the weight of the old running
    statistics (airbench's 0.6), ``bn_eps`` airbench's 1e-12. ``gelu_after_add`` (with
    ``convs_per_block`` > 2) moves each block's last GELU after its residual add (module
    docs).
    """

    input_dim: tuple[int, int, int] = (3, 32, 32)
    widths: tuple[int, ...] = (64, 256, 256)
    convs_per_block: int = 2
    gelu_after_add: bool = False
    whiten_kernel: int = 2
    num_classes: int = 10
    head_scale: float = 1.0 / 9.0
    bn_momentum: float = 0.6
    bn_eps: float = 1e-12
    label_smoothing: float = 0.2
    gelu_approximate: bool = False
    reg: float = 0.0
    dtype: Any = jnp.float32
    layers: str = "jcnn"
    weight_scale: str = "torch"

    def __post_init__(self):
        input_dim = C.int_tuple("input_dim", self.input_dim)
        if len(input_dim) != 3:
            raise ValueError(f"input_dim must be (C, H, W), got {self.input_dim!r}")
        C.set_field(self, "input_dim", input_dim)
        widths = C.int_tuple("widths", self.widths)
        C.set_field(self, "widths", widths)
        n = C.positive_int("convs_per_block", self.convs_per_block)
        if n < 2:
            raise ValueError(f"convs_per_block must be an int >= 2, got {self.convs_per_block!r}")
        C.set_field(self, "convs_per_block", n)
        C.set_field(self, "whiten_kernel", C.positive_int("whiten_kernel", self.whiten_kernel))
        C.set_field(self, "num_classes", C.positive_int("num_classes", self.num_classes))
        scale = float(self.head_scale)
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"head_scale must be a positive float, got {self.head_scale!r}")
        C.set_field(self, "head_scale", scale)
        C.set_field(self, "label_smoothing", check_label_smoothing(self.label_smoothing))
        C.set_field(self, "reg", C.nonnegative_float("reg", self.reg))
        for name in ("gelu_approximate", "gelu_after_add"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        C.set_field(self, "dtype", C.float_dtype("dtype", self.dtype))
        C.choice("layers", self.layers, C.LAYERS)
        C.check_batchnorm_fields(self)
        _ = self.block_sizes  # raises if the images are too small
        C.check_weights_fit(self, ("widths", "convs_per_block"))

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The shape of one example: ``input_dim``, ``(C, H, W)``."""
        return self.input_dim

    @property
    def block_sizes(self) -> tuple[tuple[int, int], ...]:
        """``(H, W)`` after the whitening conv and after each block's pool.

        Raises:
            ValueError: if a block would pool a map smaller than 2 × 2.
        """
        _, h, w = self.input_dim
        h, w = h - self.whiten_kernel + 1, w - self.whiten_kernel + 1
        sizes = [(h, w)]
        for s in range(1, len(self.widths) + 1):
            if h < 2 or w < 2:
                raise ValueError(
                    f"input_dim={self.input_dim} is too small: block {s} would max-pool a "
                    f"{max(h, 0)}x{max(w, 0)} map"
                )
            h, w = h // 2, w // 2
            sizes.append((h, w))
        return tuple(sizes)

    def weight_shapes(self) -> dict[str, tuple[int, ...]]:
        """``{layer: shape of its 'w'}`` in forward order (``whiten``, ``conv{s}_{a}``,
        ``out``)."""
        c, k = self.input_dim[0], self.whiten_kernel
        c_in = 2 * c * k * k
        shapes: dict[str, tuple[int, ...]] = {"whiten": (c_in, c, k, k)}
        for s, width in enumerate(self.widths, start=1):
            shapes[f"conv{s}_1"] = (width, c_in, 3, 3)
            for a in range(2, self.convs_per_block + 1):
                shapes[f"conv{s}_{a}"] = (width, width, 3, 3)
            c_in = width
        shapes["out"] = (c_in, self.num_classes)
        return shapes

    def batchnorm_layers(self) -> tuple[str, ...]:
        """``('norm1_1', 'norm1_2', ..., 'norm{B}_{n}')`` for ``B = len(widths)`` blocks of
        ``n = convs_per_block`` convolutions."""
        convs = range(1, self.convs_per_block + 1)
        return tuple(f"norm{s}_{a}" for s in range(1, len(self.widths) + 1) for a in convs)

    def init(self, key: jax.Array) -> tuple[dict, dict]:
        """``(params, state)`` with PyTorch's default weights, Dirac-initialised 3×3 convs,
        zero shifts and biases, running mean 0 and variance 1 (class docs). The whitening
        filters are random here; :meth:`init_with_data` sets them from images.

        Args:
            key: a JAX PRNG key.

        Returns:
            ``(params, state)`` as the class docs list them, in ``dtype``.
        """
        shapes = self.weight_shapes()
        keys = jax.random.split(key, len(shapes))
        params: dict[str, dict[str, jax.Array]] = {}
        for k, (name, shape) in zip(keys, shapes.items(), strict=True):
            fan_in = shape[0] if name == "out" else math.prod(shape[1:])
            bound = 1.0 / math.sqrt(fan_in)
            w = jax.random.uniform(k, shape, self.dtype, -bound, bound)
            if name.startswith("conv"):
                n = min(shape[0], shape[1])  # filter i < n passes input channel i through
                dirac = jnp.zeros((n, *shape[1:]), self.dtype)
                dirac = dirac.at[jnp.arange(n), jnp.arange(n), 1, 1].set(1.0)
                w = w.at[:n].set(dirac)
            params[name] = {"w": w}
        params["whiten"]["b"] = jnp.zeros((shapes["whiten"][0],), self.dtype)
        state = {}
        for s, width in enumerate(self.widths, start=1):
            for a in range(1, self.convs_per_block + 1):
                params[f"norm{s}_{a}"] = {"beta": jnp.zeros((width,), self.dtype)}
                state[f"norm{s}_{a}"] = C.bn_state(width, self.dtype)
        return params, state

    def init_with_data(self, key: jax.Array, X: Any, *, eps: float = 5e-4) -> tuple[dict, dict]:
        """:meth:`init`, with the whitening filters of images ``X``
        (:func:`whitening_filters`; airbench uses the first 5,000 training images).

        Args:
            key: a JAX PRNG key.
            X: images ``(N, *input_dim)``, preprocessed as the training images are.
            eps: the whitening regulariser, relative to the mean eigenvalue.

        Returns:
            ``(params, state)``.

        Raises:
            ValueError: ``X`` not ``(N, *input_dim)``.
        """
        self.check_input(X)
        params, state = self.init(key)
        w = whitening_filters(X, self.whiten_kernel, eps=eps)
        params["whiten"]["w"] = jnp.asarray(w, self.dtype)
        return params, state

    def apply(self, params, state, X, *, train: bool = False, key=None):
        """Class scores ``(N, num_classes)`` and the new state (updated running statistics
        when ``train``). ``key`` is unused (no dropout).

        Args:
            params: the parameters (class docs).
            state: the batchnorm running statistics.
            X: images ``(N, *input_dim)``, cast to the parameters' dtype.
            train: batchnorm on batch statistics (and the running ones updated).
            key: ignored.

        Returns:
            ``(scores, new_state)``.

        Raises:
            ValueError: ``X`` not ``(N, *input_dim)``; from the layers if ``params`` or
                ``state`` hold arrays of the wrong shapes.
            KeyError: if ``params`` or ``state`` lacks a layer.
        """
        L = self.L
        x = C.to_layout(self._prepare(params, X), "NHWC")
        x = L.conv2d(x, params["whiten"]["w"], params["whiten"]["b"], pad=0, layout="NHWC")
        x = L.gelu(x, approximate=self.gelu_approximate)
        bn = dict(
            train=bool(train), momentum=self.bn_momentum, eps=self.bn_eps, layout="NHWC",
            approximate=self.gelu_approximate,
        )  # fmt: skip
        new_state: dict[str, dict[str, jax.Array]] = {}

        def conv_norm(x, s, a, gelu=True):
            w = params[f"conv{s}_{a}"]["w"]
            x = L.conv2d(x, w, jnp.zeros((w.shape[0],), x.dtype), pad=1, layout="NHWC")
            if a == 1:
                x = L.max_pool2d(x, pool_height=2, pool_width=2, stride=2, layout="NHWC")
            name = f"norm{s}_{a}"
            r, beta = state[name], params[name]["beta"]
            if gelu:
                x, rm, rv = L.batchnorm_gelu(x, beta, r["running_mean"], r["running_var"], **bn)
            else:  # the same batchnorm (scale fixed at 1), no activation
                plain = {k: v for k, v in bn.items() if k != "approximate"}
                ones = jnp.ones_like(beta)
                x, rm, rv = L.spatial_batchnorm(
                    x, ones, beta, r["running_mean"], r["running_var"], **plain
                )
            new_state[name] = {"running_mean": rm, "running_var": rv}
            return x

        n, late = self.convs_per_block, self.convs_per_block > 2 and self.gelu_after_add
        for s in range(1, len(self.widths) + 1):
            x = skip = conv_norm(x, s, 1)
            for a in range(2, n + 1):
                x = conv_norm(x, s, a, gelu=not (late and a == n))
            if n > 2:
                x = L.residual_add(x, skip)
            if late:
                x = L.gelu(x, approximate=self.gelu_approximate)
        h, w = x.shape[1], x.shape[2]
        x = L.max_pool2d(x, pool_height=h, pool_width=w, stride=max(h, w), layout="NHWC")
        w_out = params["out"]["w"]
        scores = L.affine(x, w_out, jnp.zeros((w_out.shape[1],), x.dtype)) * self.head_scale
        return scores, new_state
