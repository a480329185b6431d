"""Batch normalisation, per feature of ``(N, D)`` input or per channel of NCHW input.

Training normalises with the batch mean and the biased (divide-by-m) batch variance, m the
number of values per feature; test mode uses the running statistics. The differentiable core
is ``(x, gamma, beta, running_mean, running_var) -> out``; the updated running statistics
are computed beside it and carry no gradient.

Backward (training, closed form), with x̂ the normalised input and σ⁻¹ = 1/√(var + eps):
``dx = γ·σ⁻¹·(dout − mean(dout) − x̂·mean(dout·x̂))``, ``dγ = Σ dout·x̂``, ``dβ = Σ dout``.

Batchnorm → relu, as the sandwich layers train it, is one layer with its own pair:
:mod:`jcnn.layers.batchnorm_relu`.
"""

from __future__ import annotations

import math
import operator

import jax
import jax.numpy as jnp
from jax import lax

from jcnn.layers._binding import cache_dataclass, with_vjp
from jcnn.layers._checks import (
    check_array,
    check_cache,
    check_choice,
    check_cotangent,
    check_floating,
    check_rank,
    check_shape,
    static_number,
    true_or_false,
)
from jcnn.layers._windows import LAYOUTS, channel_axis


@cache_dataclass(static=("train", "axis"))
class BatchnormCache:
    """What :func:`batchnorm_backward` needs from the forward pass.

    Attributes:
        x: the input.
        mean: batch mean (train) or running mean (test), broadcastable to x.
        inv_std: ``1/√(var + eps)``, broadcastable to x.
        gamma: the scale ``(D,)``.
        train: whether the forward used the batch statistics (static).
        axis: the feature axis (static).
    """

    x: jax.Array
    mean: jax.Array  # batch mean (train) or running mean (test), broadcastable to x
    inv_std: jax.Array  # 1/sqrt(var + eps), broadcastable to x
    gamma: jax.Array
    train: bool
    axis: int = 1  # the feature axis


def _reduce_axes(ndim: int, axis: int) -> tuple[int, ...]:
    return tuple(a for a in range(ndim) if a != axis % ndim)


def _per_feature(v, ndim: int, axis: int):
    """Reshape a ``(D,)`` vector to broadcast along ``axis`` of a rank-``ndim`` array."""
    shape = [1] * ndim
    shape[axis] = -1
    return v.reshape(shape)


def values_per_feature(shape: tuple[int, ...], axis: int) -> int:
    """m, the number of values each feature's statistics are taken over (0 for an empty
    batch; the product of every size but the feature axis's, so no division by D).

    Args:
        shape: the input's shape.
        axis: the feature axis (negative counts from the end).

    Returns:
        m, the product of every size of ``shape`` but ``shape[axis]``.
    """
    return math.prod(size for a, size in enumerate(shape) if a != axis % len(shape))


def check_feature_axis(x, axis) -> None:
    """ValueError naming ``axis`` unless it is an int axis of ``x`` (negative from the end).

    Args:
        x (jax.Array): the input.
        axis: its feature axis, in [-x.ndim, x.ndim).

    Raises:
        ValueError: naming ``axis``.
    """
    ndim = len(x.shape)
    try:
        inside = not isinstance(axis, bool) and -ndim <= operator.index(axis) < ndim
    except TypeError:  # not an integer
        inside = False
    if not inside:
        raise ValueError(
            f"axis must be an int in [{-ndim}, {ndim}) for x {tuple(x.shape)}, got {axis!r}"
        )


def check_batch_statistics(x, axis: int = 1) -> None:
    """ValueError naming ``x`` if some feature has no values to take batch statistics over
    (N = 0, or an empty spatial axis): their mean and variance would be NaN. Static (shapes
    only), so it holds under ``jit`` too.

    Args:
        x (jax.Array): the input, features on ``axis``.
        axis: the feature axis.

    Returns:
        Nothing; the check only raises.

    Raises:
        ValueError: naming ``x`` if :func:`values_per_feature` is 0; naming ``axis`` if it is
            not an axis of x.
    """
    check_feature_axis(x, axis)
    if values_per_feature(x.shape, axis) == 0:
        raise ValueError(
            f"x has no values per feature to take batch statistics over (shape "
            f"{tuple(x.shape)}, features on axis {axis % x.ndim}): training mode needs a "
            "non-empty batch (test mode, with the running statistics, takes an empty one)"
        )


