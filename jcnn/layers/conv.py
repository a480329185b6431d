"""2-D convolution (cross-correlation, as in cs231n), four formulations, each with its own VJP.

Shapes: x ``(N, C, H, W)``, w ``(F, C, HH, WW)``, b ``(F,)``, zero padding ``pad`` on every
side, ``out (N, F, H', W')`` with ``H' = 1 + (H + 2·pad − HH) / stride``.

Backward, whatever the formulation:
``dx = Σ_f dout[f] ⋆ᵀ w[f]`` (the transposed convolution), ``dw[f] = Σₙ dout[n, f] ⋆ x_pad[n]``,
``db = Σ_{n,i,j} dout``.

``impl`` names what runs:

- ``naive``: the definition, one output position at a time (a ``fori_loop``).
- ``im2col``: gather every receptive field into a column, one matrix product.
- ``xla``: XLA's ``lax.conv_general_dilated`` forward; dx and dw are themselves convolutions
  (:mod:`jcnn.layers.conv_xla`); NCHW or channels-last (``layout='NHWC'``) activations.
- ``onednn``: the same three convolutions on oneDNN's primitives, channels-last float32 and
  bfloat16 on the CPU (:mod:`jcnn.layers.conv_onednn`); an error where they cannot run.
- ``auto`` (the default): ``onednn`` for channels-last float32/bfloat16 input (XLA's same
  convolutions wherever oneDNN is not available), else ``xla`` (:func:`resolve_impl`).

Every formulation computes the same function, so a model's parameters and checkpoints do not
depend on which one trained them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from jcnn.layers import conv_onednn
from jcnn.layers._binding import with_vjp
from jcnn.layers._checks import check_choice, check_fits_in_memory, nonnegative_int, positive_int
from jcnn.layers._conv_common import (
    ConvCache,
    bias_gradient,
    check_conv_args,
    check_conv_cotangent,
    conv_output_size,
    pad_nchw,
)
from jcnn.layers._windows import LAYOUTS, tap
from jcnn.layers.conv_onednn import conv_backward_onednn, conv_forward_onednn
from jcnn.layers.conv_xla import (
    conv_backward_xla,
    conv_dw_xla,
    conv_dx_xla,
    conv_forward_xla,
)

__all__ = [
    "IMPLS",
    "ConvCache",
    "check_conv_args",
    "conv2d",
    "conv_backward",
    "conv_backward_im2col",
    "conv_backward_naive",
    "conv_backward_onednn",
    "conv_backward_xla",
    "conv_dw_xla",
    "conv_dx_xla",
    "conv_forward",
    "conv_forward_im2col",
    "conv_forward_naive",
    "conv_forward_onednn",
    "conv_forward_xla",
    "conv_output_size",
    "resolve_impl",
]


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
    x_pad = pad_nchw(x, pad)

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
    check_conv_cotangent(dout, cache, ("NCHW",), "conv_backward_naive")
    x, w, stride, pad = cache.x, cache.w, cache.stride, cache.pad
    n, c, h, wd = x.shape
    hh, ww = w.shape[2:]
    h_out, w_out = dout.shape[2:]
    x_pad = pad_nchw(x, pad)

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
    return dx, dw, bias_gradient(dout)


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
            fit or a stride that does not tile the padded input; or the padded input, the
            columns and the output need more memory than is available.
    """
    h_out, w_out = check_conv_args(x, w, b, stride, pad)
    f, c, hh, ww = w.shape
    check_fits_in_memory(  # the columns are HH·WW times the input
        f"pad={pad}" if pad else f"x {tuple(x.shape)} with w {tuple(w.shape)}",
        {"the padded input": (x.shape[0], c, x.shape[2] + 2 * pad, x.shape[3] + 2 * pad),
         "im2col's columns": (x.shape[0], c * hh * ww, h_out * w_out),
         "the output": (x.shape[0], f, h_out, w_out)},
        x.dtype,
    )  # fmt: skip
    cols = im2col(pad_nchw(x, pad), hh, ww, h_out, w_out, stride)
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
    check_conv_cotangent(dout, cache, ("NCHW",), "conv_backward_im2col")
    x, w, stride, pad = cache.x, cache.w, cache.stride, cache.pad
    n, c, h, wd = x.shape
    f, _, hh, ww = w.shape
    h_out, w_out = dout.shape[2:]
    x_pad = pad_nchw(x, pad)
    cols = im2col(x_pad, hh, ww, h_out, w_out, stride)
    dout_flat = dout.reshape(n, f, h_out * w_out)
    dw = jnp.einsum("nfp,nkp->fk", dout_flat, cols).reshape(w.shape)
    dcols = jnp.einsum("fk,nfp->nkp", w.reshape(f, -1), dout_flat)
    dx_pad = col2im(dcols, x_pad.shape, hh, ww, h_out, w_out, stride)
    return dx_pad[:, :, pad : pad + h, pad : pad + wd], dw, bias_gradient(dout)


