"""Sandwich layers: the cs231n ``layer_utils`` compositions.

Each is a composition of the public layers, so its backward is the chain of their
hand-written VJPs in reverse order (exactly what ``xxx_relu_backward`` does in the
assignment), with batchnorm → relu as one layer when training
(:func:`jcnn.layers.batchnorm.batchnorm_relu_forward` and its backward: one compiled
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
from jcnn.layers.batchnorm import batchnorm_relu
from jcnn.layers.conv import conv2d
from jcnn.layers.pool import max_pool2d
from jcnn.layers.relu import relu


def affine_relu(x: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
    """affine → relu."""
    return relu(affine(x, w, b))


def affine_bn_relu(
    x, w, b, gamma, beta, running_mean, running_var, *, train: bool, momentum=0.9, eps=1e-5
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """affine → batchnorm → relu; returns ``(out, new_running_mean, new_running_var)``."""
    a = affine(x, w, b)
    return batchnorm_relu(
        a, gamma, beta, running_mean, running_var, train=train, momentum=momentum, eps=eps, axis=1
    )


def conv_relu(
    x, w, b, *, stride: int = 1, pad: int = 0, impl: str = "xla", layout: str = "NCHW"
) -> jax.Array:
    """conv → relu."""
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
    impl: str = "xla",
    pool_impl: str = "fast",
    layout: str = "NCHW",
) -> jax.Array:
    """conv → relu → max pool."""
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
    impl: str = "xla",
    layout: str = "NCHW",
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """conv → spatial batchnorm → relu; returns ``(out, new_running_mean, new_running_var)``.

    When training, the bias is not added: batchnorm would subtract it again with the batch
    mean, so the output does not depend on it and its gradient is exactly 0 (through the
    full formula, ``Σ dx_bn = 0`` over N, H, W). It still goes into the running mean,
    ``new_running_mean = m·running_mean + (1 − m)·(μ + b)``, used at test time.
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
