"""Argument checks shared across jcnn: each raises ValueError naming the argument."""

from __future__ import annotations

import math
import numbers
import operator
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np


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


def true_or_false(name: str, value: Any) -> bool:
    """``value`` as a bool: True or False (Python's or NumPy's); anything else, a string such
    as ``'no'`` or a number such as 1, is refused rather than read as true or false: one rule
    for every switch (``train``, ``approximate``, ...)."""
    if not isinstance(value, bool | np.bool_):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return bool(value)


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


def callables(name: str, value: Any) -> list:
    """``value`` (None, a callable or an iterable of callables) as a list of callables."""
    hooks = [] if value is None else [value] if callable(value) else list(value)
    for h in hooks:
        if not callable(h):
            raise ValueError(f"{name} must be a callable or a list of callables, got {h!r}")
    return hooks


def finite_float(name: str, value: Any, *, minimum: float, strict: bool = False) -> float:
    """``value`` as a finite float ``>= minimum`` (``> minimum`` with ``strict``)."""
    what = f"a finite float {'>' if strict else '>='} {minimum:g}"
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be {what}, got {value!r}") from None
    if isinstance(value, bool) or not math.isfinite(v) or v < minimum or (strict and v == minimum):
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return v


def static_number(name: str, value: Any, requirement: str, ok: Callable[[float], bool]) -> float:
    """A layer's hyper-parameter (``eps``, ``momentum``, ``rate``) as a Python float: a real
    number (Python's or a NumPy scalar; not a bool, a string or an array, traced or not: a
    static value decides the program, as ``pad`` or ``stride`` do) for which ``ok`` holds.

    Raises:
      ValueError: naming ``name``, what it must be (``requirement``) and the value given.
    """
    if not isinstance(value, numbers.Real) or isinstance(value, bool | np.bool_):
        raise ValueError(
            f"{name} must be a Python number {requirement} (a static hyper-parameter, not "
            f"an array or a traced value), got {type(value).__name__} {value!r}"
        )
    v = float(value)
    if not (math.isfinite(v) and ok(v)):
        raise ValueError(f"{name} must be {requirement}, got {value!r}")
    return v


def folder(name: str, value: Any) -> Path:
    """``value`` as a Path where a folder is or can be made: not a file, nor below one."""
    try:
        path = Path(value)
    except TypeError:
        raise ValueError(f"{name} must be a path to a folder, got {value!r}") from None
    if path.exists() and not path.is_dir():
        raise ValueError(f"{name}={str(path)!r} is a file, not a folder: choose another path")
    for above in path.absolute().parents:
        if above.exists():
            if not above.is_dir():
                raise ValueError(
                    f"{name}={str(path)!r} cannot be made: {str(above)!r} is a file, not a folder"
                )
            break
    return path


def seed(name: str, value: Any) -> int:
    """``value`` as an int in ``[0, 2**32)``, what both NumPy's and JAX's generators take."""
    v = _int(name, value, "an int in [0, 2**32)")
    if not 0 <= v < 2**32:
        raise ValueError(f"{name} must be an int in [0, 2**32), got {value!r}")
    return v


def labelled_images(model: Any, X: Any, y: Any, xname: str, yname: str) -> tuple[Any, Any]:
    """Host arrays ``(X, y as int32)`` once checked against ``model``: as many labels as
    images, ``X`` shaped ``(N, *model.input_shape)`` with finite numbers, ``y`` integer
    labels in ``[0, model.num_classes)``. ValueError naming ``xname``/``yname`` otherwise."""
    X, y = np.asarray(X), np.asarray(y)
    if X.ndim < 1 or X.shape[0] == 0:
        raise ValueError(f"{xname} is empty (shape {X.shape})")
    if y.ndim != 1:
        raise ValueError(f"{yname} must be a vector of labels (N,), got shape {y.shape}")
    if X.shape[0] != y.shape[0]:
        raise ValueError(
            f"{xname} and {yname} differ in length: {X.shape[0]} images vs {y.shape[0]} labels"
        )
    model.check_input(X, xname)
    if not (np.issubdtype(X.dtype, np.floating) or np.issubdtype(X.dtype, np.integer)):
        raise ValueError(f"{xname} must hold numbers, got dtype {X.dtype}")
    if np.issubdtype(X.dtype, np.floating):
        _check_finite(xname, X)
    if not np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_:
        raise ValueError(f"{yname} must hold integer class labels, got dtype {y.dtype}")
    labels_in_range(yname, y, model.num_classes, "num_classes of the model")
    return X, y.astype(np.int32)


