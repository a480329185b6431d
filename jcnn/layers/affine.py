"""Fully connected layer: ``out = x.reshape(N, D) @ w + b``."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jcnn.layers._binding import cache_dataclass, with_vjp
from jcnn.layers._checks import (
    check_cache,
    check_cotangent,
    check_floating,
    check_rank,
    check_shape,
)


@cache_dataclass()
class AffineCache:
    """What :func:`affine_backward` needs from the forward pass.

    Attributes:
        x: the input, ``(N, d1, ..., dk)``.
        w: the weights, ``(D, M)``.
    """

    x: jax.Array
    w: jax.Array


def _check(x, w, b) -> None:
    for name, v in (("x", x), ("w", w), ("b", b)):
        check_floating(name, v)
    if x.ndim < 2:
        raise ValueError(f"x must have shape (N, d1, ..., dk), got {tuple(x.shape)}")
    check_rank("w", w, 2, "(D, M)")
    d = math.prod(x.shape[1:])
    if w.shape[0] != d:
        raise ValueError(
            f"w has {w.shape[0]} rows but x {tuple(x.shape)} flattens to D = {d} features"
        )
    check_shape("b", b, (w.shape[1],), "one bias per output column of w")


def affine_forward(x: jax.Array, w: jax.Array, b: jax.Array) -> tuple[jax.Array, AffineCache]:
    """x ``(N, d1..dk)``, w ``(D, M)``, b ``(M,)`` -> out ``(N, M)``.

    Args:
        x: input ``(N, d1, ..., dk)``, flattened to ``(N, D)`` with ``D = d1·...·dk``.
        w: weights ``(D, M)``.
        b: biases ``(M,)``.

    Returns:
        ``(out, cache)``: ``out = x.reshape(N, D) @ w + b`` of shape ``(N, M)``, and the
            :class:`AffineCache` for :func:`affine_backward`.

    Raises:
        ValueError: naming ``x`` if it has rank < 2; naming ``w`` if it is not rank 2, or if its
            rows differ from D; naming ``b`` if it is not ``(M,)``.
    """
    _check(x, w, b)
    out = x.reshape(x.shape[0], w.shape[0]) @ w + b  # not -1: a batch may be empty
    return out, AffineCache(x, w)


def affine_backward(dout: jax.Array, cache: AffineCache):
    """dx = dout·wᵀ (reshaped like x), dw = xᵀ·dout, db = Σₙ dout.

    Args:
        dout: upstream gradient ``(N, M)``.
        cache: the :class:`AffineCache` from :func:`affine_forward`.

    Returns:
        dx (jax.Array): ``dout @ w.T`` reshaped to x's shape ``(N, d1, ..., dk)``.
        dw (jax.Array): ``x.reshape(N, D).T @ dout``, shape ``(D, M)``.
        db (jax.Array): ``Σₙ dout``, shape ``(M,)``.

        All three in one dtype, that of x, w and dout promoted together: a lower-precision
        dout (float16 after a float32 forward) gives no lower-precision gradient.

    Raises:
        TypeError: naming ``cache`` if it is not the forward pass's cache.
        ValueError: naming ``dout`` if it is not shaped like the forward pass's output;
            naming ``cache.x`` or ``cache.w`` if they are not floating point.
    """
    check_cache(cache, AffineCache)
    x, w = cache.x, cache.w
    check_floating("cache.x", x)
    check_floating("cache.w", w)
    check_cotangent("dout", dout, (x.shape[0], w.shape[1]))
    dx = (dout @ w.T).reshape(x.shape)
    dw = x.reshape(x.shape[0], w.shape[0]).T @ dout
    db = jnp.sum(dout, axis=0, dtype=jnp.result_type(dout, x, w))
    return dx, dw, db


_affine = with_vjp(affine_forward, affine_backward)


def affine(x: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
    """Affine layer with a hand-written VJP. x ``(N, d1..dk)``, w ``(D, M)``, b ``(M,)``.

    Args:
        x: input ``(N, d1, ..., dk)``, flattened to ``(N, D)`` with ``D = d1·...·dk``.
        w: weights ``(D, M)``.
        b: biases ``(M,)``.

    Returns:
        ``x.reshape(N, D) @ w + b``, shape ``(N, M)``; its VJP is :func:`affine_backward`.

    Raises:
        ValueError: as :func:`affine_forward` (x of rank < 2, w not ``(D, M)``, b not ``(M,)``).
    """
    return _affine(x, w, b)
