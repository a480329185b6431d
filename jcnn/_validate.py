"""Argument checks shared across jcnn: each raises ValueError naming the argument."""

from __future__ import annotations

import operator
from typing import Any


def positive_int(name: str, value: Any) -> int:
    """``value`` as a Python int > 0 (bools refused)."""
    v = _int(name, value, "a positive int")
    if v <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return v


def nonnegative_int(name: str, value: Any) -> int:
    """``value`` as a Python int >= 0 (bools refused)."""
    v = _int(name, value, "a non-negative int")
    if v < 0:
        raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    return v


def choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    """``value`` if it is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def _int(name: str, value: Any, what: str) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be {what}, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be {what}, got {value!r}") from None
