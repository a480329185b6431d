"""16-bit floats computed in float32 inside a layer.

XLA's CPU backend computes an elementwise operation on bfloat16 or float16 by converting each
operand to float32 and the result back, and vectorises that poorly: a layer made of many such
operations (batchnorm and GELU, the pool's running max) runs two to three times as fast when it
converts its input to float32 once and its result back once, and it then rounds once instead
of after every operation. Inside a fused loop the conversions cost no memory traffic on any
backend: the arrays stay 16-bit in memory.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_NARROW = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


def widened(x: jax.Array) -> jax.Array:
    """``x`` as float32 if it is bfloat16 or float16, else ``x`` itself.

    Args:
        x: an array.

    Returns:
        ``x.astype(float32)`` for a 16-bit float, otherwise ``x`` unchanged.
    """
    return x.astype(jnp.float32) if x.dtype in _NARROW else x