def batch_statistics(x: jax.Array, axis: int = 1) -> tuple[jax.Array, jax.Array]:
    """Per-feature mean and biased variance over every axis but ``axis``, shapes ``(D,)``.

    Args:
        x: the input, features on ``axis`` (D of them).
        axis: the feature axis.

    Returns:
        ``(mean, var)``, each ``(D,)``; var divides by m (biased).
    """
    axes = _reduce_axes(x.ndim, axis)
    mean = jnp.mean(x, axis=axes)
    var = jnp.mean(jnp.square(x - _per_feature(mean, x.ndim, axis)), axis=axes)
    return mean, var


def check_batchnorm_args(
    x, gamma, beta, running_mean, running_var, momentum, eps, axis=1, *, train=True
):
    """ValueError naming the argument: parameters and running statistics not ``(D,)``,
    ``momentum`` outside [0, 1], ``eps`` not > 0, and with ``train`` an ``x`` with no values
    per feature (:func:`check_batch_statistics`). Shared with :mod:`jcnn.reference` and
    :func:`jcnn.layers.batchnorm_gelu` (which has no ``gamma``: it passes None).

    Args:
        x (jax.Array): the input, features on ``axis``; D = ``x.shape[axis]``.
        gamma (jax.Array | None): scale, must be ``(D,)``; None for a batchnorm without one.
        beta (jax.Array): shift, must be ``(D,)``.
        running_mean (jax.Array | None): running mean, must be ``(D,)``; None: none kept.
        running_var (jax.Array | None): running variance, must be ``(D,)``; None: none kept.
        momentum (float): must be in [0, 1].
        eps (float): must be > 0.
        axis (int): the feature axis.
        train (bool): also check that x has values per feature to take batch statistics over.

    Returns:
        (None): Nothing; the check only raises.

    Raises:
        ValueError: naming ``gamma``, ``beta``, ``running_mean`` or ``running_var`` if not
            ``(D,)``; naming ``momentum`` if outside [0, 1]; naming ``eps`` if not > 0; naming
            ``axis`` if it is not an axis of x; with ``train``, naming ``x`` if it has no
            values per feature.
    """
    train = true_or_false("train", train)
    check_array("x", x)
    check_feature_axis(x, axis)
    d = x.shape[axis]
    check_floating("x", x)
    for name, v in (
        ("gamma", gamma),
        ("beta", beta),
        ("running_mean", running_mean),
        ("running_var", running_var),
    ):
        if v is None and name != "beta":
            continue
        check_shape(name, v, (d,), f"one value per feature of x {tuple(x.shape)}")
        check_floating(name, v)
    static_number("momentum", momentum, "in [0, 1]", lambda v: 0.0 <= v <= 1.0)
    static_number("eps", eps, "a finite float > 0", lambda v: v > 0.0)  # inf: every value 0
    if train:
        check_batch_statistics(x, axis)


