"""Fully connected layer: ``out = x.reshape(N, D) @ w + b``."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jcnn.layers._binding import cache_dataclass, with_vjp
from jcnn.layers._checks import check_rank, check_shape


@cache_dataclass()
class AffineCache:
    x: jax.Array
    w: jax.Array


def _check(x, w, b) -> None:
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
    """x ``(N, d1..dk)``, w ``(D, M)``, b ``(M,)`` -> out ``(N, M)``."""
    _check(x, w, b)
    out = x.reshape(x.shape[0], -1) @ w + b
    return out, AffineCache(x, w)


def affine_backward(dout: jax.Array, cache: AffineCache):
    """dx = dout·wᵀ (reshaped like x), dw = xᵀ·dout, db = Σₙ dout."""
    x, w = cache.x, cache.w
    dx = (dout @ w.T).reshape(x.shape)
    dw = x.reshape(x.shape[0], -1).T @ dout
    db = jnp.sum(dout, axis=0)
    return dx, dw, db


_affine = with_vjp(affine_forward, affine_backward)


def affine(x: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
    """Affine layer with a hand-written VJP. x ``(N, d1..dk)``, w ``(D, M)``, b ``(M,)``."""
    return _affine(x, w, b)