def training_data(
    model: Any, data: Any, keys: tuple[str, ...], settings: Any
) -> tuple[Any, Any, Any, Any]:
    """``X_train, y_train, X_val, y_val`` (the four ``keys``) of the dict ``data``, each pair
    checked by :func:`labelled_images`; an empty validation split is allowed (returned as
    empty arrays) without ``settings.select_best``; a batch of ``settings.batch_size``
    images must fit in memory three times (on the host, on the device, transposed).
    ValueError naming what is missing or wrong otherwise (MemoryLimitError for the batch)."""
    if not isinstance(data, Mapping):
        raise ValueError(f"data must be a dict holding {keys}, got {type(data).__name__}")
    missing = [k for k in keys if k not in data]
    if missing:
        raise ValueError(f"data is missing {missing}: it must hold {list(keys)}")
    X_name, y_name, Xv_name, yv_name = keys
    X, y = labelled_images(model, data[X_name], data[y_name], X_name, y_name)
    batch = (settings.batch_size, *np.shape(X)[1:])  # before a batch is built (rows repeat)
    try:
        check_fits_in_memory(
            f"batch_size={settings.batch_size}",
            {
                "a batch of images": batch,
                "its copy on the device": batch,
                "its copy in the network's layout": batch,
            },
            getattr(model, "dtype", np.float32),  # a model of the user's may not say
        )
    except MemoryLimitError as e:
        e.during = BUILDING_BATCHES
        raise
    if not settings.select_best and np.shape(data[Xv_name])[0] == 0:
        return X, y, np.zeros((0, *np.shape(X)[1:]), X.dtype), np.zeros((0,), np.int32)
    X_val, y_val = labelled_images(model, data[Xv_name], data[yv_name], Xv_name, yv_name)
    return X, y, X_val, y_val


def labels_in_range(name: str, y: Any, num_classes: int, what: str) -> None:
    """ValueError naming ``name``, the range and the first bad index unless every label of the
    host array ``y`` is in ``[0, num_classes)``; ``what`` says where ``num_classes`` comes from."""
    y = np.asarray(y)
    out = (y < 0) | (y >= num_classes)
    if out.any():
        i = int(np.flatnonzero(out)[0])
        raise ValueError(
            f"{name} holds labels outside [0, {num_classes}) ({what}): "
            f"{int(out.sum())} of them, the first is {name}[{i}] = {int(y[i])}"
        )


def _check_finite(name: str, X: np.ndarray, rows: int = 4096) -> None:
    """ValueError if ``X`` holds NaN or inf (checked in blocks of rows: no full-size mask)."""
    bad: list[int] = []
    for start in range(0, X.shape[0], rows):
        block = X[start : start + rows].reshape(min(rows, X.shape[0] - start), -1)
        ok = np.isfinite(block).all(axis=1)
        if not ok.all():
            bad.extend((start + np.flatnonzero(~ok)).tolist())
    if bad:
        raise ValueError(
            f"{name} holds non-finite values (NaN or inf) in {len(bad)} image(s), "
            f"first at index {bad[0]}"
        )


def test_time_augmentation(flip: Any, translate: Any) -> tuple[bool, int]:
    """``(test_time_flip, test_time_translate)`` as a bool and an int >= 0; ValueError
    naming the one that is not."""
    if not isinstance(flip, bool | np.bool_):
        raise ValueError(f"test_time_flip must be True or False, got {flip!r}")
    shift = int(translate)
    if shift != translate or shift < 0:
        raise ValueError(f"test_time_translate must be an int >= 0, got {translate!r}")
    return bool(flip), shift


