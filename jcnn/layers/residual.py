"""Residual connection: a block's output plus the input it skipped (He et al., 2016).

``out = x + skip`` elementwise, no broadcasting: both arrays are the same shape and dtype.
The sum passes its upstream gradient to both operands unchanged::

    dx    = dout
    dskip = dout

which is why deep residual nets train: whatever the block in between does to its own
gradient, ``dout`` reaches the block's input through the skip intact.
"""

from __future__ import annotations

import jax

from jcnn.layers._binding import cache_dataclass, with_vjp
from jcnn.layers._checks import check_cache, check_cotangent, check_floating


@cache_dataclass(static=("shape",))
class ResidualAddCache:
    """What :func:`residual_add_backward` needs from the forward pass: only the output's
    shape, to check dout against (the sum's partial derivatives are 1 whatever its operands).

    Attributes:
        shape: the shape of x, skip and the output (static).
    """

    shape: tuple[int, ...]


def residual_add_forward(x: jax.Array, skip: jax.Array) -> tuple[jax.Array, ResidualAddCache]:
    """out = x + skip, same shape and dtype.

    Args:
        x: the block's output, any shape, floating.
        skip: the block's input carried around it, x's shape and dtype.

    Returns:
        ``(out, cache)``: ``x + skip`` shaped like x, and the (empty)
        :class:`ResidualAddCache`.

    Raises:
        ValueError: naming ``x`` or ``skip`` if it is not a real floating-point array, or
            ``skip`` if its shape or dtype differs from x's (a residual never broadcasts:
            a mismatch is a wiring mistake in the model).
    """
    check_floating("x", x)
    check_floating("skip", skip)
    if tuple(skip.shape) != tuple(x.shape) or skip.dtype != x.dtype:
        raise ValueError(
            f"skip must match x's shape {tuple(x.shape)} and dtype {x.dtype}, "
            f"got {tuple(skip.shape)} {skip.dtype}"
        )
    return x + skip, ResidualAddCache(tuple(x.shape))


def residual_add_backward(dout: jax.Array, cache: ResidualAddCache) -> tuple[jax.Array, jax.Array]:
    """VJP of :func:`residual_add_forward`: ``dx = dskip = dout``.

    Args:
        dout: upstream gradient, shaped like the output.
        cache: the :class:`ResidualAddCache` from :func:`residual_add_forward`.

    Returns:
        ``(dx, dskip)``, both ``dout``.

    Raises:
        TypeError: naming ``cache`` if it is not the forward pass's cache.
        ValueError: naming ``dout`` if it is not shaped like the forward pass's output.
    """
    check_cache(cache, ResidualAddCache)
    check_cotangent("dout", dout, cache.shape)
    return dout, dout


_residual_add = with_vjp(residual_add_forward, residual_add_backward)


def residual_add(x: jax.Array, skip: jax.Array) -> jax.Array:
    """``x + skip`` with a hand-written VJP: the residual connection of a ResNet block.

    Args:
        x: the block's output, any shape, floating.
        skip: the block's input, x's shape and dtype.

    Returns:
        ``x + skip``; its VJP is :func:`residual_add_backward`.

    Raises:
        ValueError: as :func:`residual_add_forward`.
    """
    return _residual_add(x, skip)
