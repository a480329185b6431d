"""The ``xla`` convolution: XLA's own ``lax.conv_general_dilated`` in all three directions,
on NCHW or channels-last (NHWC) activations, on any backend.

Forward ``out = x ⋆ w + b``; backward ``dx = Σ_f dout[f] ⋆ᵀ w[f]`` (dout dilated by the
stride, against the flipped filters: :func:`conv_dx_xla`), ``dw[f] = Σₙ dout[n, f] ⋆ x_pad[n]``
(a convolution over the batch: :func:`conv_dw_xla`), ``db = Σ_{n,i,j} dout``. This is what
:func:`jcnn.layers.conv2d` runs with ``impl='xla'``, and what ``impl='auto'`` runs wherever
oneDNN's kernels do not (:mod:`jcnn.layers.conv_onednn`).
"""

from __future__ import annotations

from jcnn.layers._conv_common import (
    ConvCache,
    bias_gradient,
    check_conv_args,
    check_conv_cotangent,
    lax_dw,
    lax_dx,
    lax_forward,
)


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
        ValueError: as :func:`jcnn.layers.conv.check_conv_args`: x or w not rank 4, channels
            of x and w differ, b not ``(F,)``, x not floating or w, b not in x's dtype, w with
            an empty dimension, stride/pad not a positive/non-negative int, or a filter that
            does not fit or a stride that does not tile the padded input.
        ValueError: naming ``layout`` if not ``'NCHW'``/``'NHWC'``.
    """
    check_conv_args(x, w, b, stride, pad, layout)
    out = lax_forward(x, w, stride=stride, pad=pad, layout=layout)
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
    return lax_dx(dout, w, stride=stride, pad=pad, x_shape=x_shape, layout=layout)


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
    return lax_dw(dout, x, stride=stride, pad=pad, w_shape=w_shape, layout=layout)


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
    check_conv_cotangent(dout, cache)
    x, w, stride, pad, layout = cache.x, cache.w, cache.stride, cache.pad, cache.layout
    dx = conv_dx_xla(dout, w, x.shape, stride, pad, layout)
    dw = conv_dw_xla(dout, x, w.shape, stride, pad, layout)
    return dx, dw, bias_gradient(dout, layout)
