"""2-D convolution (cross-correlation, as in cs231n), three formulations, each with its own VJP.

Shapes: x ``(N, C, H, W)``, w ``(F, C, HH, WW)``, b ``(F,)``, zero padding ``pad`` on every
side, ``out (N, F, H', W')`` with ``H' = 1 + (H + 2·pad − HH) / stride``.

Backward, whatever the formulation:
``dx = Σ_f dout[f] ⋆ᵀ w[f]`` (the transposed convolution), ``dw[f] = Σₙ dout[n, f] ⋆ x_pad[n]``,
``db = Σ_{n,i,j} dout``.

- ``naive``: the definition, one output position at a time (a ``fori_loop``).
- ``im2col``: gather every receptive field into a column, one matrix product.
- ``xla``: ``lax.conv_general_dilated`` forward; dx and dw are themselves convolutions.
  Also on channels-last activations (``layout='NHWC'``), the models' fast path on the CPU:
  there, float32 and bfloat16 convolutions (all three directions) run on oneDNN's primitives
  when jcnn's compiled kernels are available (:mod:`jcnn.native.onednn`), else on XLA's.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from jcnn.layers._binding import cache_dataclass, with_vjp
from jcnn.layers._checks import (
    check_choice,
    check_fits_in_memory,
    check_floating,
    check_rank,
    check_shape,
    nonnegative_int,
    positive_int,
)
from jcnn.layers._windows import LAYOUTS, channel_axis, spatial_axes, tap
from jcnn.native import onednn, to_channel_major

IMPLS = ("naive", "im2col", "xla")


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


def _pad(x: jax.Array, pad: int) -> jax.Array:
    return jnp.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad))) if pad else x


def _db(dout: jax.Array, layout: str = "NCHW") -> jax.Array:
    return jnp.sum(dout, axis=(0, *spatial_axes(layout)))


# ----------------------------------------------------------------------------------- naive


def conv_forward_naive(x, w, b, *, stride: int = 1, pad: int = 0):
    """The definition: for each output position (i, j), out[:, f, i, j] = Σ window·w[f] + b[f].

    Args:
        x (jax.Array): input images ``(N, C, H, W)``, floating.
        w (jax.Array): filters ``(F, C, HH, WW)``, x's dtype.
        b (jax.Array): biases ``(F,)``, x's dtype.
        stride: step of the filter over the padded input, a positive int.
        pad: zero padding added on every side of H and W, a non-negative int.

    Returns:
        (tuple[jax.Array, ConvCache]): ``(out, cache)``, with out
            ``(N, F, H', W')`` with ``H' = 1 + (H + 2·pad − HH) / stride``, likewise W', and the
            :class:`ConvCache` for :func:`conv_backward_naive`.

    Raises:
        ValueError: as :func:`check_conv_args`: x or w not rank 4, channels of x and w
            differ, b not ``(F,)``, x not floating or w, b not in x's dtype, w with an empty
            dimension, stride/pad not a positive/non-negative int, or a filter that does not
            fit or a stride that does not tile the padded input.
    """
    h_out, w_out = check_conv_args(x, w, b, stride, pad)
    n, c, hh, ww, f = x.shape[0], x.shape[1], w.shape[2], w.shape[3], w.shape[0]
    x_pad = _pad(x, pad)

    def position(p, out):
        i, j = p // w_out, p % w_out
        window = lax.dynamic_slice(x_pad, (0, 0, i * stride, j * stride), (n, c, hh, ww))
        column = jnp.einsum("nchw,fchw->nf", window, w) + b
        return lax.dynamic_update_slice(out, column[:, :, None, None], (0, 0, i, j))

    out = lax.fori_loop(0, h_out * w_out, position, jnp.zeros((n, f, h_out, w_out), x.dtype))
    return out, ConvCache(x, w, stride, pad)


def conv_backward_naive(dout, cache: ConvCache):
    """The same loop: dx_pad[window] += Σ_f w[f]·dout, dw[f] += dout·window, db += dout.

    Backward: ``dx = Σ_f dout[f] ⋆ᵀ w[f]`` (cropped to the unpadded input),
    ``dw[f] = Σₙ dout[n, f] ⋆ x_pad[n]``, ``db = Σ_{n,i,j} dout``.

    Args:
        dout (jax.Array): upstream gradient ``(N, F, H', W')``.
        cache: the :class:`ConvCache` from the matching forward.

    Returns:
        dx (jax.Array): ``(N, C, H, W)``.
        dw (jax.Array): ``(F, C, HH, WW)``.
        db (jax.Array): ``(F,)``.
    """
    x, w, stride, pad = cache.x, cache.w, cache.stride, cache.pad
    n, c, h, wd = x.shape
    hh, ww = w.shape[2:]
    h_out, w_out = dout.shape[2:]
    x_pad = _pad(x, pad)

    def position(p, grads):
        dx_pad, dw = grads
        i, j = p // w_out, p % w_out
        corner = (0, 0, i * stride, j * stride)
        window = lax.dynamic_slice(x_pad, corner, (n, c, hh, ww))
        d = lax.dynamic_index_in_dim(lax.dynamic_index_in_dim(dout, i, 2, False), j, 2, False)
        dwindow = jnp.einsum("nf,fchw->nchw", d, w)
        dx_pad = lax.dynamic_update_slice(
            dx_pad, lax.dynamic_slice(dx_pad, corner, (n, c, hh, ww)) + dwindow, corner
        )
        return dx_pad, dw + jnp.einsum("nf,nchw->fchw", d, window)

    dx_pad, dw = lax.fori_loop(
        0, h_out * w_out, position, (jnp.zeros_like(x_pad), jnp.zeros_like(w))
    )
    dx = dx_pad[:, :, pad : pad + h, pad : pad + wd]
    return dx, dw, _db(dout)


# ---------------------------------------------------------------------------------- im2col


def im2col(x_pad, hh: int, ww: int, h_out: int, w_out: int, stride: int) -> jax.Array:
    """Receptive fields as columns ``(N, C·HH·WW, H'·W')``, rows ordered as ``w.reshape(F, -1)``.

    Args:
        x_pad (jax.Array): the zero-padded input ``(N, C, H + 2·pad, W + 2·pad)``.
        hh: filter height HH.
        ww: filter width WW.
        h_out: output height H'.
        w_out: output width W'.
        stride: the filter step.

    Returns:
        ``(N, C·HH·WW, H'·W')``: column ``p`` holds the receptive field of output position
            ``p = i·W' + j``.
    """
    n, c = x_pad.shape[:2]
    taps = [x_pad[tap(kh, kw, h_out, w_out, stride)] for kh in range(hh) for kw in range(ww)]
    cols = jnp.stack(taps, axis=2)  # (N, C, HH*WW, H', W')
    return cols.reshape(n, c * hh * ww, h_out * w_out)


def col2im(cols, x_pad_shape, hh: int, ww: int, h_out: int, w_out: int, stride: int):
    """The adjoint of :func:`im2col`: scatter-add every column back to its receptive field.

    Args:
        cols (jax.Array): columns ``(N, C·HH·WW, H'·W')``, laid out as :func:`im2col` makes them.
        x_pad_shape (tuple[int, ...]): shape of the padded input ``(N, C, H_pad, W_pad)``.
        hh: filter height HH.
        ww: filter width WW.
        h_out: output height H'.
        w_out: output width W'.
        stride: the filter step.

    Returns:
        (jax.Array): ``(N, C, H_pad, W_pad)``, each column added back over its receptive field
            (overlaps summed).
    """
    n, c = x_pad_shape[:2]
    cols = cols.reshape(n, c, hh, ww, h_out, w_out)
    dx_pad = jnp.zeros(x_pad_shape, cols.dtype)
    for kh in range(hh):
        for kw in range(ww):
            dx_pad = dx_pad.at[tap(kh, kw, h_out, w_out, stride)].add(cols[:, :, kh, kw])
    return dx_pad


def conv_forward_im2col(x, w, b, *, stride: int = 1, pad: int = 0):
    """out = w.reshape(F, C·HH·WW) @ im2col(x) + b.

    Args:
        x (jax.Array): input images ``(N, C, H, W)``, floating.
        w (jax.Array): filters ``(F, C, HH, WW)``, x's dtype.
        b (jax.Array): biases ``(F,)``, x's dtype.
        stride: step of the filter over the padded input, a positive int.
        pad: zero padding added on every side of H and W, a non-negative int.

    Returns:
        (tuple[jax.Array, ConvCache]): ``(out, cache)``, with out
            ``(N, F, H', W')`` with ``H' = 1 + (H + 2·pad − HH) / stride``, likewise W', and the
            :class:`ConvCache` for :func:`conv_backward_im2col`.

    Raises:
        ValueError: as :func:`check_conv_args`: x or w not rank 4, channels of x and w
            differ, b not ``(F,)``, x not floating or w, b not in x's dtype, w with an empty
            dimension, stride/pad not a positive/non-negative int, or a filter that does not
            fit or a stride that does not tile the padded input.
    """
    h_out, w_out = check_conv_args(x, w, b, stride, pad)
    f, _, hh, ww = w.shape
    cols = im2col(_pad(x, pad), hh, ww, h_out, w_out, stride)
    out = jnp.einsum("fk,nkp->nfp", w.reshape(f, -1), cols) + b[None, :, None]
    return out.reshape(x.shape[0], f, h_out, w_out), ConvCache(x, w, stride, pad)


def conv_backward_im2col(dout, cache: ConvCache):
    """dw = Σₙ dout·colsᵀ; dx = col2im(w_flatᵀ·dout).

    With ``cols = im2col(x_pad)`` and ``dout`` flattened to ``(N, F, H'·W')``: ``dw`` is the
    matrix product summed over the batch, ``dx`` the columns ``w_flatᵀ·dout`` scattered back
    by :func:`col2im` and cropped to the unpadded input, ``db = Σ_{n,i,j} dout``.

    Args:
        dout (jax.Array): upstream gradient ``(N, F, H', W')``.
        cache: the :class:`ConvCache` from the matching forward.

    Returns:
        dx (jax.Array): ``(N, C, H, W)``.
        dw (jax.Array): ``(F, C, HH, WW)``.
        db (jax.Array): ``(F,)``.
    """
    x, w, stride, pad = cache.x, cache.w, cache.stride, cache.pad
    n, c, h, wd = x.shape
    f, _, hh, ww = w.shape
    h_out, w_out = dout.shape[2:]
    x_pad = _pad(x, pad)
    cols = im2col(x_pad, hh, ww, h_out, w_out, stride)
    dout_flat = dout.reshape(n, f, h_out * w_out)
    dw = jnp.einsum("nfp,nkp->fk", dout_flat, cols).reshape(w.shape)
    dcols = jnp.einsum("fk,nfp->nkp", w.reshape(f, -1), dout_flat)
    dx_pad = col2im(dcols, x_pad.shape, hh, ww, h_out, w_out, stride)
    return dx_pad[:, :, pad : pad + h, pad : pad + wd], dw, _db(dout)


# ------------------------------------------------------------------------------------- xla


def _crop(x, layout: str, pad: int, h: int, w: int):
    if layout == "NCHW":
        return x[:, :, pad : pad + h, pad : pad + w]
    return x[:, pad : pad + h, pad : pad + w, :]


def conv_forward_xla(x, w, b, *, stride: int = 1, pad: int = 0, layout: str = "NCHW"):
    """``lax.conv_general_dilated`` (cross-correlation) plus bias, on NCHW or NHWC input.

    Args:
        x (jax.Array): input images ``(N, C, H, W)`` (``layout='NCHW'``) or ``(N, H, W, C)``,
            floating.
        w (jax.Array): filters ``(F, C, HH, WW)`` in either layout, x's dtype.
        b (jax.Array): biases ``(F,)``, x's dtype.
        stride: step of the filter over the padded input, a positive int.
        pad: zero padding added on every side of H and W, a non-negative int.
        layout: ``'NCHW'`` or ``'NHWC'``, for x and out.

    Returns:
        (tuple[jax.Array, ConvCache]): ``(out, cache)``, with out
            ``(N, F, H', W')`` with ``H' = 1 + (H + 2·pad − HH) / stride``, likewise W'
            (``(N, H', W', F)`` for NHWC), and the :class:`ConvCache` for :func:`conv_backward_xla`.

    Raises:
        ValueError: as :func:`check_conv_args`: x or w not rank 4, channels of x and w
            differ, b not ``(F,)``, x not floating or w, b not in x's dtype, w with an empty
            dimension, stride/pad not a positive/non-negative int, or a filter that does not
            fit or a stride that does not tile the padded input.
        ValueError: naming ``layout`` if not ``'NCHW'``/``'NHWC'``.
    """
    check_conv_args(x, w, b, stride, pad, layout)
    out = (
        _forward_xla(x, w, stride=stride, pad=pad, layout=layout)
        if layout == "NCHW"
        else _ONEDNN.conv_forward(x, w, stride=stride, pad=pad)
    )
    bias = b[None, :, None, None] if layout == "NCHW" else b
    return out + bias, ConvCache(x, w, stride, pad, layout)


def conv_dx_xla(dout, w, x_shape, stride: int, pad: int, layout: str = "NCHW"):
    """dx as a convolution: dout dilated by ``stride`` against w flipped, with its in/out
    channels swapped, padded so that the output is exactly x's size (when ``pad`` exceeds
    ``filter − 1``, a full convolution cropped by ``pad`` instead).

    Args:
        dout (jax.Array): upstream gradient ``(N, F, H', W')`` (``(N, H', W', F)`` for NHWC).
        w (jax.Array): filters ``(F, C, HH, WW)``.
        x_shape (tuple[int, ...]): the input's shape.
        stride: the forward's filter step.
        pad: the forward's zero padding.
        layout: ``'NCHW'`` or ``'NHWC'``, for dout and dx.

    Returns:
        (jax.Array): dx, of shape ``x_shape``.
    """
    if layout == "NHWC":
        return _ONEDNN.conv_backward_data(dout, w, x_shape, stride=stride, pad=pad)
    return _dx_xla(dout, w, stride=stride, pad=pad, x_shape=x_shape, layout=layout)


def _forward_xla(x, w, *, stride: int, pad: int, layout: str = "NHWC"):
    return lax.conv_general_dilated(
        x, w, (stride, stride), ((pad, pad), (pad, pad)), dimension_numbers=(layout, "OIHW", layout)
    )


def _dx_xla(dout, w, *, stride: int, pad: int, x_shape, layout: str = "NHWC"):
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


def conv_dw_xla(dout, x, w_shape, stride: int, pad: int, layout: str = "NCHW"):
    """dw as a convolution over the batch: x (batch ↔ channel roles swapped) against dout,
    dilated by ``stride``: dw[f, c] = Σₙ x_pad[n, c] ⋆ dout[n, f]. Channels-last x is first
    made channel-major by :func:`jcnn.native.to_channel_major` (what XLA would do, faster).

    Args:
        dout (jax.Array): upstream gradient ``(N, F, H', W')`` (``(N, H', W', F)`` for NHWC).
        x (jax.Array): the forward's input ``(N, C, H, W)`` (``(N, H, W, C)`` for NHWC).
        w_shape (tuple[int, ...]): the filters' shape ``(F, C, HH, WW)``.
        stride: the forward's filter step.
        pad: the forward's zero padding.
        layout: ``'NCHW'`` or ``'NHWC'``, for dout and x.

    Returns:
        (jax.Array): dw ``(F, C, HH, WW)``.
    """
    if layout == "NHWC":
        return _ONEDNN.conv_backward_weights(dout, x, w_shape, stride=stride, pad=pad)
    return _dw_xla(dout, x, stride=stride, pad=pad, w_shape=w_shape, layout=layout)


def _dw_xla(dout, x, *, stride: int, pad: int, w_shape, layout: str = "NHWC"):
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


# Channels-last convolutions on oneDNN where it runs (XLA's above elsewhere), with derivative
# rules: grad-of-grad and Hessian-vector products stay on oneDNN.
_ONEDNN = onednn.Convolutions(_forward_xla, _dx_xla, _dw_xla)


def conv_backward_xla(dout, cache: ConvCache):
    """dx and dw as the two transposed convolutions, db as a sum.

    ``dx`` by :func:`conv_dx_xla`, ``dw`` by :func:`conv_dw_xla`, ``db = Σ_{n,i,j} dout``.

    Args:
        dout (jax.Array): upstream gradient ``(N, F, H', W')`` (``(N, H', W', F)`` for NHWC).
        cache: the :class:`ConvCache` from :func:`conv_forward_xla`.

    Returns:
        dx (jax.Array): shaped like x, ``(N, C, H, W)`` or ``(N, H, W, C)``.
        dw (jax.Array): ``(F, C, HH, WW)``.
        db (jax.Array): ``(F,)``.
    """
    x, w, stride, pad, layout = cache.x, cache.w, cache.stride, cache.pad, cache.layout
    dx = conv_dx_xla(dout, w, x.shape, stride, pad, layout)
    dw = conv_dw_xla(dout, x, w.shape, stride, pad, layout)
    return dx, dw, _db(dout, layout)


# ------------------------------------------------------------------------------ public API

PAIRS = {
    "naive": (conv_forward_naive, conv_backward_naive),
    "im2col": (conv_forward_im2col, conv_backward_im2col),
    "xla": (conv_forward_xla, conv_backward_xla),
}
_BOUND = {name: with_vjp(*pair) for name, pair in PAIRS.items()}


def _layout_kwargs(impl: str, layout: str) -> dict:
    check_choice("layout", layout, LAYOUTS)
    if layout == "NCHW":
        return {}
    if impl != "xla":
        raise ValueError(f"layout={layout!r} needs impl='xla'; impl={impl!r} is NCHW only")
    return {"layout": layout}


def conv_forward(
    x, w, b, *, stride: int = 1, pad: int = 0, impl: str = "xla", layout: str = "NCHW"
):
    """cs231n-style pair half: ``(out, cache)`` with the chosen formulation.

    Args:
        x (jax.Array): input images ``(N, C, H, W)`` (``layout='NCHW'``) or ``(N, H, W, C)``,
            floating.
        w (jax.Array): filters ``(F, C, HH, WW)`` in either layout, x's dtype.
        b (jax.Array): biases ``(F,)``, x's dtype.
        stride: step of the filter over the padded input, a positive int.
        pad: zero padding added on every side of H and W, a non-negative int.
        impl: ``'naive'``, ``'im2col'`` or ``'xla'``.
        layout: ``'NCHW'`` or ``'NHWC'`` (``impl='xla'`` only), for x and out.

    Returns:
        (tuple[jax.Array, ConvCache]): ``(out, cache)``, with out
            ``(N, F, H', W')`` with ``H' = 1 + (H + 2·pad − HH) / stride``, likewise W'
            (``(N, H', W', F)`` for NHWC), and the cache for :func:`conv_backward`
            with the same ``impl``.

    Raises:
        ValueError: naming ``impl`` if not one of ``'naive'``, ``'im2col'``, ``'xla'``;
            naming ``layout`` if not ``'NCHW'``/``'NHWC'``, or ``'NHWC'`` with an impl other
            than ``'xla'``.
        ValueError: as :func:`check_conv_args`: x or w not rank 4, channels of x and w
            differ, b not ``(F,)``, x not floating or w, b not in x's dtype, w with an empty
            dimension, stride/pad not a positive/non-negative int, or a filter that does not
            fit or a stride that does not tile the padded input.
    """
    check_choice("impl", impl, IMPLS)
    return PAIRS[impl][0](x, w, b, stride=stride, pad=pad, **_layout_kwargs(impl, layout))


def conv_backward(dout, cache: ConvCache, *, impl: str = "xla"):
    """cs231n-style pair half: ``(dx, dw, db)`` with the chosen formulation.

    Backward: ``dx = Σ_f dout[f] ⋆ᵀ w[f]``, ``dw[f] = Σₙ dout[n, f] ⋆ x_pad[n]``,
    ``db = Σ_{n,i,j} dout``.

    Args:
        dout (jax.Array): upstream gradient, shaped like out.
        cache: the :class:`ConvCache` from :func:`conv_forward` with the same ``impl``.
        impl: ``'naive'``, ``'im2col'`` or ``'xla'``.

    Returns:
        dx (jax.Array): shaped like x.
        dw (jax.Array): ``(F, C, HH, WW)``.
        db (jax.Array): ``(F,)``.

    Raises:
        ValueError: naming ``impl`` if not one of ``'naive'``, ``'im2col'``, ``'xla'``.
    """
    check_choice("impl", impl, IMPLS)
    return PAIRS[impl][1](dout, cache)


def conv2d(
    x: jax.Array,
    w: jax.Array,
    b: jax.Array,
    *,
    stride: int = 1,
    pad: int = 0,
    impl: str = "xla",
    layout: str = "NCHW",
) -> jax.Array:
    """Convolution with a hand-written VJP. x ``(N, C, H, W)``, w ``(F, C, HH, WW)``, b ``(F,)``.

    ``impl``: ``'naive'`` (the definition), ``'im2col'`` (patches + one matmul) or ``'xla'``
    (``lax.conv_general_dilated``; backward as the two transposed convolutions).
    ``layout='NHWC'`` (``impl='xla'`` only) takes and returns channels-last activations, for
    models that keep NHWC inside (faster on the CPU); w stays ``(F, C, HH, WW)``.

    Args:
        x: input images ``(N, C, H, W)`` (``layout='NCHW'``) or ``(N, H, W, C)``, floating.
        w: filters ``(F, C, HH, WW)`` in either layout, x's dtype.
        b: biases ``(F,)``, x's dtype.
        stride: step of the filter over the padded input, a positive int.
        pad: zero padding added on every side of H and W, a non-negative int.
        impl: the formulation, ``'naive'``, ``'im2col'`` or ``'xla'``.
        layout: ``'NCHW'`` or ``'NHWC'`` (``impl='xla'`` only), for x and out.

    Returns:
        ``(N, F, H', W')`` with ``H' = 1 + (H + 2·pad − HH) / stride``, likewise W'
            (``(N, H', W', F)`` for NHWC); the VJP is the impl's hand-written backward.

    Raises:
        ValueError: naming ``impl`` if not one of ``'naive'``, ``'im2col'``, ``'xla'``;
            naming ``layout`` if not ``'NCHW'``/``'NHWC'``, or ``'NHWC'`` with an impl other
            than ``'xla'``.
        ValueError: as :func:`check_conv_args`: x or w not rank 4, channels of x and w
            differ, b not ``(F,)``, x not floating or w, b not in x's dtype, w with an empty
            dimension, stride/pad not a positive/non-negative int, or a filter that does not
            fit or a stride that does not tile the padded input.
    """
    check_choice("impl", impl, IMPLS)
    stride = positive_int("stride", stride)
    pad = nonnegative_int("pad", pad)
    return _BOUND[impl](x, w, b, stride=stride, pad=pad, **_layout_kwargs(impl, layout))