# ------------------------------------------------------------------------------ public API

# The formulations, each a (forward, backward) pair; "auto" picks one of them per call.
PAIRS = {
    "onednn": (conv_onednn.forward, conv_backward_onednn),  # checked in resolve_impl
    "xla": (conv_forward_xla, conv_backward_xla),
    "im2col": (conv_forward_im2col, conv_backward_im2col),
    "naive": (conv_forward_naive, conv_backward_naive),
}
IMPLS = ("auto", *PAIRS)
_BOUND = {name: with_vjp(*pair) for name, pair in PAIRS.items()}


def resolve_impl(impl: str, x, layout: str = "NCHW") -> str:
    """The formulation that ``impl`` names for input ``x`` in ``layout``.

    ``'auto'`` is ``'onednn'`` for channels-last float32 and bfloat16 input (whose kernels
    are XLA's same convolutions wherever oneDNN cannot run: no oneDNN, ``JCNN_ONEDNN=0``,
    another backend, a program lowered for :mod:`jax.export`), else ``'xla'``.

    Args:
        impl: ``'auto'``, ``'onednn'``, ``'xla'``, ``'im2col'`` or ``'naive'``.
        x (jax.Array): the input (its dtype decides ``'auto'``).
        layout: ``'NCHW'`` or ``'NHWC'``.

    Returns:
        One of ``'onednn'``, ``'xla'``, ``'im2col'``, ``'naive'``.

    Raises:
        ValueError: naming ``impl`` if it is not one of :data:`IMPLS`; naming ``layout`` if
            not ``'NCHW'``/``'NHWC'``, or ``'NHWC'`` with ``'im2col'`` or ``'naive'``.
    """
    check_choice("impl", impl, IMPLS)
    check_choice("layout", layout, LAYOUTS)
    if impl == "auto":
        return "onednn" if conv_onednn.runs(x, layout) else "xla"
    if impl == "onednn":
        conv_onednn.check_runs(x, layout)
    if layout == "NHWC" and impl in ("im2col", "naive"):
        raise ValueError(
            f"layout={layout!r} needs impl='auto', 'xla' or 'onednn'; impl={impl!r} is NCHW only"
        )
    return impl


def _layout_kwargs(impl: str, layout: str) -> dict:
    return {"layout": layout} if impl == "xla" else {}


def conv_forward(
    x, w, b, *, stride: int = 1, pad: int = 0, impl: str = "auto", layout: str = "NCHW"
):
    """cs231n-style pair half: ``(out, cache)`` with the chosen formulation.

    Args:
        x (jax.Array): input images ``(N, C, H, W)`` (``layout='NCHW'``) or ``(N, H, W, C)``,
            floating.
        w (jax.Array): filters ``(F, C, HH, WW)`` in either layout, x's dtype.
        b (jax.Array): biases ``(F,)``, x's dtype.
        stride: step of the filter over the padded input, a positive int.
        pad: zero padding added on every side of H and W, a non-negative int.
        impl: ``'auto'``, ``'onednn'``, ``'xla'``, ``'im2col'`` or ``'naive'``
            (:func:`resolve_impl`).
        layout: ``'NCHW'`` or ``'NHWC'`` (not with ``'im2col'``/``'naive'``), for x and out.

    Returns:
        (tuple[jax.Array, ConvCache]): ``(out, cache)``, with out
            ``(N, F, H', W')`` with ``H' = 1 + (H + 2·pad − HH) / stride``, likewise W'
            (``(N, H', W', F)`` for NHWC), and the cache for :func:`conv_backward`
            with the same ``impl``.

    Raises:
        ValueError: naming ``impl`` if not one of :data:`IMPLS`, or ``'onednn'`` where
            oneDNN cannot run x (naming why); naming ``layout`` if not ``'NCHW'``/``'NHWC'``,
            or ``'NHWC'`` with ``'im2col'``/``'naive'``.
        ValueError: as :func:`check_conv_args`: x or w not rank 4, channels of x and w
            differ, b not ``(F,)``, x not floating or w, b not in x's dtype, w with an empty
            dimension, stride/pad not a positive/non-negative int, or a filter that does not
            fit or a stride that does not tile the padded input.
    """
    impl = resolve_impl(impl, x, layout)
    return PAIRS[impl][0](x, w, b, stride=stride, pad=pad, **_layout_kwargs(impl, layout))


