"""A folder of checkpoints: the newest good one (the others moved aside as ``*.corrupt``
with a warning), and the temporary files a killed writer left behind (see
:mod:`jcnn.checkpoint`)."""

from __future__ import annotations

import contextlib
import os
import re
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from jcnn.checkpoint.store import (
    CorruptCheckpointError,
    CorruptCheckpointWarning,
    _npz_path,
    read_sidecar,
    sidecar_path,
    verify_checkpoint,
)
from jcnn.files import fsync_dir

__all__ = ["latest_checkpoint", "quarantine", "remove_stale_temporaries"]


def quarantine(path: str | os.PathLike, reason: str) -> list[Path]:
    """Move a checkpoint's files aside (``name.npz`` -> ``name.npz.corrupt``, likewise the
    sidecar) with a :class:`CorruptCheckpointWarning`; returns the new paths.

    Args:
      path: the checkpoint, with or without its ``.npz`` suffix.
      reason: what is wrong with it, the start of the warning's message.

    Returns:
      The new paths of the files that existed, the sidecar's first (empty if neither did).

    Raises:
      OSError: a file cannot be renamed.

    Warns:
      CorruptCheckpointWarning: always, naming ``reason`` and the moved files.
    """
    npz = _npz_path(path)
    moved = []
    for p in (sidecar_path(npz), npz):  # the sidecar first: without it the pair is incomplete
        if p.exists():
            dest = p.with_name(p.name + ".corrupt")
            os.replace(p, dest)
            moved.append(dest)
    fsync_dir(npz.parent)
    warnings.warn(
        f"{reason}; moved aside to {', '.join(m.name for m in moved) or '(nothing)'}",
        CorruptCheckpointWarning,
        stacklevel=3,
    )
    return moved


def _complete(directory: Path, patterns: Iterable[str]) -> list[Path]:
    """``.npz`` files matching ``patterns`` whose sidecar exists, plus sidecars whose
    ``.npz`` is missing (both count as written-complete: the sidecar comes last)."""
    found: set[Path] = set()
    for pattern in patterns:
        for npz in directory.glob(pattern):
            if npz.suffix == ".npz" and sidecar_path(npz).is_file():
                found.add(npz)
        for side in directory.glob(pattern[: -len(".npz")] + ".json"):
            found.add(side.with_suffix(".npz"))
    return sorted(found)


def _number(path: Path) -> int:
    digits = re.findall(r"\d+", path.stem)
    return int(digits[-1]) if digits else -1


def latest_checkpoint(
    directory: str | os.PathLike,
    patterns: Iterable[str] = ("*.npz",),
    *,
    order: Callable[[Path, dict[str, Any]], Any] | None = None,
    validate: Callable[[Path, dict[str, Any]], None] | None = None,
) -> tuple[Path, dict[str, Any]] | None:
    """The newest complete checkpoint of ``directory`` whose checksums hold, as ``(npz
    path, metadata)``, or None.

    Checkpoints are ordered by their metadata's ``iteration`` (then name) unless ``order``
    (``(path, meta) -> sort key``) is given. Corrupt ones met on the way (unreadable sidecar,
    missing ``.npz``, failed checksum) are moved aside with :func:`quarantine`, so the
    previous checkpoint is the one returned.

    Args:
      directory: the folder to search (a missing folder gives None).
      patterns: glob patterns, ending in ``.npz``, of the checkpoints to consider (default
        every ``*.npz``).
      order: ``(npz path, metadata) -> sort key``, the largest newest (None: by
        ``metadata['iteration']``, else the last number in the name, then the name).
      validate: ``(npz path, metadata) -> None``, raising :class:`CorruptCheckpointError`
        for metadata the caller cannot use (a schema); such a checkpoint is moved aside too.

    Returns:
      ``(npz path, metadata)`` of the newest checkpoint that verifies
      (:func:`verify_checkpoint`), or None if there is none.

    Raises:
      OSError: a corrupt checkpoint cannot be moved aside, or a ``.npz`` cannot be read.

    Warns:
      CorruptCheckpointWarning: for each corrupt checkpoint moved aside.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return None
    candidates: list[tuple[Any, Path, dict[str, Any]]] = []
    for npz in _complete(directory, tuple(patterns)):
        try:
            meta = read_sidecar(npz)
            if validate is not None:
                validate(npz, meta)
        except CorruptCheckpointError as e:
            quarantine(npz, f"corrupt checkpoint: {e}")
            continue
        iteration = meta.get("iteration")
        if not isinstance(iteration, int) or isinstance(iteration, bool):
            iteration = _number(npz)
        key = order(npz, meta) if order else (iteration, npz.name)
        candidates.append((key, npz, meta))
    candidates.sort(key=lambda c: c[0], reverse=True)
    for _, npz, _ in candidates:
        try:
            return npz, verify_checkpoint(npz)
        except CorruptCheckpointError as e:
            quarantine(npz, f"corrupt checkpoint: {e}; using the one before it")
    return None


def remove_stale_temporaries(directory: str | os.PathLike) -> list[Path]:
    """Delete the temporary files (``.<name>.<random>.tmp``) that :func:`atomic_write` leaves
    when its process is killed mid-write; returns what was removed.

    Args:
      directory: the folder to clean (a missing folder is left alone).

    Returns:
      The paths of the files deleted (hidden files ending in ``.tmp``).

    Raises:
      OSError: a file cannot be deleted (other than one already gone).
    """
    directory = Path(directory)
    removed = []
    if directory.is_dir():
        for p in directory.glob(".*.tmp"):
            if p.is_file():
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
                    removed.append(p)
    return removed