def batchnorm_forward(
    x, gamma, beta, running_mean, running_var, *, train: bool, eps: float = 1e-5, axis: int = 1
):
    """Normalise over every axis but ``axis`` (the features); returns ``(out, cache)``.
    Running stats are not updated here (see :func:`running_update`).

    Args:
        x (jax.Array): input with the features on ``axis``: ``(N, D)``, or e.g. ``(N, C, H, W)``
            with ``axis=1``; D the size of that axis.
        gamma (jax.Array): scale ``(D,)``.
        beta (jax.Array): shift ``(D,)``.
        running_mean (jax.Array): running mean ``(D,)``.
        running_var (jax.Array): running variance ``(D,)``.
        train: True to normalise with the batch mean and biased variance; False to use
            ``running_mean`` and ``running_var``.
        eps: added to the variance before the square root.
        axis: the feature axis.

    Returns:
        (tuple[jax.Array, BatchnormCache]): ``(out, cache)``, with
            ``out = γ·(x − μ)/√(var + eps) + β`` shaped like x, and the
            :class:`BatchnormCache` for :func:`batchnorm_backward`.

    Raises:
      ValueError: as :func:`check_batchnorm_args`: naming the argument (x not floating, or
          empty with ``train``; a parameter or running statistic not ``(D,)``; ``eps`` not
          > 0; ``axis`` not an axis of x).
    """
    check_batchnorm_args(x, gamma, beta, running_mean, running_var, 0.0, eps, axis, train=train)
    if train:
        mean, var = batch_statistics(x, axis)
    else:
        mean, var = running_mean, running_var
    mean = _per_feature(mean, x.ndim, axis).astype(x.dtype)
    inv_std = lax.rsqrt(_per_feature(var, x.ndim, axis).astype(x.dtype) + eps)
    x_hat = (x - mean) * inv_std
    out = _per_feature(gamma, x.ndim, axis) * x_hat + _per_feature(beta, x.ndim, axis)
    # x̂ is recomputed in the backward pass rather than saved: x already exists (it is the
    # previous layer's output), so saving it costs no extra full-size buffer.
    return out, BatchnormCache(x, mean, inv_std, gamma, bool(train), axis)


def batchnorm_backward(dout, cache: BatchnormCache):
    """Closed form; one pass over dout. Returns ``(dx, dgamma, dbeta, drunning_mean,
    drunning_var)`` (the running statistics get no gradient, None, in training mode).

    Training: ``dx = γ·σ⁻¹·(dout − mean(dout) − x̂·mean(dout·x̂))``, means over the m values
    of each feature. Test mode (the running statistics are the constants used):
    ``dx = γ·σ⁻¹·dout``, ``drunning_mean = −γσ⁻¹·Σ dout``,
    ``drunning_var = −½·γσ⁻³·Σ dout·(x − μ)``.

    Args:
        dout (jax.Array): upstream gradient, shaped like x.
        cache (BatchnormCache): from :func:`batchnorm_forward`.

    Returns:
        dx (jax.Array): shaped like x.
        dgamma (jax.Array): ``Σ dout·x̂`` over every axis but ``axis``, ``(D,)``.
        dbeta (jax.Array): ``Σ dout`` over every axis but ``axis``, ``(D,)``.
        drunning_mean (jax.Array | None): ``(D,)`` in test mode, None when training.
        drunning_var (jax.Array | None): ``(D,)`` in test mode, None when training.

    Raises:
        TypeError: naming ``cache`` if it is not the forward pass's cache.
        ValueError: naming ``dout`` if it is not shaped like the forward pass's output.
    """
    check_cache(cache, BatchnormCache)
    check_cotangent("dout", dout, cache.x.shape)
    axis, nd = cache.axis, dout.ndim
    axes = _reduce_axes(nd, axis)
    inv_std = cache.inv_std
    x_hat = (cache.x - cache.mean) * inv_std
    gamma = _per_feature(cache.gamma, nd, axis)
    dbeta = jnp.sum(dout, axis=axes)
    dgamma = jnp.sum(dout * x_hat, axis=axes)
    if cache.train:
        m = values_per_feature(dout.shape, axis)
        dx = (gamma * inv_std) * (
            dout - _per_feature(dbeta / m, nd, axis) - x_hat * _per_feature(dgamma / m, nd, axis)
        )
        return dx, dgamma, dbeta, None, None
    scale = (gamma * inv_std).reshape(-1)
    dx = dout * gamma * inv_std
    drunning_mean = -scale * dbeta
    drunning_var = -0.5 * scale * inv_std.reshape(-1) * dgamma
    return dx, dgamma, dbeta, drunning_mean, drunning_var


