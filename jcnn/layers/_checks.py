"""Argument checks shared by the layers: raised at trace time, before any work."""

from __future__ import annotations

from typing import Any

from jcnn._validate import choice as check_choice
from jcnn._validate import labels_in_range, nonnegative_int, positive_int

__all__ = [
    "check_choice",
    "check_floating",
    "check_labels",
    "check_rank",
    "check_shape",
    "nonnegative_int",
    "positive_int",
]


def check_rank(name: str, x: Any, ndim: int, layout: str = "") -> None:
    if x.ndim != ndim:
        what = f" {layout}" if layout else ""
        raise ValueError(f"{name} must have rank {ndim}{what}, got shape {tuple(x.shape)}")


def check_shape(name: str, x: Any, shape: tuple[int, ...], why: str = "") -> None:
    if tuple(x.shape) != tuple(shape):
        extra = f" ({why})" if why else ""
        raise ValueError(f"{name} must have shape {tuple(shape)}{extra}, got {tuple(x.shape)}")


def check_floating(name: str, x: Any) -> None:
    import jax.numpy as jnp

    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"{name} must be a floating-point array, got dtype {x.dtype}")


def check_labels(scores: Any, y: Any) -> None:
    """``scores (N, K)`` with N, K >= 1 and integer labels ``y (N,)``; when ``y`` is concrete
    (not a tracer), every label in ``[0, K)``. ValueError naming the argument otherwise.

    Shapes and dtypes are static, so they are checked under ``jit`` too; the label values only
    when they are known while tracing (a traced ``y`` is checked by the caller's data path).
    """
    import jax
    import jax.numpy as jnp

    check_rank("scores", scores, 2, "(N, num_classes)")
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
