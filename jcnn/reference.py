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
    """Twin of :func:`jcnn.layers.affine`: ``x.reshape(N, D) @ w + b``.

    Args:
        x: input ``(N, d1, ..., dk)``, flattened to ``(N, D)`` with ``D = d1·...·dk``.
        w: weights ``(D, M)``.
        b: biases ``(M,)``.

    Returns:
        The output ``(N, M)``.

    Raises:
        TypeError: from ``jax.numpy`` if the shapes do not fit together (this twin has no
            checks of its own, unlike :func:`jcnn.layers.affine`).
    """
    return x.reshape(x.shape[0], w.shape[0]) @ w + b  # not -1: a batch may be empty


def relu(x: jax.Array) -> jax.Array:
    """Twin of :func:`jcnn.layers.relu`: ``max(x, 0)`` elementwise.

    Args:
        x: input of any shape.

    Returns:
        An array of the shape and dtype of ``x``.
    """
    return jnp.where(x > 0, x, jnp.zeros_like(x))


def residual_add(x: jax.Array, skip: jax.Array) -> jax.Array:
    """Twin of :func:`jcnn.layers.residual_add`: ``x + skip``.

    Args:
        x: the block's output.
        skip: the block's input, x's shape.

    Returns:
        ``x + skip``.
    """
    return x + skip


def conv2d(x, w, b, *, stride=1, pad=0, impl=None, layout="NCHW") -> jax.Array:
    """Twin of :func:`jcnn.layers.conv2d`: one ``lax.conv_general_dilated``.

    Args:
        x: input ``(N, C, H, W)`` (``(N, H, W, C)`` with ``layout='NHWC'``), floating point.
        w: filters ``(F, C, HH, WW)`` in either layout, of the dtype of ``x``.
        b: biases ``(F,)``, of the dtype of ``x``.
        stride: positive int, the same along H and W.
        pad: non-negative int, zeros added on each side of H and W.
        impl: accepted and ignored.
        layout: ``'NCHW'`` or ``'NHWC'``, the layout of ``x`` and of the output.

    Returns:
        The output ``(N, F, H', W')`` (``(N, H', W', F)`` with ``'NHWC'``), where
        ``H' = 1 + (H + 2·pad − HH) / stride`` and likewise ``W'``.

    Raises:
        ValueError: naming the argument (``check_conv_args``): ``layout`` not ``'NCHW'``/
            ``'NHWC'``; ``x`` or ``w`` not rank 4; ``stride`` not a positive int or ``pad``
            not a non-negative int; the channels of ``x`` not ``w``'s ``C``; ``b`` not
            ``(F,)``; ``x`` not floating point or ``w``, ``b`` of another dtype; ``w`` with an
            empty axis; a filter that does not fit or a stride that does not tile H or W.
    """
    check_conv_args(x, w, b, stride, pad, layout)
    out = lax.conv_general_dilated(
        x, w, (stride, stride), ((pad, pad), (pad, pad)), dimension_numbers=(layout, "OIHW", layout)
    )
    return out + (b[None, :, None, None] if layout == "NCHW" else b)


def max_pool2d(x, *, pool_height=2, pool_width=2, stride=2, impl=None, layout="NCHW") -> jax.Array:
    """Twin of :func:`jcnn.layers.max_pool2d`: one ``lax.reduce_window`` of ``max``.

    Args:
        x: input ``(N, C, H, W)`` (``(N, H, W, C)`` with ``layout='NHWC'``).
        pool_height: positive int, window height.
        pool_width: positive int, window width.
        stride: positive int, the same along H and W.
        impl: accepted and ignored.
        layout: ``'NCHW'`` or ``'NHWC'``, the layout of ``x`` and of the output.

    Returns:
        The output ``(N, C, H', W')`` (``(N, H', W', C)`` with ``'NHWC'``), where
        ``H' = 1 + (H − pool_height) // stride`` and ``W' = 1 + (W − pool_width) // stride``.

    Raises:
        ValueError: naming the argument (``check_pool_args``): ``layout`` not ``'NCHW'``/
            ``'NHWC'``; ``x`` not rank 4; a window size or ``stride`` not a positive int; a
            window of more than 127 taps; a window larger than the input's H or W.
    """
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
    else:  # in x's dtype, as jcnn's layers use them (float32 statistics, bfloat16 x)
        mean, var = running_mean.astype(x.dtype), running_var.astype(x.dtype)
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
    """Twin of :func:`jcnn.layers.batchnorm`: batchnorm of ``(N, D)`` features.

    Args:
        x: input ``(N, D)``.
        gamma: scale ``(D,)``.
        beta: shift ``(D,)``.
        running_mean: running mean ``(D,)``, used (not updated) when not ``train``.
        running_var: running variance ``(D,)``, used (not updated) when not ``train``.
        train: batch statistics (and updated running ones) if true, running ones if false.
        momentum: in [0, 1]; running = momentum·running + (1 − momentum)·batch statistic.
        eps: > 0, added to the variance.

    Returns:
        ``(out, new_running_mean, new_running_var)``: ``out`` ``(N, D)``, the statistics
        ``(D,)`` (unchanged when not ``train``).

    Raises:
        ValueError: naming ``x`` if it is not ``(N, D)``, or if ``train`` and N = 0; naming
            ``gamma``, ``beta``, ``running_mean`` or ``running_var`` if not ``(D,)``;
            ``momentum`` outside [0, 1]; ``eps`` not > 0 (``check_batchnorm_args``).
    """
    check_rank("x", x, 2, "(N, D)")
    return _with_running_stats(
        x, gamma, beta, running_mean, running_var, train=train, momentum=momentum, eps=eps, axis=1
    )