def batchnorm_backward_graph(dout, cache: BatchnormCache):
    """The step-by-step backward through the computational graph of the training forward
    (x − μ, its square, the variance, √, 1/√, x̂, γ·x̂ + β), node by node. Same result as
    :func:`batchnorm_backward`; kept to show where the closed form comes from.

    In test mode it defers to :func:`batchnorm_backward`.

    Args:
        dout (jax.Array): upstream gradient, shaped like x.
        cache (BatchnormCache): from :func:`batchnorm_forward`.

    Returns:
        dx (jax.Array): shaped like x.
        dgamma (jax.Array): ``Σ dout·x̂`` over every axis but ``axis``, ``(D,)``.
        dbeta (jax.Array): ``Σ dout`` over every axis but ``axis``, ``(D,)``.
        drunning_mean (jax.Array | None): None when training; ``(D,)`` in test mode.
        drunning_var (jax.Array | None): None when training; ``(D,)`` in test mode.

    Raises:
        TypeError: naming ``cache`` if it is not the forward pass's cache.
        ValueError: naming ``dout`` if it is not shaped like the forward pass's output.
    """
    check_cache(cache, BatchnormCache)
    check_cotangent("dout", dout, cache.x.shape)
    if not cache.train:
        return batchnorm_backward(dout, cache)
    axis = cache.axis
    axes = _reduce_axes(dout.ndim, axis)
    m = values_per_feature(dout.shape, axis)
    x_mu = cache.x - cache.mean
    inv_std = cache.inv_std
    std = 1.0 / inv_std
    gamma = _per_feature(cache.gamma, dout.ndim, axis)
    dbeta = jnp.sum(dout, axis=axes)  # out = gx + beta
    dgamma = jnp.sum(dout * x_mu * inv_std, axis=axes)  # gx = gamma * x_hat
    dx_hat = dout * gamma
    dinv_std = jnp.sum(dx_hat * x_mu, axis=axes, keepdims=True)  # x_hat = x_mu * inv_std
    dx_mu = dx_hat * inv_std
    dstd = -dinv_std / jnp.square(std)  # inv_std = 1 / std
    dvar = 0.5 * dstd / std  # std = sqrt(var + eps)
    dsq = jnp.broadcast_to(dvar / m, dout.shape)  # var = mean(sq)
    dx_mu = dx_mu + 2.0 * x_mu * dsq  # sq = x_mu ** 2
    dmean = -jnp.sum(dx_mu, axis=axes, keepdims=True)  # x_mu = x - mean
    dx = dx_mu + dmean / m  # mean = mean(x)
    return dx, dgamma, dbeta, None, None


def running_update(running, batch, momentum: float):
    """``momentum·running + (1 − momentum)·batch``, with no gradient.

    Args:
        running (jax.Array): the running statistic ``(D,)``.
        batch (jax.Array): the batch statistic ``(D,)``; gradients are stopped through it.
        momentum: weight of the old running value, in [0, 1].

    Returns:
        (jax.Array): the new running statistic ``(D,)``, in ``running``'s dtype.
    """
    batch = lax.stop_gradient(batch).astype(running.dtype)
    return momentum * running + (1.0 - momentum) * batch


_batchnorm = with_vjp(batchnorm_forward, batchnorm_backward)


def _with_running_stats(x, gamma, beta, running_mean, running_var, *, train, momentum, eps, axis):
    """Batchnorm over every axis but ``axis`` and the new running statistics: the core of
    :func:`batchnorm` and :func:`spatial_batchnorm`."""
    train = true_or_false("train", train)
    check_batchnorm_args(
        x, gamma, beta, running_mean, running_var, momentum, eps, axis, train=train
    )
    out = _batchnorm(
        x, gamma, beta, running_mean, running_var, train=train, eps=float(eps), axis=axis
    )
    if not train:
        return out, running_mean, running_var
    mean, var = batch_statistics(x, axis)
    return (
        out,
        running_update(running_mean, mean, float(momentum)),
        running_update(running_var, var, float(momentum)),
    )


