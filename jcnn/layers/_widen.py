"""16-bit floats computed in float32 inside a layer.

XLA's CPU code runs elementwise operations on bfloat16 or float16 much more slowly than on
float32: a layer made of many of them (batchnorm and GELU, the pool's running max) runs two to
three times as fast when it converts its input to float32 once and its result back once
(measured at airbench's shapes, forward and backward), and it then rounds once instead of
after every operation. Inside a fused loop the conversions cost no memory traffic on any
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