def spatial_batchnorm(
    x, gamma, beta, running_mean, running_var, *, train, momentum=0.9, eps=1e-5, layout="NCHW"
):
    """Twin of :func:`jcnn.layers.spatial_batchnorm`: batchnorm per channel,
    statistics over N, H and W.

    Args:
        x: input ``(N, C, H, W)`` (``(N, H, W, C)`` with ``layout='NHWC'``).
        gamma: scale ``(C,)``.
        beta: shift ``(C,)``.
        running_mean: running mean ``(C,)``, used (not updated) when not ``train``.
        running_var: running variance ``(C,)``, used (not updated) when not ``train``.
        train: batch statistics (and updated running ones) if true, running ones if false.
        momentum: in [0, 1]; running = momentum·running + (1 − momentum)·batch statistic.
        eps: > 0, added to the variance.
        layout: ``'NCHW'`` or ``'NHWC'``, the layout of ``x`` and of ``out``.

    Returns:
        ``(out, new_running_mean, new_running_var)``: ``out`` of the shape of ``x``, the
        statistics ``(C,)`` (unchanged when not ``train``).

    Raises:
        ValueError: naming ``x`` if it is not rank 4, or if ``train`` and N, H or W is 0;
            naming ``gamma``, ``beta``, ``running_mean`` or ``running_var`` if not ``(C,)``;
            ``momentum`` outside [0, 1]; ``eps`` not > 0 (``check_batchnorm_args``).
    """
    check_rank("x", x, 4, f"({', '.join(layout)})")
    return _with_running_stats(
        x, gamma, beta, running_mean, running_var, train=train, momentum=momentum, eps=eps,
        axis=channel_axis(layout),
    )  # fmt: skip


def gelu(x: jax.Array, *, approximate: bool = False) -> jax.Array:
    """Twin of :func:`jcnn.layers.gelu`: :func:`jax.nn.gelu`.

    Args:
        x: input of any shape and floating dtype.
        approximate: the tanh form instead of the exact ``x·Φ(x)``.

    Returns:
        gelu(x), shaped like x.
    """
    return jax.nn.gelu(x, approximate=approximate)


def batchnorm_gelu(
    x, beta, running_mean, running_var, *, train, momentum=0.9, eps=1e-5, layout="NCHW",
    approximate=False,
):  # fmt: skip
    """Twin of :func:`jcnn.layers.batchnorm_gelu`: batchnorm with scale 1, then GELU.

    Args:
        x: ``(N, C, H, W)`` (``layout='NCHW'``), ``(N, H, W, C)`` (``'NHWC'``) or ``(N, D)``.
        beta: shift ``(C,)``.
        running_mean: running mean ``(C,)``, used (not updated) when not ``train``.
        running_var: running variance ``(C,)``, used (not updated) when not ``train``.
        train: batch statistics (and updated running ones) if true, running ones if false.
        momentum: in [0, 1]; running = momentum·running + (1 − momentum)·batch statistic.
        eps: > 0, added to the variance.
        layout: ``'NCHW'`` or ``'NHWC'`` for rank-4 x.
        approximate: GELU's tanh form.

    Returns:
        ``(out, new_running_mean, new_running_var)`` as :func:`jcnn.layers.batchnorm_gelu`.

    Raises:
        ValueError: as ``check_batchnorm_args`` (shapes, ``momentum``, ``eps``).
    """
    axis = 1 if x.ndim == 2 else channel_axis(layout)
    out, rm, rv = _with_running_stats(
        x, jnp.ones_like(beta), beta, running_mean, running_var, train=train,
        momentum=momentum, eps=eps, axis=axis,
    )  # fmt: skip
    return jax.nn.gelu(out, approximate=approximate), rm, rv


