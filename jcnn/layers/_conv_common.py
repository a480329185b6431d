"""What every convolution formulation shares: the cache, the argument checks, and XLA's
convolutions in both directions (:func:`lax_forward`, :func:`lax_dx`, :func:`lax_dw`), which
are the ``xla`` formulation and the twins of the oneDNN kernels.

Shapes as in :mod:`jcnn.layers.conv`; ``layout`` is ``'NCHW'`` or ``'NHWC'`` for x and the
activations, the filters are ``(F, C, HH, WW)`` in both.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from jcnn.layers._binding import cache_dataclass
from jcnn.layers._checks import (
    check_cache,
    check_choice,
    check_cotangent,
    check_fits_in_memory,
    check_floating,
    check_rank,
    check_shape,
    nonnegative_int,
    positive_int,
)
from jcnn.layers._windows import LAYOUTS, channel_axis, spatial_axes
from jcnn.native import to_channel_major


@cache_dataclass(static=("stride", "pad", "layout"))
class ConvCache:
    """What the conv backward passes need from the forward pass.

    Attributes:
        x: the (unpadded) input, ``(N, C, H, W)`` or ``(N, H, W, C)``.
        w: the filters ``(F, C, HH, WW)``.
        stride: the filter step (static).
        pad: the zero padding (static).
        layout: ``'NCHW'`` or ``'NHWC'`` (static).
    """

    x: jax.Array
    w: jax.Array
    stride: int
    pad: int
    layout: str = "NCHW"


def conv_output_size(size: int, filter_size: int, stride: int, pad: int, name: str = "H") -> int:
    """``1 + (size + 2·pad − filter_size) / stride``, or ValueError if it does not tile.

    Args:
        size: the input's extent along one spatial axis.
        filter_size: the filter's extent along that axis.
        stride: the filter step.
        pad: zero padding on each side.
        name: the axis's name for the error message (``'H'`` or ``'W'``).

    Returns:
        The output's extent along that axis.

    Raises:
        ValueError: if the filter is larger than the padded input, or if
            ``(size + 2·pad − filter_size) % stride != 0``.
    """
    span = size + 2 * pad - filter_size
    if span < 0:
        raise ValueError(
            f"filter of size {filter_size} does not fit input {name}={size} with pad={pad}"
        )
    if span % stride:
        raise ValueError(
            f"stride={stride}, pad={pad} and filter size {filter_size} do not tile input "
            f"{name}={size}: ({name} + 2*pad - filter) % stride = {span % stride}, must be 0"
        )
    return 1 + span // stride


def check_conv_args(x, w, b, stride, pad, layout: str = "NCHW") -> tuple[int, int]:
    """Validate a conv2d call; returns the output size ``(H', W')``.

    Args:
        x (jax.Array): input ``(N, C, H, W)`` (``layout='NCHW'``) or ``(N, H, W, C)``.
        w (jax.Array): filters ``(F, C, HH, WW)``.
        b (jax.Array): biases ``(F,)``.
        stride (int): the filter step, a positive int.
        pad (int): zero padding on every side, a non-negative int.
        layout: ``'NCHW'`` or ``'NHWC'``.

    Returns:
        ``(H', W')`` with ``H' = 1 + (H + 2·pad − HH) / stride``, likewise W'.

    Raises:
        ValueError: naming ``layout`` if not ``'NCHW'``/``'NHWC'``; naming ``x`` or ``w`` if
            not rank 4; naming ``stride`` (``pad``) if not a positive (non-negative) int, bools
            refused; naming ``x`` if its channels differ from w's C; naming ``b`` if not
            ``(F,)``; naming ``x`` if not floating; if w or b is not in x's dtype; naming ``w``
            if a dimension is empty; if the filter does not fit or the stride does not tile
            the padded input (:func:`conv_output_size`); naming ``pad`` if the padded input
            and the output need more memory than the machine has.
    """
    check_choice("layout", layout, LAYOUTS)
    check_rank("x", x, 4, f"({', '.join(layout)})")
    check_rank("w", w, 4, "(F, C, HH, WW)")
    positive_int("stride", stride)
    nonnegative_int("pad", pad)
    c_axis, (h_axis, w_axis) = channel_axis(layout), spatial_axes(layout)
    if x.shape[c_axis] != w.shape[1]:
        raise ValueError(
            f"x has {x.shape[c_axis]} channels ({layout}) but w expects {w.shape[1]} "
            f"(x {tuple(x.shape)}, w {tuple(w.shape)})"
        )
    check_shape("b", b, (w.shape[0],), "one bias per filter of w")
    check_floating("x", x)
    if w.dtype != x.dtype or b.dtype != x.dtype:
        raise ValueError(
            f"x, w and b must share one floating dtype, got x {x.dtype}, w {w.dtype}, b {b.dtype}"
        )
    if min(w.shape) < 1:
        raise ValueError(f"w must have no empty dimension, got shape {tuple(w.shape)}")
    h_out = conv_output_size(x.shape[h_axis], w.shape[2], stride, pad, "H")
    w_out = conv_output_size(x.shape[w_axis], w.shape[3], stride, pad, "W")
    n, c, f = x.shape[0], x.shape[c_axis], w.shape[0]
    h, wd = x.shape[h_axis] + 2 * pad, x.shape[w_axis] + 2 * pad
    check_fits_in_memory(
        f"pad={pad}" if pad else f"x {tuple(x.shape)} with w {tuple(w.shape)}",
        {"the padded input": (n, c, h, wd), "the output": (n, f, h_out, w_out)},
        x.dtype,
    )
    return h_out, w_out


def check_conv_cotangent(dout, cache, layouts: tuple[str, ...] = LAYOUTS, who: str = "") -> None:
    """For a convolution's backward pass (``who``, taking the ``layouts`` it computes): ``cache``
    is the :class:`ConvCache` of a forward pass in one of those layouts, and ``dout`` is shaped
    like that forward's output, in x's dtype.

    Raises:
        TypeError: naming ``cache`` if it is not a :class:`ConvCache`.
        ValueError: naming ``cache`` if its layout is not one ``who`` takes; naming ``dout`` if
            its shape or dtype is not the output's.
    """
    check_cache(cache, ConvCache)
    if cache.layout not in layouts:
        raise ValueError(
            f"cache is of an {cache.layout} forward pass, but {who} takes {' or '.join(layouts)} "
            "(pass the cache of its own forward pass)"
        )
    x, w, layout = cache.x, cache.w, cache.layout
    (h_axis, w_axis), sizes = spatial_axes(layout), {}
    for axis, name, k in ((h_axis, "H", w.shape[2]), (w_axis, "W", w.shape[3])):
        sizes[axis] = conv_output_size(x.shape[axis], k, cache.stride, cache.pad, name)
    sizes[0], sizes[channel_axis(layout)] = x.shape[0], w.shape[0]
    check_cotangent("dout", dout, tuple(sizes[a] for a in range(4)), x.dtype, layout)


def pad_nchw(x: jax.Array, pad: int) -> jax.Array:
    return jnp.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad))) if pad else x


def bias_gradient(dout: jax.Array, layout: str = "NCHW") -> jax.Array:
    return jnp.sum(dout, axis=(0, *spatial_axes(layout)))


def _crop(x, layout: str, pad: int, h: int, w: int):
    if layout == "NCHW":
        return x[:, :, pad : pad + h, pad : pad + w]
    return x[:, pad : pad + h, pad : pad + w, :]


def lax_forward(x, w, *, stride: int, pad: int, layout: str = "NHWC"):
    """``lax.conv_general_dilated`` (cross-correlation), no bias: ``(N, F, H', W')`` or
    ``(N, H', W', F)``."""
    return lax.conv_general_dilated(
        x, w, (stride, stride), ((pad, pad), (pad, pad)), dimension_numbers=(layout, "OIHW", layout)
    )


def lax_dx(dout, w, *, stride: int, pad: int, x_shape, layout: str = "NHWC"):
    """dx as a convolution: dout dilated by ``stride`` against w flipped, with its in/out
    channels swapped, padded so that the output is exactly ``x_shape`` (when ``pad`` exceeds
    ``filter − 1``, a full convolution cropped by ``pad`` instead)."""
    hh, ww = w.shape[2:]
    h_axis, w_axis = spatial_axes(layout)
    h, wd = x_shape[h_axis], x_shape[w_axis]
    h_out, w_out = dout.shape[h_axis], dout.shape[w_axis]
    exact = [
        (k - 1 - pad, size + pad - 1 - stride * (n_out - 1))
        for k, size, n_out in ((hh, h, h_out), (ww, wd, w_out))
    ]
    fits = all(lo >= 0 and hi >= 0 for lo, hi in exact)
    if stride > 1:
        # Dilate dout explicitly (zeros between its pixels) instead of through lhs_dilation:
        # jaxlib 0.10.2's CPU algebraic simplifier aborts the process on some lhs-dilated
        # convolutions (e.g. stride 2, pad 1, a 2x3 filter), autodiff of lax.conv included.
        config = [(0, 0, 0)] * 4
        for axis in (h_axis, w_axis):
            config[axis] = (0, 0, stride - 1)
        dout = lax.pad(dout, lax.full((), 0, dout.dtype), config)
    dx = lax.conv_general_dilated(
        dout,
        jnp.flip(w, axis=(2, 3)),
        (1, 1),
        exact if fits else ((hh - 1, hh - 1), (ww - 1, ww - 1)),
        dimension_numbers=(layout, "IOHW", layout),
    )
    return dx if fits else _crop(dx, layout, pad, h, wd)


def lax_dw(dout, x, *, stride: int, pad: int, w_shape, layout: str = "NHWC"):
    """dw as a convolution over the batch: x (batch ↔ channel roles swapped) against dout,
    dilated by ``stride``: ``dw[f, c] = Σₙ x_pad[n, c] ⋆ dout[n, f]``; channels-last x is
    first made channel-major by :func:`jcnn.native.to_channel_major` (what XLA would do,
    faster)."""
    hh, ww = w_shape[2:]
    # x plays the batch ↔ channel-swapped role; dout's N is the kernel's in, its C the out.
    rhs = layout.replace("N", "I").replace("C", "O")
    if layout == "NHWC":
        # XLA's CPU convolution wants x channel-major here; make it so ourselves, faster.
        x, lhs = to_channel_major(x), "NHWC"
    else:
        lhs = layout.replace("N", "?").replace("C", "N").replace("?", "C")
    dw = lax.conv_general_dilated(
        x,
        dout,
        (1, 1),
        ((pad, pad), (pad, pad)),
        rhs_dilation=(stride, stride),
        dimension_numbers=(lhs, rhs, "CNHW"),  # output laid out (F, C, HH, WW)
    )
    return dw[:, :, :hh, :ww]
