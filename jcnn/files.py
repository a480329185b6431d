"""Files jcnn writes: atomic writes, checksums, and JSON with one policy for odd values.

Every file jcnn or its apps write (checkpoints and their sidecars, ``metrics.jsonl``,
``summary.json``, ``nonfinite.json``, data caches) goes through :func:`atomic_write`: a
reader, or a run killed at any moment, sees the old file or the new one, never half of one.

JSON policy (:func:`to_json_values`, :func:`dumps`): the files are strict JSON (RFC 8259),
which has no NaN or infinity, so a non-finite float is written as ``null`` (NaN, ``inf``
and ``-inf`` alike; ``pandas.read_json`` reads ``null`` back as NaN). NumPy scalars and
arrays become Python numbers and lists, dtypes their names, paths strings, tuples lists.

>>> dumps({'loss': float('nan'), 'acc': np.float32(0.5), 'shape': (2, 3)}, sort_keys=True)
'{"acc": 0.5, "loss": null, "shape": [2, 3]}'
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

__all__ = [
    "arrays_digest",
    "atomic_write",
    "dumps",
    "file_digest",
    "fsync_dir",
    "to_json_values",
    "write_json",
]

_CHUNK = 1 << 20


def fsync_dir(directory: str | os.PathLike) -> None:
    """Make a rename in ``directory`` durable where the platform allows it.

    Args:
      directory: the folder whose entries were changed.

    Returns:
      None. An ``OSError`` (the folder cannot be opened, or the platform cannot fsync a
      folder) is swallowed: the rename stands, only its durability is not assured.
    """
    with contextlib.suppress(OSError):
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def temporary_prefix(dest: Path) -> str:
    """The name prefix of :func:`atomic_write`'s temporary files for ``dest``
    (``.<name>.``; they end in ``.tmp``).

    Args:
      dest: the file :func:`atomic_write` writes.

    Returns:
      ``'.' + dest.name + '.'``.
    """
    return f".{dest.name}."


def atomic_write(
    dest: str | os.PathLike, write: Callable[[BinaryIO], object], *, mode: int = 0o644
) -> Path:
    """Write ``dest`` atomically.

    ``write(f)`` fills a temporary file in the same folder (opened ``w+b``, so it may seek
    back and read what it wrote), which is flushed, fsync'ed, given ``mode`` and renamed
    over ``dest``; then the folder is fsync'ed. Missing parent folders are created.

    Args:
      dest: the file to write.
      write: fills the open binary file.
      mode: permission bits of the new file (default ``0o644``, as ``open`` gives under
        the usual umask; :func:`tempfile.mkstemp` alone would give ``0o600``).

    Returns:
      ``dest`` as a :class:`~pathlib.Path`.

    Raises:
      OSError: the folder cannot be written (the temporary file is removed, ``dest`` is
        untouched); whatever ``write`` raises, likewise.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=temporary_prefix(dest), suffix=".tmp")
    try:
        with os.fdopen(fd, "w+b") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(dest.parent)
    return dest


def file_digest(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    """Hex digest (``'sha256'``, ``'md5'``, any :mod:`hashlib` name) of a file's bytes,
    read in 1 MiB chunks.

    Args:
      path: the file to read.
      algorithm: a :func:`hashlib.new` name (default ``'sha256'``).

    Returns:
      The digest as a lower-case hex string.

    Raises:
      ValueError: ``algorithm`` is not a hash :mod:`hashlib` knows.
      OSError: the file cannot be opened or read (``FileNotFoundError`` when it is missing).
    """
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            h.update(block)
    return h.hexdigest()


def arrays_digest(arrays: Iterable[Any], algorithm: str = "sha256") -> str:
    """Hex digest of arrays as they are in memory: each one's dtype, shape and bytes (C
    order), in turn. The same values in the same dtypes and shapes give the same digest on
    every machine of the same byte order.

    Args:
      arrays: array-likes (NumPy or JAX arrays, scalars), any shapes and dtypes, each taken
        through :func:`numpy.ascontiguousarray`; their order matters.
      algorithm: a :func:`hashlib.new` name (default ``'sha256'``).

    Returns:
      The digest as a lower-case hex string.

    Raises:
      ValueError: ``algorithm`` is not a hash :mod:`hashlib` knows.
    """
    h = hashlib.new(algorithm)
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{list(a.shape)};".encode())
        h.update(a.reshape(-1).view(np.uint8).data)
    return h.hexdigest()


def _default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray) or type(obj).__module__.startswith("jax"):
        return np.asarray(obj).tolist()
    if isinstance(obj, np.dtype):
        return obj.name
    if isinstance(obj, type):
        return np.dtype(obj).name if issubclass(obj, np.generic) else obj.__name__
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"{obj!r} of type {type(obj).__name__} is not JSON-able")


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def to_json_values(obj: Any) -> Any:
    """``obj`` as the plain JSON values a file holds (see the module docs): what
    ``json.loads`` of the written file gives back, so a value can be compared with a stored
    one. Raises TypeError for objects with no JSON form.

    Args:
      obj: JSON values, NumPy/JAX scalars and arrays, dtypes, paths, tuples, nested in dicts
        and lists.

    Returns:
      Plain ``dict``/``list``/``str``/``int``/``float``/``bool``/``None`` values: arrays as
      nested lists, tuples as lists, non-finite floats as ``None``.

    Raises:
      TypeError: a value with no JSON form (e.g. a set or an arbitrary object), or a dict key
        that is not a ``str``, ``int``, ``float``, ``bool`` or ``None``.
    """
    return _finite(json.loads(json.dumps(obj, allow_nan=True, default=_default)))


def dumps(obj: Any, **kw: Any) -> str:
    """``json.dumps`` under the module's policy (strict JSON, non-finite floats as null);
    keyword arguments as ``json.dumps``'s (``indent``, ``sort_keys``).

    Args:
      obj: as for :func:`to_json_values`.
      **kw: passed to :func:`json.dumps` (``allow_nan`` is fixed at False, so not accepted).

    Returns:
      The JSON text, strict RFC 8259.

    Raises:
      TypeError: ``obj`` holds a value with no JSON form (:func:`to_json_values`), or ``kw``
        has a key ``json.dumps`` does not take (or ``allow_nan``).
    """
    return json.dumps(to_json_values(obj), allow_nan=False, **kw)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` to ``path`` atomically as indented JSON under the module's policy.

    Args:
      path: the file to write (its missing parent folders are created).
      obj: as for :func:`to_json_values`.

    Returns:
      ``path`` as a :class:`~pathlib.Path`.

    Raises:
      TypeError: ``obj`` holds a value with no JSON form (nothing is written).
      OSError: the file cannot be written (:func:`atomic_write`; the old file is untouched).
    """

    text = dumps(obj, indent=1) + "\n"
    return atomic_write(path, lambda f: f.write(text.encode()))