def dropout(x, key, *, rate: float, train: bool) -> jax.Array:
    """Twin of :func:`jcnn.layers.dropout`: inverted dropout, the same mask for the same key.

    Args:
        x: input of any shape.
        key: one JAX PRNG key; not looked at (may be ``None``) unless ``train`` and
            ``rate > 0``.
        rate: the probability of dropping a unit, in [0, 1).
        train: if false, the layer is the identity.

    Returns:
        An array of the shape and dtype of ``x``: kept units scaled by ``1 / (1 − rate)``,
        dropped ones 0.

    Raises:
        ValueError: naming ``rate`` if it is not a float in [0, 1); naming ``key`` if
            ``train`` with ``rate > 0`` and ``key`` is not one PRNG key.
    """
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
    """Twin of :func:`jcnn.layers.softmax_loss`: mean softmax cross-entropy.

    Args:
        scores: class scores ``(N, K)``.
        y: integer labels ``(N,)`` in ``[0, K)``; with a traced ``y``, the rows of labels
            outside it make the loss and those rows of the gradient NaN.
        label_smoothing: ε in [0, 1); each target is ``(1 − ε)·onehot(y) + ε/K``.

    Returns:
        The scalar loss ``()``.

    Raises:
        ValueError: naming ``scores`` if it is not ``(N, K)`` or is empty; naming ``y`` if it
            is not ``(N,)``, not of an integer dtype, or (when concrete) holds a label outside
            ``[0, K)``; naming ``label_smoothing`` if it is not a float in [0, 1).
    """
    check_labels(scores, y)
    eps = check_label_smoothing(label_smoothing)
    scores = _nan_rows_of_invalid(scores, y)
    log_probs = jax.nn.log_softmax(scores, axis=1)
    nll = -jnp.take_along_axis(log_probs, y[:, None], axis=1)[:, 0]
    uniform = -jnp.mean(log_probs, axis=1)  # cross-entropy against the uniform target
    return jnp.mean((1.0 - eps) * nll + eps * uniform)


def svm_loss(scores: jax.Array, y: jax.Array) -> jax.Array:
    """Twin of :func:`jcnn.layers.svm_loss`: mean multiclass hinge loss (margin 1).

    Args:
        scores: class scores ``(N, K)``.
        y: integer labels ``(N,)`` in ``[0, K)``; with a traced ``y``, the rows of labels
            outside it make the loss and those rows of the gradient NaN.

    Returns:
        The scalar loss ``()``.

    Raises:
        ValueError: naming ``scores`` if it is not ``(N, K)`` or is empty; naming ``y`` if it
            is not ``(N,)``, not of an integer dtype, or (when concrete) holds a label outside
            ``[0, K)``.
    """
    check_labels(scores, y)
    scores = _nan_rows_of_invalid(scores, y)
    correct = jnp.take_along_axis(scores, y[:, None], axis=1)
    margins = jnp.maximum(0, scores - correct + 1)
    is_correct = jnp.arange(scores.shape[1])[None, :] == y[:, None]
    return jnp.sum(jnp.where(is_correct, 0, margins)) / scores.shape[0]


def affine_relu(x, w, b):
    """Twin of :func:`jcnn.layers.affine_relu`: ``relu(affine(x, w, b))``.

    Args:
        x: input ``(N, d1, ..., dk)``, flattened to ``(N, D)``.
        w: weights ``(D, M)``.
        b: biases ``(M,)``.

    Returns:
        The output ``(N, M)``.

    Raises:
        TypeError: from ``jax.numpy`` if the shapes do not fit together (no checks of its own).
    """
    return relu(affine(x, w, b))


