"""The ``onednn`` convolution: oneDNN's primitives in all three directions, on channels-last
(NHWC) float32 or bfloat16 activations on the CPU (:mod:`jcnn.native.onednn`).

The math is the ``xla`` formulation's (:mod:`jcnn.layers.conv_xla`): forward
``out = x ⋆ w + b``, backward ``dx = Σ_f dout[f] ⋆ᵀ w[f]``, ``dw[f] = Σₙ dout[n, f] ⋆ x_pad[n]``,
``db = Σ_{n,i,j} dout``. Each direction is a :class:`jcnn.native.Kernel` whose derivative
rules are the other two (they are bilinear), so grad-of-grad and Hessian-vector products stay
on oneDNN; where a kernel cannot run in a program (another backend, a program lowered for
:mod:`jax.export`, several devices without a per-device split) it is its XLA twin, the same
function.

:func:`jcnn.layers.conv2d` runs this with ``impl='onednn'`` (an error where oneDNN is not
available: :func:`unavailable` says why) and, where it is available, with ``impl='auto'`` on
channels-last float32 and bfloat16 input.
"""

from __future__ import annotations

import jax.numpy as jnp

from jcnn import native
from jcnn.layers._conv_common import (
    ConvCache,
    bias_gradient,
    check_conv_args,
    check_conv_cotangent,
    lax_dw,
    lax_dx,
    lax_forward,
)
from jcnn.native import onednn

DTYPES = (jnp.float32, jnp.bfloat16)

# The three directions as kernels whose derivatives are each other, XLA's as their twins.
KERNELS = onednn.Convolutions(lax_forward, lax_dx, lax_dw)


def unavailable(x=None, layout: str = "NHWC") -> str | None:
    """Why ``impl='onednn'`` cannot run a convolution of ``x`` here (None: it can).

    Args:
        x (jax.Array | None): the input, or None to ask about this process only.
        layout: the activations' layout.

    Returns:
        None, or a reason: oneDNN's kernels not available in this process (as
        :func:`jcnn.native.status` says, e.g. ``'opted-out'`` under ``JCNN_ONEDNN=0``), an
        NCHW layout, or a dtype other than float32 and bfloat16.
    """
    if layout != "NHWC":
        return f"oneDNN's kernels take channels-last activations, not layout={layout!r}"
    if x is not None and jnp.dtype(x.dtype) not in [jnp.dtype(d) for d in DTYPES]:
        return f"oneDNN's kernels take float32 or bfloat16, not {jnp.dtype(x.dtype).name}"
    if not native.available("onednn"):
        return f"oneDNN's kernels are not available here ({native.status('onednn')})"
    return None


def check_runs(x, layout: str = "NHWC") -> None:
    """ValueError naming ``impl`` and why, unless ``impl='onednn'`` can run ``x``."""
    why = unavailable(x, layout)
    if why is not None:
        raise ValueError(f"impl='onednn': {why}; use impl='auto' or impl='xla'")


def runs(x, layout: str) -> bool:
    """Whether ``impl='auto'`` takes oneDNN's kernels for ``x`` in ``layout``: channels-last
    float32 or bfloat16 (the kernels are their XLA twins wherever oneDNN cannot run)."""
    return layout == "NHWC" and jnp.dtype(x.dtype) in [jnp.dtype(d) for d in DTYPES]


def conv_forward_onednn(x, w, b, *, stride: int = 1, pad: int = 0):
    """oneDNN's forward convolution plus bias, channels-last.

    Args:
        x (jax.Array): input images ``(N, H, W, C)``, float32 or bfloat16.
        w (jax.Array): filters ``(F, C, HH, WW)``, x's dtype.
        b (jax.Array): biases ``(F,)``, x's dtype.
        stride: step of the filter over the padded input, a positive int.
        pad: zero padding added on every side of H and W, a non-negative int.

    Returns:
        (tuple[jax.Array, ConvCache]): ``(out, cache)``, out ``(N, H', W', F)`` with
            ``H' = 1 + (H + 2·pad − HH) / stride``, likewise W', and the cache for
            :func:`conv_backward_onednn`.

    Raises:
        ValueError: as :func:`jcnn.layers.conv.check_conv_args`.
        ValueError: naming ``impl`` where oneDNN cannot run x (:func:`unavailable`).
    """
    check_conv_args(x, w, b, stride, pad, "NHWC")
    check_runs(x)
    return forward(x, w, b, stride=stride, pad=pad)


def forward(x, w, b, *, stride: int = 1, pad: int = 0):
    """:func:`conv_forward_onednn` without asking whether oneDNN is available: its XLA twin
    runs where it is not (what ``impl='auto'`` wants)."""
    check_conv_args(x, w, b, stride, pad, "NHWC")
    out = KERNELS.conv_forward(x, w, stride=stride, pad=pad)
    return out + b, ConvCache(x, w, stride, pad, "NHWC")


def conv_backward_onednn(dout, cache: ConvCache):
    """oneDNN's backward-data and backward-weights convolutions, db as a sum.

    Args:
        dout (jax.Array): upstream gradient ``(N, H', W', F)``.
        cache: the :class:`ConvCache` from :func:`conv_forward_onednn`.

    Returns:
        dx (jax.Array): ``(N, H, W, C)``.
        dw (jax.Array): ``(F, C, HH, WW)``.
        db (jax.Array): ``(F,)``.
    """
    check_conv_cotangent(dout, cache, ("NHWC",), "conv_backward_onednn")
    x, w, stride, pad = cache.x, cache.w, cache.stride, cache.pad
    dx = KERNELS.conv_backward_data(dout, w, x.shape, stride=stride, pad=pad)
    dw = KERNELS.conv_backward_weights(dout, x, w.shape, stride=stride, pad=pad)
    return dx, dw, bias_gradient(dout, "NHWC")
