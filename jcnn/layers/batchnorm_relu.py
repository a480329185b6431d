"""Batchnorm → relu as one training layer, as the sandwich layers train it: its own pair
(:func:`batchnorm_relu_forward`, :func:`batchnorm_relu_backward`), the closed form of
:mod:`jcnn.layers.batchnorm` on dout masked by the pre-activation, run by compiled kernels
on the CPU (:mod:`jcnn.native`) and by XLA elsewhere.

Backward, with x̂ the normalised input, σ⁻¹ = 1/√(var + eps) and g = dout·[out > 0]:
``dx = γ·σ⁻¹·(g − mean(g) − x̂·mean(g·x̂))``, ``dγ = Σ g·x̂``, ``dβ = Σ g`` (plus the terms of
the batch statistics' own cotangents, when they have any).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jcnn import native
from jcnn.layers._binding import cache_dataclass, with_vjp
from jcnn.layers._checks import check_cache, check_statistics_cotangents, true_or_false
from jcnn.layers.batchnorm import (
    BatchnormCache,
    _per_feature,
    _with_running_stats,
    batch_statistics,
    batchnorm_backward,
    batchnorm_forward,
    check_batchnorm_args,
    running_update,
    values_per_feature,
)
from jcnn.layers.relu import relu


@cache_dataclass(static=("eps", "axis"))
class BatchnormReluCache:
    """What :func:`batchnorm_relu_backward` needs from the forward pass.

    Attributes:
        x: the input.
        mean: batch mean ``(D,)``.
        var: biased batch variance ``(D,)``.
        gamma: the scale ``(D,)``, in x's dtype.
        beta: the shift ``(D,)``, in x's dtype.
        eps: added to the variance (static).
        axis: the feature axis, non-negative (static).
    """

    x: jax.Array
    mean: jax.Array  # batch mean, (D,)
    var: jax.Array  # biased batch variance, (D,)
    gamma: jax.Array
    beta: jax.Array
    eps: float
    axis: int


def _uses_native(x, axis: int) -> bool:
    """The compiled CPU kernels (:mod:`jcnn.native`) take features-last float32, float64 or
    bfloat16 (computed in float32)."""
    return axis % x.ndim == x.ndim - 1 and x.dtype in (jnp.float32, jnp.float64, jnp.bfloat16)


def _batchnorm_relu_xla(x, gamma, beta, *, eps: float, axis: int):
    mean, var = batch_statistics(x, axis)
    out, _ = batchnorm_forward(x, gamma, beta, mean, var, train=False, eps=eps, axis=axis)
    return jnp.maximum(out, 0), mean.astype(x.dtype), var.astype(x.dtype)


def _batchnorm_relu_backward_xla(dout, x, mean, var, gamma, beta, dmean, dvar, *, eps, axis):
    nd = x.ndim
    out, cache = batchnorm_forward(x, gamma, beta, mean, var, train=False, eps=eps, axis=axis)
    cache = BatchnormCache(cache.x, cache.mean, cache.inv_std, gamma, True, axis)
    dx, dgamma, dbeta, _, _ = batchnorm_backward(jnp.where(out > 0, dout, 0), cache)
    m = values_per_feature(dout.shape, axis)
    x_mu = x - cache.mean
    dx = dx + _per_feature(dmean / m, nd, axis) + x_mu * _per_feature(2.0 * dvar / m, nd, axis)
    return dx, dgamma, dbeta


def _features_last(fn):
    """An XLA twin for the kernels, which take the features on the last axis."""
    return lambda *arrays, eps: fn(*arrays, eps=eps, axis=arrays[0].ndim - 1)


def _like_x_and_two_vectors(x, *rest, eps):
    vector = jax.ShapeDtypeStruct(rest[-1].shape, x.dtype)
    return jax.ShapeDtypeStruct(x.shape, x.dtype), vector, vector


def _kernel(target: str, twin) -> native.Kernel:
    """A compiled kernel (jcnn.native) for features-last input. Its derivatives (needed only to
    differentiate the first-order gradient: grad-of-grad, Hessian-vector products) are those
    of its XLA twin, which is written with this module's hand-written pairs."""
    kernel = native.Kernel(
        target,
        native.LIBRARIES["kernels"],
        _features_last(twin),
        _like_x_and_two_vectors,
        {"eps": np.float64},
        multiple_results=True,
    )
    kernel.defjvp_by_fallback()
    return kernel


_FORWARD_KERNEL = _kernel("jcnn_batchnorm_relu_forward", _batchnorm_relu_xla)
_BACKWARD_KERNEL = _kernel("jcnn_batchnorm_relu_backward", _batchnorm_relu_backward_xla)


