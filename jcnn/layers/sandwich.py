"""Sandwich layers: the cs231n ``layer_utils`` compositions.

Each is a composition of the public layers, so its backward is the chain of their
hand-written VJPs in reverse order (exactly what ``xxx_relu_backward`` does in the
assignment), with batchnorm → relu as one layer when training
(:func:`jcnn.layers.batchnorm_relu.batchnorm_relu_forward` and its backward: one compiled
kernel each way on the CPU for features-last input). One shortcut, in :func:`conv_bn_relu`
when training: batchnorm subtracts each channel's batch mean, so the convolution's bias
cannot change the output and its gradient is 0; the bias is left out of the forward and
backward (saving a pass over the activations each way) and only its share of the running
mean is kept.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from jcnn.layers._windows import channel_axis
from jcnn.layers.affine import affine
from jcnn.layers.batchnorm_relu import batchnorm_relu
from jcnn.layers.conv import conv2d
from jcnn.layers.pool import max_pool2d
from jcnn.layers.relu import relu


def affine_relu(x: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
    """affine → relu.

    Args:
        x: input ``(N, d1, ..., dk)``, flattened to ``(N, D)``.
        w: weights ``(D, M)``.
        b: biases ``(M,)``.

    Returns:
        ``relu(x.reshape(N, D) @ w + b)``, shape ``(N, M)``.

    Raises:
        ValueError: as :func:`jcnn.layers.affine.affine` (x of rank < 2, w not ``(D, M)``,
            b not ``(M,)``).
    """
    return relu(affine(x, w, b))


def affine_bn_relu(
    x, w, b, gamma, beta, running_mean, running_var, *, train: bool, momentum=0.9, eps=1e-5
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """affine → batchnorm → relu; returns ``(out, new_running_mean, new_running_var)``.

    Args:
        x (jax.Array): input ``(N, d1, ..., dk)``, flattened to ``(N, D)``.
        w (jax.Array): weights ``(D, M)``.
        b (jax.Array): biases ``(M,)``.
        gamma (jax.Array): batchnorm scale ``(M,)``.
        beta (jax.Array): batchnorm shift ``(M,)``.
        running_mean (jax.Array): running mean ``(M,)``.
        running_var (jax.Array): running variance ``(M,)``.
        train: True to normalise with the batch statistics (and update the running ones);
            False to use the running statistics.
        momentum (float): weight of the old running statistics in their update,
            ``m·running + (1 − m)·batch``, in [0, 1].
        eps (float): added to the variance before the square root, > 0.

    Returns:
        out: ``(N, M)``, after the relu.
        new_running_mean: ``(M,)``, updated when training, unchanged at test time.
        new_running_var: ``(M,)``, likewise.

    Raises:
        ValueError: as :func:`jcnn.layers.affine.affine` (x of rank < 2, w not ``(D, M)``,
            b not ``(M,)``).
        ValueError: naming ``gamma``, ``beta``, ``running_mean`` or ``running_var``
            if not one value per feature; ``momentum`` outside [0, 1]; ``eps`` not > 0; with
            ``train``, naming ``x`` if the batch is empty
            (:func:`jcnn.layers.batchnorm.check_batchnorm_args`).
    """
    a = affine(x, w, b)
    return batchnorm_relu(
        a, gamma, beta, running_mean, running_var, train=train, momentum=momentum, eps=eps, axis=1
    )


def conv_relu(
    x, w, b, *, stride: int = 1, pad: int = 0, impl: str = "auto", layout: str = "NCHW"
) -> jax.Array:
    """conv → relu.

    Args:
        x (jax.Array): input images ``(N, C, H, W)`` (``layout='NCHW'``) or
            ``(N, H, W, C)``.
        w (jax.Array): filters ``(F, C, HH, WW)`` (in either layout), x's dtype.
        b (jax.Array): biases ``(F,)``, x's dtype.
        stride: step of the filter over the padded input, a positive int.
        pad: zero padding added on every side of H and W, a non-negative int.
        impl: the convolution's formulation, ``'auto'``, ``'onednn'``, ``'xla'``, ``'im2col'`` or
            ``'naive'`` (:func:`jcnn.layers.conv.resolve_impl`).
        layout: ``'NCHW'`` or ``'NHWC'`` (channels-last; not with
            ``impl='im2col'``/``'naive'``) for x and out.

    Returns:
        ``relu(conv2d(x, w, b))``: ``(N, F, H', W')`` (``(N, H', W', F)`` for NHWC), with
            ``H' = 1 + (H + 2·pad − HH) / stride`` and likewise W'.

    Raises:
        ValueError: naming ``impl`` if not a conv impl (or ``'onednn'`` where oneDNN cannot
            run); naming ``layout`` if not ``'NCHW'``/``'NHWC'``, or ``'NHWC'`` with
            ``'im2col'``/``'naive'``; naming ``stride`` (``pad``) if not a positive
            (non-negative) int; naming
            ``x``, ``w`` or ``b`` on bad shapes or dtypes, and when the filter does not fit or
            the stride does not tile the padded input (see :func:`jcnn.layers.conv.conv2d`).
    """
    return relu(conv2d(x, w, b, stride=stride, pad=pad, impl=impl, layout=layout))


def conv_relu_pool(
    x,
    w,
    b,
    *,
    stride: int = 1,
    pad: int = 0,
    pool_height: int = 2,
    pool_width: int = 2,
    pool_stride: int = 2,
    impl: str = "auto",
    pool_impl: str = "fast",
    layout: str = "NCHW",
) -> jax.Array:
    """conv → relu → max pool.

    Args:
        x (jax.Array): input images ``(N, C, H, W)`` (``layout='NCHW'``) or
            ``(N, H, W, C)``.
        w (jax.Array): filters ``(F, C, HH, WW)`` (in either layout), x's dtype.
        b (jax.Array): biases ``(F,)``, x's dtype.
        stride: step of the filter over the padded input, a positive int.
        pad: zero padding added on every side of H and W, a non-negative int.
        impl: the convolution's formulation, ``'auto'``, ``'onednn'``, ``'xla'``, ``'im2col'`` or
            ``'naive'`` (:func:`jcnn.layers.conv.resolve_impl`).
        layout: ``'NCHW'`` or ``'NHWC'`` (channels-last; not with
            ``impl='im2col'``/``'naive'``) for x and out.
        pool_height: height of the pooling window, a positive int.
        pool_width: width of the pooling window, a positive int.
        pool_stride: step of the pooling window, a positive int.
        pool_impl: the pooling formulation, ``'naive'`` or ``'fast'`` (NHWC needs ``'fast'``).

    Returns:
        ``(N, F, H'', W'')`` (``(N, H'', W'', F)`` for NHWC): the conv output ``(H', W')`` as
            in :func:`conv_relu`, pooled to ``H'' = 1 + (H' − pool_height) // pool_stride`` and
            likewise W''.

    Raises:
        ValueError: naming ``impl`` if not a conv impl (or ``'onednn'`` where oneDNN cannot
            run); naming ``layout`` if not ``'NCHW'``/``'NHWC'``, or ``'NHWC'`` with
            ``'im2col'``/``'naive'``; naming ``stride`` (``pad``) if not a positive
            (non-negative) int; naming
            ``x``, ``w`` or ``b`` on bad shapes or dtypes, and when the filter does not fit or
            the stride does not tile the padded input (see :func:`jcnn.layers.conv.conv2d`).
        ValueError: from the pooling (:func:`jcnn.layers.pool.max_pool2d`): naming ``impl`` if
            ``pool_impl`` is not ``'naive'``/``'fast'``; naming ``layout`` for ``'NHWC'`` with
            ``pool_impl='naive'``; naming ``pool_height``, ``pool_width`` or ``stride`` (for
            ``pool_stride``) if not a positive int; when the window has more than 127 taps or
            does not fit the conv output.
    """
    a = conv_relu(x, w, b, stride=stride, pad=pad, impl=impl, layout=layout)
    return max_pool2d(
        a,
        pool_height=pool_height,
        pool_width=pool_width,
        stride=pool_stride,
        impl=pool_impl,
        layout=layout,
    )


def conv_bn_relu(
    x,
    w,
    b,
    gamma,
    beta,
    running_mean,
    running_var,
    *,
    train: bool,
    stride: int = 1,
    pad: int = 0,
    momentum: float = 0.9,
    eps: float = 1e-5,
    impl: str = "auto",
    layout: str = "NCHW",
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """conv → spatial batchnorm → relu; returns ``(out, new_running_mean, new_running_var)``.

    When training, the bias is not added: batchnorm would subtract it again with the batch
    mean, so the output does not depend on it and its gradient is exactly 0 (through the
    full formula, ``Σ dx_bn = 0`` over N, H, W). It still goes into the running mean,
    ``new_running_mean = m·running_mean + (1 − m)·(μ + b)``, used at test time.

    Args:
        x (jax.Array): input images ``(N, C, H, W)`` (``layout='NCHW'``) or
            ``(N, H, W, C)``.
        w (jax.Array): filters ``(F, C, HH, WW)`` (in either layout), x's dtype.
        b (jax.Array): biases ``(F,)``, x's dtype.
        gamma (jax.Array): batchnorm scale ``(F,)``.
        beta (jax.Array): batchnorm shift ``(F,)``.
        running_mean (jax.Array): running mean ``(F,)``.
        running_var (jax.Array): running variance ``(F,)``.
        train: True to normalise with the batch statistics (and update the running ones);
            False to use the running statistics.
        stride: step of the filter over the padded input, a positive int.
        pad: zero padding added on every side of H and W, a non-negative int.
        impl: the convolution's formulation, ``'auto'``, ``'onednn'``, ``'xla'``, ``'im2col'`` or
            ``'naive'`` (:func:`jcnn.layers.conv.resolve_impl`).
        layout: ``'NCHW'`` or ``'NHWC'`` (channels-last; not with
            ``impl='im2col'``/``'naive'``) for x and out.
        momentum: weight ``m`` of the old running statistics in their update, in [0, 1].
        eps: added to the variance before the square root, > 0.

    Returns:
        out: ``(N, F, H', W')`` (``(N, H', W', F)`` for NHWC), after the relu.
        new_running_mean: ``(F,)``, updated when training, unchanged at test time.
        new_running_var: ``(F,)``, likewise.

    Raises:
        ValueError: naming ``impl`` if not a conv impl (or ``'onednn'`` where oneDNN cannot
            run); naming ``layout`` if not ``'NCHW'``/``'NHWC'``, or ``'NHWC'`` with
            ``'im2col'``/``'naive'``; naming ``stride`` (``pad``) if not a positive
            (non-negative) int; naming
            ``x``, ``w`` or ``b`` on bad shapes or dtypes, and when the filter does not fit or
            the stride does not tile the padded input (see :func:`jcnn.layers.conv.conv2d`).
        ValueError: naming ``gamma``, ``beta``, ``running_mean`` or ``running_var``
            if not one value per feature; ``momentum`` outside [0, 1]; ``eps`` not > 0; with
            ``train``, naming ``x`` if the batch is empty
            (:func:`jcnn.layers.batchnorm.check_batchnorm_args`).
    """
    bias = jnp.zeros_like(b) if train else b
    a = conv2d(x, w, bias, stride=stride, pad=pad, impl=impl, layout=layout)
    out, mean, var = batchnorm_relu(
        a,
        gamma,
        beta,
        running_mean,
        running_var,
        train=train,
        momentum=momentum,
        eps=eps,
        axis=channel_axis(layout),
    )
    if train:
        mean = mean + (1.0 - momentum) * lax.stop_gradient(b).astype(mean.dtype)
    return out, mean, var
