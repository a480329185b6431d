"""Inverted dropout: drop each unit with probability ``rate``, scale survivors by 1/(1−rate)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jcnn.layers._binding import cache_dataclass, with_vjp
from jcnn.layers._checks import (
    check_cache,
    check_cotangent,
    check_floating,
    check_prng_key,
    static_number,
    true_or_false,
)


@cache_dataclass(static=("rate",))
class DropoutCache:
    """What :func:`dropout_backward` needs from the forward pass.

    Attributes:
        keep: boolean mask of the kept units, shaped like x.
        rate: the probability of dropping a unit (static).
    """

    keep: jax.Array
    rate: float


def check_rate(rate: float) -> float:
    """``rate`` as a float in [0, 1), or ValueError naming it (shared with the reference).

    Args:
        rate: the probability of dropping a unit; anything ``float()`` accepts.

    Returns:
        ``float(rate)``.

    Raises:
        ValueError: naming ``rate`` if it is not a Python number in [0, 1).
    """
    return static_number(
        "rate", rate, "in [0, 1) (the probability of dropping)", lambda v: 0.0 <= v < 1.0
    )


def keep_mask(key: jax.Array, shape: tuple[int, ...], rate: float) -> jax.Array:
    """The boolean mask of kept units; a function of ``key`` alone (shared with the reference).

    Args:
        key: one JAX PRNG key.
        shape: the shape of the mask (that of x).
        rate: the probability of dropping a unit; each unit is kept with probability
            ``1 − rate``.

    Returns:
        A boolean array of shape ``shape``, True where the unit is kept.
    """
    return jax.random.bernoulli(key, 1.0 - rate, shape)


def check_dropout_key(key) -> None:
    """ValueError naming ``key`` unless it is one JAX PRNG key (what training with a rate > 0
    needs; shared with the reference).

    Args:
        key (jax.Array): the key to check: a typed key (``jax.random.key(seed)``, shape ``()``)
            or a legacy uint32 ``jax.random.PRNGKey(seed)``, concrete or traced.

    Returns:
        Nothing; the check only raises.

    Raises:
        ValueError: naming ``key`` if it is not one PRNG key (an int, None, a batch of keys, a
            uint32 array of the wrong shape), judged from its dtype and shape.
    """
    check_prng_key("key", key, " when train=True and rate > 0")


def dropout_forward(x: jax.Array, key: jax.Array, *, rate: float) -> tuple[jax.Array, DropoutCache]:
    """Training-mode dropout; x any shape.

    Args:
        x: input of any shape and floating dtype.
        key: one JAX PRNG key; the mask is a function of it alone (:func:`keep_mask`).
        rate: the probability of dropping a unit, a float in [0, 1).

    Returns:
        ``(out, cache)``: ``out = x·mask/(1 − rate)`` shaped like x, and the
            :class:`DropoutCache` for :func:`dropout_backward`.

    Raises:
      ValueError: naming ``rate`` if it is not a float in [0, 1) (:func:`check_rate`);
        naming ``x`` if it is not a real floating-point array; naming ``key`` if it is not
        one JAX PRNG key (:func:`check_dropout_key`).
    """
    rate = check_rate(rate)
    check_floating("x", x)
    check_dropout_key(key)
    keep = keep_mask(key, x.shape, rate)
    out = jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))
    return out, DropoutCache(keep, rate)


def dropout_backward(dout: jax.Array, cache: DropoutCache):
    """dx = dout·mask/(1−rate); the key gets no gradient.

    Args:
        dout: upstream gradient, shaped like x.
        cache: the :class:`DropoutCache` from :func:`dropout_forward`.

    Returns:
        dx (jax.Array): ``dout·mask/(1 − rate)``, shaped like x.
        dkey (None): None: the key gets no gradient.

    Raises:
        TypeError: naming ``cache`` if it is not the forward pass's cache.
        ValueError: naming ``dout`` if it is not shaped like the forward pass's output.
    """
    check_cache(cache, DropoutCache)
    check_cotangent("dout", dout, cache.keep.shape)
    dx = jnp.where(cache.keep, dout / (1.0 - cache.rate), jnp.zeros_like(dout))
    return dx, None


_dropout = with_vjp(dropout_forward, dropout_backward)


def dropout(x: jax.Array, key: jax.Array | None, *, rate: float, train: bool) -> jax.Array:
    """Inverted dropout with a hand-written VJP.

    ``rate`` is the probability of dropping a unit. With ``train=False`` (or ``rate=0``) the
    layer is the identity and ``key`` is not looked at (it may be ``None``). Otherwise ``key``
    is one JAX PRNG key, concrete or traced: ``jax.random.key(seed)``, a legacy
    ``jax.random.PRNGKey(seed)``, or one derived from them (``jax.random.fold_in(key, k)``).

    Args:
        x: input of any shape and floating dtype.
        key: one JAX PRNG key when training with ``rate > 0``; otherwise ignored (may be None).
        rate: the probability of dropping a unit, a float in [0, 1).
        train: True to drop units (training); False for the identity (test time).

    Returns:
        Shaped like x: ``x·mask/(1 − rate)`` when training with ``rate > 0``, else x itself.
            The VJP is :func:`dropout_backward`.

    Raises:
      ValueError: naming ``rate`` if it is not a float in [0, 1); naming ``key`` if training
        with ``rate > 0`` and ``key`` is not one PRNG key (an int, None, a batch of keys, a
        uint32 array of the wrong shape), checked from its dtype and shape, so under ``jit``
        too.
    """
    rate = check_rate(rate)
    check_floating("x", x)
    if not true_or_false("train", train) or rate == 0.0:
        return x
    check_dropout_key(key)
    return _dropout(x, key, rate=rate)