def conv_backward(dout, cache: ConvCache, *, impl: str = "auto"):
    """cs231n-style pair half: ``(dx, dw, db)`` with the chosen formulation.

    Backward: ``dx = Σ_f dout[f] ⋆ᵀ w[f]``, ``dw[f] = Σₙ dout[n, f] ⋆ x_pad[n]``,
    ``db = Σ_{n,i,j} dout``.

    Args:
        dout (jax.Array): upstream gradient, shaped like out.
        cache: the :class:`ConvCache` from :func:`conv_forward` with the same ``impl``.
        impl: as given to :func:`conv_forward`.

    Returns:
        dx (jax.Array): shaped like x.
        dw (jax.Array): ``(F, C, HH, WW)``.
        db (jax.Array): ``(F,)``.

    Raises:
        ValueError: naming ``impl`` if not one of :data:`IMPLS`; naming ``dout`` if it is
            not shaped like the forward's output, in its dtype.
        TypeError: naming ``cache`` if it is not a :class:`ConvCache`.
    """
    check_conv_cotangent(dout, cache)
    impl = resolve_impl(impl, cache.x, cache.layout)
    return PAIRS[impl][1](dout, cache)


def conv2d(
    x: jax.Array,
    w: jax.Array,
    b: jax.Array,
    *,
    stride: int = 1,
    pad: int = 0,
    impl: str = "auto",
    layout: str = "NCHW",
) -> jax.Array:
    """Convolution with a hand-written VJP. x ``(N, C, H, W)``, w ``(F, C, HH, WW)``, b ``(F,)``.

    ``impl`` names what runs: ``'naive'`` (the definition), ``'im2col'`` (patches + one
    matmul), ``'xla'`` (``lax.conv_general_dilated``; backward as the two transposed
    convolutions), ``'onednn'`` (the same on oneDNN's primitives) or ``'auto'`` (oneDNN for
    channels-last float32/bfloat16 where it is available, else XLA). ``layout='NHWC'`` takes
    and returns channels-last activations, for models that keep NHWC inside (faster on the
    CPU); w stays ``(F, C, HH, WW)``.

    Args:
        x: input images ``(N, C, H, W)`` (``layout='NCHW'``) or ``(N, H, W, C)``, floating.
        w: filters ``(F, C, HH, WW)`` in either layout, x's dtype.
        b: biases ``(F,)``, x's dtype.
        stride: step of the filter over the padded input, a positive int.
        pad: zero padding added on every side of H and W, a non-negative int.
        impl: the formulation, ``'auto'`` (default), ``'onednn'``, ``'xla'``, ``'im2col'``
            or ``'naive'`` (:func:`resolve_impl`).
        layout: ``'NCHW'`` or ``'NHWC'`` (not with ``'im2col'``/``'naive'``), for x and out.

    Returns:
        ``(N, F, H', W')`` with ``H' = 1 + (H + 2·pad − HH) / stride``, likewise W'
            (``(N, H', W', F)`` for NHWC); the VJP is the impl's hand-written backward.

    Raises:
        ValueError: naming ``impl`` if not one of :data:`IMPLS`, or ``'onednn'`` where
            oneDNN cannot run x (naming why); naming ``layout`` if not ``'NCHW'``/``'NHWC'``,
            or ``'NHWC'`` with ``'im2col'``/``'naive'``.
        ValueError: as :func:`check_conv_args`: x or w not rank 4, channels of x and w
            differ, b not ``(F,)``, x not floating or w, b not in x's dtype, w with an empty
            dimension, stride/pad not a positive/non-negative int, or a filter that does not
            fit or a stride that does not tile the padded input.
    """
    impl = resolve_impl(impl, x, layout)
    stride = positive_int("stride", stride)
    pad = nonnegative_int("pad", pad)
    return _BOUND[impl](x, w, b, stride=stride, pad=pad, **_layout_kwargs(impl, layout))