def epoch_batches(num_train: int, batch_size: int) -> None:
    """``sampling='epoch'`` takes whole minibatches from each epoch's permutation, so it
    needs at least one: ValueError naming ``batch_size`` if the training set is smaller."""
    if num_train < batch_size:
        raise ValueError(
            f"batch_size={batch_size} is larger than the {num_train} training images; epoch "
            f"sampling takes whole minibatches, so use a batch_size of at most {num_train} "
            "or more training images"
        )


def check_count_fits(culprit: str, what: str, count: int, dtype: Any) -> None:
    """Refuse, naming ``culprit``, ``count`` values of ``dtype`` (``what``: e.g.
    ``'weights'``) that need more bytes than are available (MemoryLimitError)."""
    _refuse_over_memory(count, dtype, lambda: f"{culprit}: {count:,} {what} need")


def memory_bytes() -> int | None:
    """The memory a new array may still take, in bytes: the least of the machine's available
    memory (``MemAvailable``: free plus what the kernel can reclaim, as it is when asked)
    and what this process's control group (a container's limit) has left; the physical
    memory where the system says neither; None where it says nothing."""
    found = [n for n in (_meminfo_available(), _cgroup_left()) if n is not None]
    if found:
        return min(found)
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_left() -> int | None:
    """``memory.max − memory.current`` of this process's cgroup (v2), None without a limit."""
    try:
        with open("/proc/self/cgroup") as f:
            path = next(line.split(":", 2)[2].strip() for line in f if line.startswith("0::"))
        folder = os.path.join("/sys/fs/cgroup", path.lstrip("/"))
        with open(os.path.join(folder, "memory.max")) as f:
            limit = f.read().strip()
        with open(os.path.join(folder, "memory.current")) as f:
            used = int(f.read().strip())
    except (OSError, ValueError, StopIteration):
        return None
    return None if limit == "max" else max(int(limit) - used, 0)


def human_bytes(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError  # unreachable


class MemoryLimitError(ValueError):
    """A call whose arrays need more memory than is available (:func:`check_fits_in_memory`);
    ``during``: what was being done, when known (e.g. ``'predicting 100 images at a
    time'``, or :data:`BUILDING_BATCHES`), else ``None``."""

    during: str | None = None


# MemoryLimitError.during of a training batch that cannot fit (before the step is traced).
BUILDING_BATCHES = "building its batches"


def check_fits_in_memory(culprit: str, arrays: dict[str, tuple[int, ...]], dtype: Any) -> None:
    """Refuse, naming ``culprit`` (e.g. ``'pad=1000000'``), a call whose arrays (name ->
    shape, of ``dtype``) need more bytes than are available (:func:`memory_bytes`): such a
    call would build a lazy result that fails only when read, or abort the process."""
    if not all(isinstance(d, int | np.integer) for shape in arrays.values() for d in shape):
        return  # a symbolic dimension (jax.export): no size to compare
    listed = " and ".join(f"{name} {shape}" for name, shape in arrays.items())
    count = sum(math.prod(shape) for shape in arrays.values())
    _refuse_over_memory(count, dtype, lambda: f"{culprit} makes {listed}:")


def _refuse_over_memory(count: int, dtype: Any, said: Callable[[], str]) -> None:
    """MemoryLimitError, ``said()`` first, if ``count`` values of ``dtype`` exceed
    :func:`memory_bytes`."""
    need = count * np.dtype(dtype).itemsize
    check_bytes_fit(need, lambda: f"{said()} {human_bytes(need)} of {np.dtype(dtype).name},")


def check_bytes_fit(need: int, said: Callable[[], str]) -> None:
    """MemoryLimitError, ``said()`` first, if ``need`` bytes exceed :func:`memory_bytes`
    (the one comparison every memory check makes)."""
    limit = memory_bytes()
    if limit is not None and need > limit:
        raise MemoryLimitError(f"{said()} more than the {human_bytes(limit)} of memory available")
