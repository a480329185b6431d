"""Gradient checks run in float64; enable it before any test builds an array."""

import jax

jax.config.update("jax_enable_x64", True)