def batchnorm(
    x: jax.Array,
    gamma: jax.Array,
    beta: jax.Array,
    running_mean: jax.Array,
    running_var: jax.Array,
    *,
    train: bool,
    momentum: float = 0.9,
    eps: float = 1e-5,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Batchnorm of x ``(N, D)`` with a hand-written VJP; gamma, beta, running stats ``(D,)``.

    Returns ``(out, new_running_mean, new_running_var)``; running = momentum·running +
    (1 − momentum)·batch statistic when training, unchanged at test time. At test time an
    empty batch (N = 0) is fine: the output is empty and the running statistics unchanged.

    Args:
        x: input ``(N, D)``.
        gamma: scale ``(D,)``.
        beta: shift ``(D,)``.
        running_mean: running mean ``(D,)``.
        running_var: running variance ``(D,)``.
        train: True to normalise with the batch mean and biased variance (and update the
            running statistics); False to use the running statistics.
        momentum: weight of the old running statistics in their update, in [0, 1].
        eps: added to the variance before the square root, > 0.

    Returns:
        out: ``(N, D)``.
        new_running_mean: ``(D,)``.
        new_running_var: ``(D,)``.

    Raises:
      ValueError: naming ``x`` if it is not ``(N, D)``, or if ``train`` and N = 0 (no batch
        statistics to take; checked from the shape, so under ``jit`` too); naming ``gamma``,
        ``beta``, ``running_mean`` or ``running_var`` if not ``(D,)``; ``momentum`` outside
        [0, 1]; ``eps`` not > 0.
    """
    check_rank("x", x, 2, "(N, D)")
    return _with_running_stats(
        x, gamma, beta, running_mean, running_var, train=train, momentum=momentum, eps=eps, axis=1
    )


def spatial_batchnorm(
    x: jax.Array,
    gamma: jax.Array,
    beta: jax.Array,
    running_mean: jax.Array,
    running_var: jax.Array,
    *,
    train: bool,
    momentum: float = 0.9,
    eps: float = 1e-5,
    layout: str = "NCHW",
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Batchnorm per channel of NCHW x ``(N, C, H, W)``: statistics over N, H and W.

    The same core as :func:`batchnorm` (it normalises over every axis but the channel axis),
    so no transpose to ``(N·H·W, C)`` is needed. ``layout='NHWC'`` for channels-last input.
    Returns ``(out, new_running_mean, new_running_var)``. At test time an empty batch is fine
    (empty output, running statistics unchanged).

    Args:
        x: input ``(N, C, H, W)`` (``layout='NCHW'``) or ``(N, H, W, C)``.
        gamma: scale ``(C,)``.
        beta: shift ``(C,)``.
        running_mean: running mean ``(C,)``.
        running_var: running variance ``(C,)``.
        train: True to normalise with the batch statistics over N, H, W (and update the
            running statistics); False to use the running statistics.
        momentum: weight of the old running statistics in their update, in [0, 1].
        eps: added to the variance before the square root, > 0.
        layout: ``'NCHW'`` or ``'NHWC'``, for x and out.

    Returns:
        out: shaped like x.
        new_running_mean: ``(C,)``.
        new_running_var: ``(C,)``.

    Raises:
      ValueError: naming ``x`` if it is not rank 4, or if ``train`` and N, H or W is 0 (no
        batch statistics to take; checked from the shape, so under ``jit`` too); naming
        ``layout`` if not ``'NCHW'``/``'NHWC'``; ``gamma``, ``beta``, ``running_mean`` or
        ``running_var`` if not ``(C,)``; ``momentum`` outside [0, 1]; ``eps`` not > 0.
    """
    check_choice("layout", layout, LAYOUTS)
    check_rank("x", x, 4, f"({', '.join(layout)})")
    return _with_running_stats(
        x, gamma, beta, running_mean, running_var, train=train, momentum=momentum, eps=eps,
        axis=channel_axis(layout),
    )  # fmt: skip
