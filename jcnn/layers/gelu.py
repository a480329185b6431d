"""GELU, and batchnorm without a scale followed by GELU as one layer.

GELU (Hendrycks & Gimpel, 2016), exact form: ``gelu(x) = x·Φ(x)`` with Φ the standard normal
CDF, ``Φ(x) = ½(1 + erf(x/√2))``; its derivative is ``Φ(x) + x·φ(x)``, φ the normal density
``exp(−x²/2)/√(2π)``. Tanh form (``approximate=True``): ``½x(1 + tanh u)``,
``u = √(2/π)(x + 0.044715x³)``, derivative ``½(1 + t) + ½x(1 − t²)·√(2/π)(1 + 3·0.044715x²)``
with ``t = tanh u``.

:func:`batchnorm_gelu` is the normalise-then-activate step of the airbench-style nets
(:class:`jcnn.models.AirbenchNet`): batchnorm whose scale is fixed at 1 (only the shift β is
learned), then GELU. Training, with x̂ = (x − μ)·σ⁻¹ over every axis but the feature axis and
``y = x̂ + β``::

    out = gelu(y)
    g   = dout · gelu'(y)
    dβ  = Σ g
    dx  = σ⁻¹·(g − mean(g) − x̂·mean(g·x̂)) + dmean/m + 2·dvar·(x − μ)/m

(the last two terms are the cotangents of the batch statistics the layer also returns, m the
number of values per feature). Test mode uses the running statistics: ``dx = g·σ⁻¹`` and the
running mean and variance get their cotangents too.

A bfloat16 or float16 input is computed in float32 inside both layers, forward and backward
(statistics, normalisation, GELU and its slope), and each result rounded once to the input's
dtype: faster on the CPU and closer to the float32 result than rounding after every
operation.
"""

from __future__ import annotations

import math

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
    check_statistics_cotangents,
    true_or_false,
)
from jcnn.layers._widen import widened
from jcnn.layers._windows import LAYOUTS, channel_axis
from jcnn.layers.batchnorm import (
    _per_feature,
    _reduce_axes,
    batch_statistics,
    check_batchnorm_args,
    running_update,
    values_per_feature,
)

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_TANH_C = 0.044715


def gelu_value_and_slope(x: jax.Array, approximate: bool) -> tuple[jax.Array, jax.Array]:
    """``(gelu(x), gelu'(x))`` elementwise, exact (erf) or tanh form.

    Args:
        x: input of any shape and floating dtype.
        approximate: False for ``x·Φ(x)``, True for the tanh form.

    Returns:
        ``(value, slope)``, each shaped like x.
    """
    if approximate:
        u = _SQRT_2_OVER_PI * (x + _TANH_C * x * x * x)
        t = jnp.tanh(u)
        du = _SQRT_2_OVER_PI * (1.0 + 3.0 * _TANH_C * x * x)
        return 0.5 * x * (1.0 + t), 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du
    cdf = 0.5 * (1.0 + lax.erf(x * (1.0 / math.sqrt(2.0))))
    pdf = jnp.exp(-0.5 * x * x) * (1.0 / math.sqrt(2.0 * math.pi))
    return x * cdf, cdf + x * pdf


@cache_dataclass(static=("approximate",))
class GeluCache:
    """What :func:`gelu_backward` needs from the forward pass.

    Attributes:
        x: the input.
        approximate: whether the tanh form was used (static).
    """

    x: jax.Array
    approximate: bool


def gelu_forward(x: jax.Array, *, approximate: bool = False) -> tuple[jax.Array, GeluCache]:
    """out = gelu(x), any shape.

    Args:
        x: input of any shape and floating dtype.
        approximate: False (default) for the exact ``x·Φ(x)``, True for the tanh form.

    Returns:
        ``(out, cache)``: out shaped like x, and the :class:`GeluCache`.

    Raises:
        ValueError: naming ``x`` if it is not a floating array; ``approximate`` if it is
            not True or False.
    """
    check_floating("x", x)
    approximate = true_or_false("approximate", approximate)
    out = gelu_value_and_slope(widened(x), approximate)[0].astype(x.dtype)
    return out, GeluCache(x, approximate)


def gelu_backward(dout: jax.Array, cache: GeluCache) -> tuple[jax.Array]:
    """dx = dout · gelu'(x), with ``gelu'(x) = Φ(x) + x·φ(x)`` (exact form; module docs for
    the tanh form).

    Args:
        dout: upstream gradient, shaped like x.
        cache: the :class:`GeluCache` from :func:`gelu_forward`.

    Returns:
        ``(dx,)``, dx shaped like x.

    Raises:
        TypeError: naming ``cache`` if it is not the forward pass's cache.
        ValueError: naming ``dout`` if it is not shaped like the forward pass's output.
    """
    check_cache(cache, GeluCache)
    check_cotangent("dout", dout, cache.x.shape)
    slope = gelu_value_and_slope(widened(cache.x), cache.approximate)[1]
    return ((widened(dout) * slope).astype(dout.dtype),)


