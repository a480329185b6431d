"""Autodiff twins of :mod:`jcnn.layers`: the same names and signatures in plain ``jax.numpy``
and ``lax``, with no custom VJP, so ``jax.grad`` derives their gradients on its own.

They are what the hand-written backward passes are proven against, and what "plain JAX"
means in the benchmarks. ``impl`` arguments are accepted and ignored.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from jcnn.layers._checks import check_labels, check_rank
from jcnn.layers._windows import channel_axis, spatial_axes
from jcnn.layers.batchnorm import batch_statistics, check_batchnorm_args, running_update
from jcnn.layers.conv import check_conv_args
from jcnn.layers.dropout import check_dropout_key, check_rate, keep_mask
from jcnn.layers.losses import check_label_smoothing, valid_labels
from jcnn.layers.pool import check_pool_args


def affine(x: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
    return x.reshape(x.shape[0], -1) @ w + b


def relu(x: jax.Array) -> jax.Array:
    return jnp.where(x > 0, x, jnp.zeros_like(x))


def conv2d(x, w, b, *, stride=1, pad=0, impl=None, layout="NCHW") -> jax.Array:
    check_conv_args(x, w, b, stride, pad, layout)
    out = lax.conv_general_dilated(
        x, w, (stride, stride), ((pad, pad), (pad, pad)), dimension_numbers=(layout, "OIHW", layout)
    )
    return out + (b[None, :, None, None] if layout == "NCHW" else b)


def max_pool2d(x, *, pool_height=2, pool_width=2, stride=2, impl=None, layout="NCHW") -> jax.Array:
    check_pool_args(x, pool_height, pool_width, stride, layout)
    window, strides = [1, 1, 1, 1], [1, 1, 1, 1]
    for axis, size in zip(spatial_axes(layout), (pool_height, pool_width), strict=True):
        window[axis], strides[axis] = size, stride
    return lax.reduce_window(x, -jnp.inf, lax.max, tuple(window), tuple(strides), "VALID")


def _with_running_stats(x, gamma, beta, running_mean, running_var, *, train, momentum, eps, axis):
    check_batchnorm_args(
        x, gamma, beta, running_mean, running_var, momentum, eps, axis, train=bool(train)
    )
    shape = [1] * x.ndim
    shape[axis] = -1
    if train:
        mean, var = batch_statistics(x, axis)
    else:
        mean, var = running_mean, running_var
    x_hat = (x - mean.reshape(shape)) / jnp.sqrt(var.reshape(shape) + eps)
    out = gamma.reshape(shape) * x_hat + beta.reshape(shape)
    if not train:
        return out, running_mean, running_var
    return (
        out,
        running_update(running_mean, mean, momentum),
        running_update(running_var, var, momentum),
    )


def batchnorm(x, gamma, beta, running_mean, running_var, *, train, momentum=0.9, eps=1e-5):
    check_rank("x", x, 2, "(N, D)")
    return _with_running_stats(
        x, gamma, beta, running_mean, running_var, train=train, momentum=momentum, eps=eps, axis=1
    )


def spatial_batchnorm(
    x, gamma, beta, running_mean, running_var, *, train, momentum=0.9, eps=1e-5, layout="NCHW"
):
    check_rank("x", x, 4, f"({', '.join(layout)})")
    return _with_running_stats(
        x, gamma, beta, running_mean, running_var, train=train, momentum=momentum, eps=eps,
        axis=channel_axis(layout),
    )  # fmt: skip


def dropout(x, key, *, rate: float, train: bool) -> jax.Array:
    rate = check_rate(rate)
    if not train or rate == 0.0:
        return x
    check_dropout_key(key)
    return jnp.where(keep_mask(key, x.shape, rate), x / (1.0 - rate), jnp.zeros_like(x))


def _nan_rows_of_invalid(scores: jax.Array, y: jax.Array) -> jax.Array:
    """``scores`` with the rows of out-of-range labels NaN, in value and in gradient (a factor
    of NaN): what the layers do with a traced bad label (:mod:`jcnn.layers.losses`)."""
    return scores * jnp.where(valid_labels(y, scores.shape[1]), 1.0, jnp.nan)[:, None]


def softmax_loss(scores: jax.Array, y: jax.Array, *, label_smoothing: float = 0.0) -> jax.Array:
    check_labels(scores, y)
    eps = check_label_smoothing(label_smoothing)
    scores = _nan_rows_of_invalid(scores, y)
    log_probs = jax.nn.log_softmax(scores, axis=1)
    nll = -jnp.take_along_axis(log_probs, y[:, None], axis=1)[:, 0]
    uniform = -jnp.mean(log_probs, axis=1)  # cross-entropy against the uniform target
    return jnp.mean((1.0 - eps) * nll + eps * uniform)


def svm_loss(scores: jax.Array, y: jax.Array) -> jax.Array:
    check_labels(scores, y)
    scores = _nan_rows_of_invalid(scores, y)
    correct = jnp.take_along_axis(scores, y[:, None], axis=1)
    margins = jnp.maximum(0, scores - correct + 1)
    is_correct = jnp.arange(scores.shape[1])[None, :] == y[:, None]
    return jnp.sum(jnp.where(is_correct, 0, margins)) / scores.shape[0]


def affine_relu(x, w, b):
    return relu(affine(x, w, b))


def affine_bn_relu(
    x, w, b, gamma, beta, running_mean, running_var, *, train, momentum=0.9, eps=1e-5
):
    a, mean, var = batchnorm(
        affine(x, w, b),
        gamma,
        beta,
        running_mean,
        running_var,
        train=train,
        momentum=momentum,
        eps=eps,
    )
    return relu(a), mean, var


def conv_relu(x, w, b, *, stride=1, pad=0, impl=None, layout="NCHW"):
    return relu(conv2d(x, w, b, stride=stride, pad=pad, layout=layout))


def conv_relu_pool(
    x, w, b, *, stride=1, pad=0, pool_height=2, pool_width=2, pool_stride=2, impl=None,
    pool_impl=None, layout="NCHW",
):  # fmt: skip
    a = conv_relu(x, w, b, stride=stride, pad=pad, layout=layout)
    return max_pool2d(
        a, pool_height=pool_height, pool_width=pool_width, stride=pool_stride, layout=layout
    )


def conv_bn_relu(
    x, w, b, gamma, beta, running_mean, running_var, *, train, stride=1, pad=0, momentum=0.9,
    eps=1e-5, impl=None, layout="NCHW",
):  # fmt: skip
    a, mean, var = spatial_batchnorm(
        conv2d(x, w, b, stride=stride, pad=pad, layout=layout), gamma, beta, running_mean,
        running_var, train=train, momentum=momentum, eps=eps, layout=layout,
    )  # fmt: skip
    return relu(a), mean, var
