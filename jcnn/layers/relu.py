"""Rectified linear unit."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jcnn.layers._binding import cache_dataclass, with_vjp
from jcnn.layers._checks import check_cache, check_cotangent, check_floating


@cache_dataclass()
class ReluCache:
    """What :func:`relu_backward` needs from the forward pass.

    Attributes:
        out: the forward output ``max(x, 0)``, shaped like x; its positive entries mark where
            x > 0.
    """

    out: jax.Array


def relu_forward(x: jax.Array) -> tuple[jax.Array, ReluCache]:
    """out = max(x, 0), any shape.

    Args:
        x: input of any shape and floating dtype.

    Returns:
        ``(out, cache)``: ``out = max(x, 0)`` shaped like x, and the :class:`ReluCache` for
            :func:`relu_backward`.

    Raises:
        ValueError: naming ``x`` if it is not a real floating-point array.
    """
    check_floating("x", x)
    out = jnp.maximum(x, 0)
    return out, ReluCache(out)


def relu_backward(dout: jax.Array, cache: ReluCache):
    """dx = dout where x > 0, else 0.

    Backward: ``dx = dout · [x > 0]`` (the mask is read from the saved output, so the
    gradient at exactly 0 is 0).

    Args:
        dout: upstream gradient, shaped like x (and out).
        cache: the :class:`ReluCache` from :func:`relu_forward`.

    Returns:
        (tuple[jax.Array]): ``(dx,)``, a 1-tuple holding dx, shaped like x.

    Raises:
        TypeError: naming ``cache`` if it is not the forward pass's cache.
        ValueError: naming ``dout`` if it is not shaped like the forward pass's output.
    """
    check_cache(cache, ReluCache)
    check_cotangent("dout", dout, cache.out.shape)
    return (jnp.where(cache.out > 0, dout, jnp.zeros_like(dout)),)


_relu = with_vjp(relu_forward, relu_backward)


def relu(x: jax.Array) -> jax.Array:
    """ReLU with a hand-written VJP (the gradient at exactly 0 is 0).

    Args:
        x: input of any shape and floating dtype.

    Returns:
        ``max(x, 0)``, shaped like x; its VJP is :func:`relu_backward`.
    """
    return _relu(x)
