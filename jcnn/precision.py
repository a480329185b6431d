"""Mixed precision: the network's arithmetic in a compute dtype (bfloat16), parameters and
optimiser state in float32.

With ``model.loss(..., compute_dtype=...)`` (:func:`mixed_precision_loss`):
parameters and optimiser state stay float32; inside the loss the floating parameters are
cast to the compute dtype (e.g. bfloat16), so activations and the hand-written backward
passes run in it; the scores are cast back to float32 before the softmax, and the L2 term
uses the float32 parameters. The cast is differentiable, so gradients arrive in float32; the
layer binding already casts every cotangent to its primal's dtype (float32 running
statistics beside bfloat16 activations).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "COMPUTE_DTYPES",
    "cast_floating",
    "mixed_precision_loss",
    "predict_params",
    "resolve_compute_dtype",
]

COMPUTE_DTYPES = ("float32", "bfloat16")


def resolve_compute_dtype(compute_dtype: Any) -> np.dtype | None:
    """``None``/``'float32'`` → None (compute in the parameters' dtype); ``'bfloat16'`` (or
    any floating dtype) → that dtype.

    Args:
      compute_dtype: None, or a dtype or its name (``'float32'``, ``'bfloat16'``, ...).

    Returns:
      None for None or float32, else the floating :class:`numpy.dtype`.

    Raises:
      ValueError: ``compute_dtype`` is not a dtype, or not a floating one.
    """
    if compute_dtype is None:
        return None
    try:
        dt = jnp.dtype(compute_dtype)
    except TypeError:
        raise ValueError(
            f"compute_dtype must be a floating dtype such as {COMPUTE_DTYPES}, "
            f"got {compute_dtype!r}"
        ) from None
    if not jnp.issubdtype(dt, jnp.floating):
        raise ValueError(
            f"compute_dtype must be a floating dtype such as {COMPUTE_DTYPES}, "
            f"got {compute_dtype!r}"
        )
    return None if dt == jnp.float32 else dt


def cast_floating(tree: Any, dtype: Any) -> Any:
    """Floating leaves of ``tree`` cast to ``dtype``; other leaves (ints, keys) untouched.

    Args:
      tree: a pytree of arrays.
      dtype: the floating dtype to cast to.

    Returns:
      A pytree of the same structure; floating leaves have ``dtype``, the others are the
      same objects.
    """

    def cast(x):
        if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating):
            return x.astype(dtype)
        return x

    return jax.tree_util.tree_map(cast, tree)


def mixed_precision_loss(model: Any, compute_dtype: Any):
    """``model.loss`` with the network computed in ``compute_dtype`` (the model's
    ``loss(..., compute_dtype=...)``, whose docstring has the rule).

    Args:
      model: a jcnn model.
      compute_dtype: as for :func:`resolve_compute_dtype`.

    Returns:
      loss (Callable): ``loss(params, state, X, y, *, key=None) -> (loss, new_state)``,
        ``model.loss`` itself for None/float32.

    Raises:
      ValueError: ``compute_dtype`` is not a floating dtype.
    """
    dtype = resolve_compute_dtype(compute_dtype)
    if dtype is None:
        return model.loss
    return functools.partial(model.loss, compute_dtype=dtype)


def predict_params(params: Any, compute_dtype: Any) -> Any:
    """The parameters as the network uses them: cast to ``compute_dtype`` (None: as given).

    Args:
      params: the parameter pytree.
      compute_dtype: as for :func:`resolve_compute_dtype`.

    Returns:
      ``params`` itself for None/float32, else a copy with floating leaves cast.

    Raises:
      ValueError: ``compute_dtype`` is not a floating dtype.
    """

    dtype = resolve_compute_dtype(compute_dtype)
    return params if dtype is None else cast_floating(params, dtype)
