"""Inverted dropout: drop each unit with probability ``rate``, scale survivors by 1/(1−rate)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jcnn.layers._binding import cache_dataclass, with_vjp


@cache_dataclass(static=("rate",))
class DropoutCache:
    keep: jax.Array
    rate: float


def check_rate(rate: float) -> float:
    try:
        rate = float(rate)
    except (TypeError, ValueError):
        raise ValueError(f"rate must be a float in [0, 1), got {rate!r}") from None
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"rate must be in [0, 1) (the probability of dropping), got {rate}")
    return rate


def keep_mask(key: jax.Array, shape: tuple[int, ...], rate: float) -> jax.Array:
    """The boolean mask of kept units; a function of ``key`` alone (shared with the reference)."""
    return jax.random.bernoulli(key, 1.0 - rate, shape)


def dropout_forward(x: jax.Array, key: jax.Array, *, rate: float) -> tuple[jax.Array, DropoutCache]:
    """Training-mode dropout; x any shape."""
    keep = keep_mask(key, x.shape, rate)
    out = jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))
    return out, DropoutCache(keep, rate)


def dropout_backward(dout: jax.Array, cache: DropoutCache):
    """dx = dout·mask/(1−rate); the key gets no gradient."""
    dx = jnp.where(cache.keep, dout / (1.0 - cache.rate), jnp.zeros_like(dout))
    return dx, None


_dropout = with_vjp(dropout_forward, dropout_backward)


def dropout(x: jax.Array, key: jax.Array | None, *, rate: float, train: bool) -> jax.Array:
    """Inverted dropout with a hand-written VJP.

    ``rate`` is the probability of dropping a unit. With ``train=False`` (or ``rate=0``) the
    layer is the identity and ``key`` may be ``None``.
    """
    rate = check_rate(rate)
    if not train or rate == 0.0:
        return x
    if key is None:
        raise ValueError("key must be a jax.random key when train=True and rate > 0")
    return _dropout(x, key, rate=rate)