_gelu = with_vjp(gelu_forward, gelu_backward)


def gelu(x: jax.Array, *, approximate: bool = False) -> jax.Array:
    """GELU with a hand-written VJP.

    Args:
        x: input of any shape and floating dtype.
        approximate: False (default) for the exact ``x·Φ(x)`` (as ``torch.nn.GELU()``), True
            for the tanh form.

    Returns:
        gelu(x), shaped like x; its VJP is :func:`gelu_backward`.

    Raises:
        ValueError: if ``approximate`` is not a bool.
    """
    return _gelu(x, approximate=true_or_false("approximate", approximate))


# ------------------------------------------------------------------ batchnorm (shift) → gelu


@cache_dataclass(static=("train", "eps", "axis", "approximate"))
class BatchnormGeluCache:
    """What :func:`batchnorm_gelu_backward` needs from the forward pass.

    Attributes:
        x: the input.
        beta: the shift ``(D,)``.
        mean: the statistics used, ``(D,)``: the batch mean (train) or the running mean,
            float32 for a bfloat16 or float16 x.
        var: likewise the batch (biased) or running variance ``(D,)``.
        train: whether the batch statistics were used (static).
        eps: added to the variance (static).
        axis: the feature axis (static).
        approximate: GELU's tanh form (static).
    """

    x: jax.Array
    beta: jax.Array
    mean: jax.Array
    var: jax.Array
    train: bool
    eps: float
    axis: int
    approximate: bool


def batchnorm_gelu_forward(
    x: jax.Array,
    beta: jax.Array,
    running_mean: jax.Array,
    running_var: jax.Array,
    *,
    train: bool,
    eps: float,
    axis: int,
    approximate: bool = False,
) -> tuple[tuple[jax.Array, jax.Array, jax.Array], BatchnormGeluCache]:
    """``gelu((x − μ)/√(σ² + eps) + β)`` over every axis but ``axis``.

    Args:
        x: the input, features on ``axis`` (D of them).
        beta: shift ``(D,)``.
        running_mean: ``(D,)``, used when not ``train``.
        running_var: ``(D,)``, used when not ``train``.
        train: True to normalise with the batch statistics.
        eps: added to the variance before the square root.
        axis: the feature axis.
        approximate: GELU's tanh form.

    Returns:
        ``((out, mean, var), cache)``: out shaped like x; mean and var ``(D,)`` the statistics
            used (the batch's when training), in x's dtype; the :class:`BatchnormGeluCache`.

    Raises:
        ValueError: as :func:`~jcnn.layers.batchnorm.check_batchnorm_args` (``x``, ``beta``,
            the running statistics, ``eps``, ``axis``, ``train``); ``approximate`` if it is
            not True or False.
    """
    check_batchnorm_args(x, None, beta, running_mean, running_var, 0.0, eps, axis, train=train)
    train, approximate = bool(train), true_or_false("approximate", approximate)
    axis = axis % x.ndim
    xw = widened(x)  # 16-bit input: computed in float32, the output rounded once
    if train:
        mean, var = batch_statistics(xw, axis)
    else:
        mean, var = running_mean.astype(xw.dtype), running_var.astype(xw.dtype)
    y = _normalised(xw, mean, var, eps, axis) + _per_feature(beta.astype(xw.dtype), x.ndim, axis)
    out = gelu_value_and_slope(y, approximate)[0].astype(x.dtype)
    cache = BatchnormGeluCache(x, beta, mean, var, train, float(eps), axis, approximate)
    return (out, mean.astype(x.dtype), var.astype(x.dtype)), cache


def _normalised(x, mean, var, eps, axis):
    nd = x.ndim
    return (x - _per_feature(mean, nd, axis)) * _per_feature(lax.rsqrt(var + eps), nd, axis)


