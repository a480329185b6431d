"""Argument checks shared by the layers: raised at trace time, before any work."""

from __future__ import annotations

import functools
from typing import Any

from jcnn._validate import (
    check_fits_in_memory,
    labels_in_range,
    nonnegative_int,
    positive_int,
    static_number,
    true_or_false,
)
from jcnn._validate import choice as check_choice

__all__ = [
    "check_array",
    "check_cache",
    "check_choice",
    "check_cotangent",
    "check_fits_in_memory",
    "check_floating",
    "check_labels",
    "check_prng_key",
    "check_rank",
    "check_shape",
    "check_statistics_cotangents",
    "nonnegative_int",
    "positive_int",
    "static_number",
    "true_or_false",
]


def check_array(name: str, x: Any) -> None:
    """A JAX or NumPy array (or a tracer): a list, a scalar or None is refused, naming it."""
    if not (hasattr(x, "shape") and hasattr(x, "dtype") and hasattr(x, "ndim")):
        raise ValueError(
            f"{name} must be a JAX or NumPy array, got {type(x).__name__}; convert it first, "
            f"e.g. jnp.asarray({name}, jnp.float32)"
        )


def check_cache(cache: Any, cache_type: type) -> None:
    """TypeError naming ``cache`` unless it is the ``cache_type`` a forward pass returned."""
    if not isinstance(cache, cache_type):
        raise TypeError(
            f"cache must be the {cache_type.__name__} the forward pass returned, "
            f"got {type(cache).__name__}"
        )


def check_cotangent(
    name: str, dout: Any, shape: tuple[int, ...], dtype: Any = None, why: str = ""
) -> None:
    """A backward pass's upstream gradient: shaped exactly like the forward pass's output (a
    gradient of another shape would broadcast into a wrong result) and real floating-point, in
    ``dtype`` when one is given.

    Raises:
        ValueError: naming ``name`` with the shape (and dtype) wanted and those got.
    """
    import jax.numpy as jnp

    got = tuple(getattr(dout, "shape", ()))
    got_dtype = getattr(dout, "dtype", None)
    floating = got_dtype is not None and jnp.issubdtype(got_dtype, jnp.floating)
    if got != tuple(shape) or not floating or (dtype is not None and got_dtype != dtype):
        what = f" in {dtype}" if dtype is not None else " (floating-point)"
        extra = f" ({why})" if why else ""
        raise ValueError(
            f"{name} must be shaped like the forward pass's output{extra}, {tuple(shape)}{what}, "
            f"got {got} in {got_dtype if got_dtype is not None else type(dout).__name__}"
        )


def check_statistics_cotangents(douts: Any, shape: tuple[int, ...], axis: int) -> None:
    """The cotangents of a fused batchnorm's ``(out, mean, var)``: ``douts = (dout, dmean,
    dvar)``, dout shaped like x (``shape``), dmean and dvar ``(D,)`` for the D features on
    ``axis``; ValueError naming what is wrong."""
    if not isinstance(douts, (tuple, list)) or len(douts) != 3:
        raise ValueError(
            f"douts must be the tuple (dout, dmean, dvar) of the output's and the batch "
            f"statistics' gradients, got {type(douts).__name__}"
        )
    dout, dmean, dvar = douts
    check_cotangent("dout", dout, shape)
    check_cotangent("dmean", dmean, (shape[axis],), why="one per feature")
    check_cotangent("dvar", dvar, (shape[axis],), why="one per feature")


def check_rank(name: str, x: Any, ndim: int, layout: str = "") -> None:
    check_array(name, x)
    if x.ndim != ndim:
        what = f" {layout}" if layout else ""
        raise ValueError(f"{name} must have rank {ndim}{what}, got shape {tuple(x.shape)}")


def check_shape(name: str, x: Any, shape: tuple[int, ...], why: str = "") -> None:
    check_array(name, x)
    if tuple(x.shape) != tuple(shape):
        extra = f" ({why})" if why else ""
        raise ValueError(f"{name} must have shape {tuple(shape)}{extra}, got {tuple(x.shape)}")


def check_floating(name: str, x: Any) -> None:
    """Every layer's one input rule for arrays of values (not labels or keys): a real
    floating-point dtype (float16, bfloat16, float32, float64). Integers would be normalised,
    averaged or pooled in integer arithmetic, and complex numbers compared lexicographically,
    silently giving wrong numbers; so they are refused, naming the argument."""
    import jax.numpy as jnp

    check_array(name, x)
    dtype = x.dtype
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(
            f"{name} must be a real floating-point array (float16, bfloat16, float32 or "
            f"float64), got dtype {dtype}; cast it first, e.g. {name}.astype(jnp.float32)"
        )


def check_labels(scores: Any, y: Any) -> None:
    """``scores (N, K)`` with N, K >= 1 and integer labels ``y (N,)``; when ``y`` is concrete
    (not a tracer), every label in ``[0, K)``. ValueError naming the argument otherwise.

    Shapes and dtypes are static, so they are checked under ``jit`` too; the label values only
    when they are known while tracing (a traced ``y`` is checked by the caller's data path).
    """
    import jax
    import jax.numpy as jnp

    check_rank("scores", scores, 2, "(N, num_classes)")
    check_floating("scores", scores)
    check_rank("y", y, 1, "(N,)")
    n, k = scores.shape
    if n == 0:
        raise ValueError(
            f"scores is an empty batch (shape {tuple(scores.shape)}): the mean loss over "
            "no examples is undefined"
        )
    if k == 0:
        raise ValueError(f"scores has no classes (shape {tuple(scores.shape)})")
    if y.shape[0] != n:
        raise ValueError(
            f"y has {y.shape[0]} labels but scores has {n} rows "
            f"(scores {tuple(scores.shape)}, y {tuple(y.shape)})"
        )
    if not jnp.issubdtype(y.dtype, jnp.integer):
        raise ValueError(f"y must hold integer class labels, got dtype {y.dtype}")
    if not isinstance(y, jax.core.Tracer):
        labels_in_range("y", y, k, f"the {k} classes of scores")


def _default_prng_impl() -> str:
    import jax

    return jax.config.jax_default_prng_impl  # type: ignore[attr-defined]


@functools.cache
def _raw_key_shape(impl: str) -> tuple[int, ...]:
    """The shape of a legacy ``jax.random.PRNGKey`` under the default implementation ``impl``."""
    import jax

    return tuple(jax.eval_shape(jax.random.PRNGKey, 0).shape)


def check_prng_key(name: str, key: Any, why: str = "") -> None:
    """ValueError naming ``name`` unless ``key`` is one JAX PRNG key: a typed key
    (``jax.random.key(seed)``, shape ``()``) or a legacy raw key (``jax.random.PRNGKey(seed)``,
    uint32 of shape ``(2,)`` for the default threefry implementation), concrete or traced,
    e.g. ``jax.random.fold_in(key, k)``. Ints, None and batches of keys are refused."""
    import jax
    import numpy as np

    dtype, shape = getattr(key, "dtype", None), getattr(key, "shape", None)
    if dtype is not None and shape is not None:
        shape = tuple(shape)
        if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
            if shape == ():
                return
        elif dtype == np.uint32 and shape == _raw_key_shape(_default_prng_impl()):
            return
        got = f"an array of dtype {dtype} and shape {shape}"
    else:
        got = f"{key!r} ({type(key).__name__})"
    raise ValueError(
        f"{name} must be a single JAX PRNG key (jax.random.key(seed), or a legacy uint32 "
        f"jax.random.PRNGKey(seed)){why}, got {got}"
    )