def affine_bn_relu(
    x, w, b, gamma, beta, running_mean, running_var, *, train, momentum=0.9, eps=1e-5
):
    """Twin of :func:`jcnn.layers.affine_bn_relu`: affine - batchnorm - relu.

    Args:
        x: input ``(N, d1, ..., dk)``, flattened to ``(N, D)``.
        w: weights ``(D, M)``.
        b: biases ``(M,)``.
        gamma: batchnorm scale ``(M,)``.
        beta: batchnorm shift ``(M,)``.
        running_mean: running mean ``(M,)``.
        running_var: running variance ``(M,)``.
        train: batch statistics (and updated running ones) if true, running ones if false.
        momentum: in [0, 1], the running statistics' momentum.
        eps: > 0, added to the variance.

    Returns:
        ``(out, new_running_mean, new_running_var)``: ``out`` ``(N, M)``, the statistics
        ``(M,)``.

    Raises:
        TypeError: from ``jax.numpy`` if ``x``, ``w`` and ``b`` do not fit together.
        ValueError: as :func:`batchnorm`, for ``gamma``, ``beta``, the running statistics,
            ``momentum``, ``eps`` and (when ``train``) N = 0.
    """
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
    """Twin of :func:`jcnn.layers.conv_relu`: ``relu(conv2d(x, w, b))``.

    Args:
        x: input ``(N, C, H, W)`` (``(N, H, W, C)`` with ``layout='NHWC'``), floating point.
        w: filters ``(F, C, HH, WW)``.
        b: biases ``(F,)``.
        stride: positive int, the conv's stride.
        pad: non-negative int, the conv's zero padding per side.
        impl: accepted and ignored.
        layout: ``'NCHW'`` or ``'NHWC'``.

    Returns:
        The output ``(N, F, H', W')`` (``(N, H', W', F)`` with ``'NHWC'``), as :func:`conv2d`.

    Raises:
        ValueError: as :func:`conv2d`.
    """
    return relu(conv2d(x, w, b, stride=stride, pad=pad, layout=layout))


def conv_relu_pool(
    x, w, b, *, stride=1, pad=0, pool_height=2, pool_width=2, pool_stride=2, impl=None,
    pool_impl=None, layout="NCHW",
):  # fmt: skip
    """Twin of :func:`jcnn.layers.conv_relu_pool`: conv - relu - max pool.

    Args:
        x: input ``(N, C, H, W)`` (``(N, H, W, C)`` with ``layout='NHWC'``), floating point.
        w: filters ``(F, C, HH, WW)``.
        b: biases ``(F,)``.
        stride: positive int, the conv's stride.
        pad: non-negative int, the conv's zero padding per side.
        pool_height: positive int, the pool window's height.
        pool_width: positive int, the pool window's width.
        pool_stride: positive int, the pool's stride.
        impl: accepted and ignored.
        pool_impl: accepted and ignored.
        layout: ``'NCHW'`` or ``'NHWC'``.

    Returns:
        The pooled output ``(N, F, H'', W'')`` (``(N, H'', W'', F)`` with ``'NHWC'``): the
        conv's ``(H', W')`` (see :func:`conv2d`) pooled as in :func:`max_pool2d`.

    Raises:
        ValueError: as :func:`conv2d`, then as :func:`max_pool2d` on the conv's output.
    """
    a = conv_relu(x, w, b, stride=stride, pad=pad, layout=layout)
    return max_pool2d(
        a, pool_height=pool_height, pool_width=pool_width, stride=pool_stride, layout=layout
    )


def conv_bn_relu(
    x, w, b, gamma, beta, running_mean, running_var, *, train, stride=1, pad=0, momentum=0.9,
    eps=1e-5, impl=None, layout="NCHW",
):  # fmt: skip
    """Twin of :func:`jcnn.layers.conv_bn_relu`: conv - spatial batchnorm - relu.

    Args:
        x: input ``(N, C, H, W)`` (``(N, H, W, C)`` with ``layout='NHWC'``), floating point.
        w: filters ``(F, C, HH, WW)``.
        b: biases ``(F,)``.
        gamma: batchnorm scale ``(F,)``.
        beta: batchnorm shift ``(F,)``.
        running_mean: running mean ``(F,)``.
        running_var: running variance ``(F,)``.
        train: batch statistics (and updated running ones) if true, running ones if false.
        stride: positive int, the conv's stride.
        pad: non-negative int, the conv's zero padding per side.
        momentum: in [0, 1], the running statistics' momentum.
        eps: > 0, added to the variance.
        impl: accepted and ignored.
        layout: ``'NCHW'`` or ``'NHWC'``.

    Returns:
        ``(out, new_running_mean, new_running_var)``: ``out`` ``(N, F, H', W')`` (``(N, H',
        W', F)`` with ``'NHWC'``) as :func:`conv2d`, the statistics ``(F,)``.

    Raises:
        ValueError: as :func:`conv2d`, then as :func:`spatial_batchnorm`.
    """
    a, mean, var = spatial_batchnorm(
        conv2d(x, w, b, stride=stride, pad=pad, layout=layout), gamma, beta, running_mean,
        running_var, train=train, momentum=momentum, eps=eps, layout=layout,
    )  # fmt: skip
    return relu(a), mean, var