def batchnorm_gelu_backward(
    douts: tuple[jax.Array, jax.Array, jax.Array], cache: BatchnormGeluCache
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """VJP of :func:`batchnorm_gelu_forward` for ``douts = (dout, dmean, dvar)`` (module docs).

    Args:
        douts: ``(dout, dmean, dvar)``: dout shaped like x; dmean, dvar ``(D,)``, the
            cotangents of the returned statistics.
        cache: the :class:`BatchnormGeluCache` from :func:`batchnorm_gelu_forward`.

    Returns:
        ``(dx, dbeta, drunning_mean, drunning_var)``: dx shaped like x, the rest ``(D,)``;
            when training the running statistics were not used and get zeros. In test mode
            ``drunning_mean = dmean − Σ g·σ⁻¹`` and
            ``drunning_var = dvar − ½·Σ g·(x − μ)·σ⁻³``.

    Raises:
        TypeError: naming ``cache`` if it is not the forward pass's cache.
        ValueError: naming ``douts``, ``dout``, ``dmean`` or ``dvar`` if it is not shaped
            like the forward pass's outputs.
    """
    check_cache(cache, BatchnormGeluCache)
    check_statistics_cotangents(douts, cache.x.shape, cache.axis)
    dout, dmean, dvar = douts
    x, axis = widened(cache.x), cache.axis
    dout = widened(dout)
    nd, axes = x.ndim, _reduce_axes(x.ndim, axis)
    inv_std = lax.rsqrt(cache.var + cache.eps)
    xhat = _normalised(x, cache.mean, cache.var, cache.eps, axis)
    y = xhat + _per_feature(cache.beta.astype(x.dtype), nd, axis)
    g = dout * gelu_value_and_slope(y, cache.approximate)[1]
    dbeta = jnp.sum(g, axis=axes)
    dmean, dvar = dmean.astype(x.dtype), dvar.astype(x.dtype)
    if cache.train:
        m = values_per_feature(x.shape, axis)
        mean_g = dbeta / m
        mean_gx = jnp.sum(g * xhat, axis=axes) / m
        dx = _per_feature(inv_std, nd, axis) * (
            g - _per_feature(mean_g, nd, axis) - xhat * _per_feature(mean_gx, nd, axis)
        )
        x_mu = x - _per_feature(cache.mean, nd, axis)
        dx = dx + _per_feature(dmean / m, nd, axis) + x_mu * _per_feature(2.0 * dvar / m, nd, axis)
        zeros = jnp.zeros_like(cache.mean)
        return dx.astype(cache.x.dtype), dbeta.astype(cache.beta.dtype), zeros, zeros
    dx = g * _per_feature(inv_std, nd, axis)
    drm = dmean - jnp.sum(dx, axis=axes)
    drv = dvar - 0.5 * jnp.sum(dx * xhat, axis=axes) * inv_std
    return dx.astype(cache.x.dtype), dbeta.astype(cache.beta.dtype), drm, drv


_batchnorm_gelu = with_vjp(batchnorm_gelu_forward, batchnorm_gelu_backward)


def batchnorm_gelu(
    x: jax.Array,
    beta: jax.Array,
    running_mean: jax.Array,
    running_var: jax.Array,
    *,
    train: bool,
    momentum: float = 0.9,
    eps: float = 1e-5,
    layout: str = "NCHW",
    approximate: bool = False,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Batchnorm with its scale fixed at 1 (shift ``beta`` only), then GELU, per channel of
    rank-4 input (``layout``) or per feature of ``(N, D)`` input.

    Args:
        x: ``(N, C, H, W)`` (``layout='NCHW'``), ``(N, H, W, C)`` (``'NHWC'``) or ``(N, D)``.
        beta: the shift ``(C,)``.
        running_mean: running mean ``(C,)``.
        running_var: running variance ``(C,)``.
        train: True to normalise with the batch statistics (biased variance) and fold them
            into the running ones; False to use the running statistics.
        momentum: weight of the old running statistics in their update, in [0, 1]
            (``running = momentum·running + (1 − momentum)·batch``).
        eps: added to the variance before the square root, > 0.
        layout: ``'NCHW'`` or ``'NHWC'`` for rank-4 x (ignored for ``(N, D)``).
        approximate: GELU's tanh form instead of the exact one.

    Returns:
        ``(out, new_running_mean, new_running_var)``: out shaped like x; the running
            statistics ``(C,)`` (unchanged at test time). The VJP is
            :func:`batchnorm_gelu_backward`.

    Raises:
        ValueError: naming ``x`` if not rank 2 or 4, or empty when training; ``layout``;
            ``beta``, ``running_mean``, ``running_var`` if not ``(C,)``; ``momentum`` outside
            [0, 1]; ``eps`` not > 0; ``approximate`` not a bool.
    """
    check_choice("layout", layout, LAYOUTS)
    check_array("x", x)
    if x.ndim not in (2, 4):
        check_rank("x", x, 4, f"({', '.join(layout)}) or (N, D)")
    axis = 1 if x.ndim == 2 else channel_axis(layout)
    train = true_or_false("train", train)
    check_batchnorm_args(x, None, beta, running_mean, running_var, momentum, eps, axis, train=train)
    approximate = true_or_false("approximate", approximate)
    out, mean, var = _batchnorm_gelu(
        x, beta, running_mean, running_var, train=train, eps=float(eps), axis=axis,
        approximate=approximate,
    )  # fmt: skip
    if not train:
        return out, running_mean, running_var
    return (
        out,
        running_update(running_mean, mean, float(momentum)),
        running_update(running_var, var, float(momentum)),
    )