def batchnorm_relu_forward(
    x: jax.Array, gamma: jax.Array, beta: jax.Array, *, eps: float = 1e-5, axis: int = 1
) -> tuple[tuple[jax.Array, jax.Array, jax.Array], BatchnormReluCache]:
    """``relu(batchnorm(x))`` in training mode, normalised over every axis but ``axis``.

    Returns ``((out, mean, var), cache)``: ``mean`` and ``var`` ``(D,)`` are the batch
    statistics (for the running averages). Features-last float32/float64/bfloat16 input runs
    in one compiled CPU kernel (bfloat16 computed in float32) where :mod:`jcnn.native` is
    available (two cache-blocked passes over x); elsewhere the same math in XLA.

    Args:
        x: the input, features on ``axis`` (D of them).
        gamma: scale ``(D,)``.
        beta: shift ``(D,)``.
        eps: added to the variance before the square root.
        axis: the feature axis.

    Returns:
        ``((out, mean, var), cache)``: out shaped like x; mean and var ``(D,)`` in x's
            dtype; the :class:`BatchnormReluCache` for :func:`batchnorm_relu_backward`.

    Raises:
      ValueError: as :func:`~jcnn.layers.batchnorm.check_batchnorm_args`, naming the
          argument: x not floating or empty, gamma or beta not ``(D,)``, ``eps`` not > 0,
          ``axis`` not an axis of x.
    """
    check_batchnorm_args(x, gamma, beta, None, None, 0.0, eps, axis)
    axis = axis % x.ndim
    gamma_x, beta_x = gamma.astype(x.dtype), beta.astype(x.dtype)
    if _uses_native(x, axis):
        out, mean, var = _FORWARD_KERNEL(x, gamma_x, beta_x, eps=float(eps))
    else:
        out, mean, var = _batchnorm_relu_xla(x, gamma_x, beta_x, eps=eps, axis=axis)
    return (out, mean, var), BatchnormReluCache(x, mean, var, gamma_x, beta_x, eps, axis)


def batchnorm_relu_backward(
    douts: tuple[jax.Array, jax.Array, jax.Array], cache: BatchnormReluCache
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """VJP of :func:`batchnorm_relu_forward` for ``douts = (dout, dmean, dvar)``; returns
    ``(dx, dgamma, dbeta)``. With g = dout where the pre-activation is > 0 (else 0), the
    batchnorm closed form on g, plus the statistics' own terms:
    ``dx = γσ⁻¹(g − mean(g) − x̂·mean(g·x̂)) + dmean/m + 2·dvar·(x − μ)/m``.

    Args:
        douts: ``(dout, dmean, dvar)``: dout shaped like x, dmean and dvar ``(D,)``.
        cache: the :class:`BatchnormReluCache` from :func:`batchnorm_relu_forward`.

    Returns:
        dx: shaped like x.
        dgamma: ``Σ g·x̂`` over every axis but ``axis``, ``(D,)``.
        dbeta: ``Σ g`` over every axis but ``axis``, ``(D,)``.

    Raises:
        TypeError: naming ``cache`` if it is not the forward pass's cache.
        ValueError: naming ``douts``, ``dout``, ``dmean`` or ``dvar`` if it is not shaped
            like the forward pass's outputs.
    """
    check_cache(cache, BatchnormReluCache)
    check_statistics_cotangents(douts, cache.x.shape, cache.axis)
    dout, dmean, dvar = douts
    x, axis = cache.x, cache.axis
    dmean, dvar = dmean.astype(x.dtype), dvar.astype(x.dtype)
    args = (dout, x, cache.mean, cache.var, cache.gamma, cache.beta, dmean, dvar)
    if not _uses_native(x, axis):
        return _batchnorm_relu_backward_xla(*args, eps=cache.eps, axis=axis)
    return tuple(_BACKWARD_KERNEL(*args, eps=float(cache.eps)))


fused_batchnorm_relu = with_vjp(batchnorm_relu_forward, batchnorm_relu_backward)
fused_batchnorm_relu.__doc__ = """``(x, gamma, beta, *, eps, axis) -> (out, mean, var)``:
training-mode batchnorm → relu with the hand-written VJP of :func:`batchnorm_relu_backward`
(the cotangents of the batch statistics included)."""


def batchnorm_relu(x, gamma, beta, running_mean, running_var, *, train, momentum, eps, axis):
    """``relu`` of the batchnorm over every axis but ``axis``, with the running statistics:
    the sandwich layers' core. Training uses :func:`fused_batchnorm_relu` (the pair
    :func:`batchnorm_relu_forward`/:func:`batchnorm_relu_backward`); test mode is the plain
    composition. Returns ``(out, new_running_mean, new_running_var)``.

    Args:
        x (jax.Array): input with the features on ``axis``: ``(N, D)``, or e.g. ``(N, C, H, W)``
            with ``axis=1``; D the size of that axis.
        gamma (jax.Array): scale ``(D,)``.
        beta (jax.Array): shift ``(D,)``.
        running_mean (jax.Array): running mean ``(D,)``.
        running_var (jax.Array): running variance ``(D,)``.
        train (bool): True to use (and fold into the running ones) the batch statistics;
            False to use the running statistics.
        momentum (float): weight of the old running statistics in their update, in [0, 1].
        eps (float): added to the variance before the square root, > 0.
        axis (int): the feature axis.

    Returns:
        (tuple[jax.Array, jax.Array, jax.Array]): ``(out, new_running_mean,
            new_running_var)``: out shaped like x, the running statistics ``(D,)`` (unchanged
            at test time).

    Raises:
      ValueError: as :func:`batchnorm` (:func:`check_batchnorm_args`).
    """
    if not true_or_false("train", train):
        out, mean, var = _with_running_stats(
            x, gamma, beta, running_mean, running_var, train=False, momentum=momentum,
            eps=eps, axis=axis,
        )  # fmt: skip
        return relu(out), mean, var
    check_batchnorm_args(x, gamma, beta, running_mean, running_var, momentum, eps, axis, train=True)
    out, mean, var = fused_batchnorm_relu(x, gamma, beta, eps=float(eps), axis=axis % x.ndim)
    return (
        out,
        running_update(running_mean, mean, float(momentum)),
        running_update(running_var, var, float(momentum)),
    )
