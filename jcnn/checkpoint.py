"""Checkpoints: a pytree of arrays as ``.npz`` plus a JSON sidecar, written atomically.

``save_checkpoint('run/epoch_003.npz', {'params': p, 'state': s, 'opt_state': o}, meta)``
writes ``run/epoch_003.npz`` (one array per leaf, named by its '/'-joined key path, e.g.
``params/conv1_1/w`` or ``opt_state/0/mu/conv1_1/w``) and ``run/epoch_003.json`` (the
metadata, plus the list of keys). Each file goes to a temporary file in the same folder,
is flushed and fsync'ed, then moved into place with :func:`os.replace`, so a reader never
sees half a checkpoint; the sidecar is written last, so its presence marks a complete one.
No pickle anywhere: ``np.load(..., allow_pickle=False)``.

``load_checkpoint(path, like_tree)`` rebuilds a pytree with the structure of ``like_tree``
(e.g. a freshly initialised model and optimiser state), checking every leaf's shape and
dtype, and returns ``(tree, metadata)``.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import jax
import numpy as np

__all__ = ["flatten_tree", "key_path_name", "load_checkpoint", "save_checkpoint", "sidecar_path"]


def _key_name(k: Any) -> str:
    if isinstance(k, jax.tree_util.DictKey):
        name = str(k.key)
    elif isinstance(k, jax.tree_util.GetAttrKey):
        name = k.name
    elif isinstance(k, jax.tree_util.SequenceKey):
        name = str(k.idx)
    elif isinstance(k, jax.tree_util.FlattenedIndexKey):
        name = str(k.key)
    else:  # pragma: no cover - future key kinds
        name = str(k)
    if "/" in name or not name:
        raise ValueError(f"cannot checkpoint a pytree key {name!r}: keys must be non-empty, no '/'")
    return name


def key_path_name(path: tuple) -> str:
    """``(DictKey('params'), DictKey('conv1'), DictKey('w'))`` -> ``'params/conv1/w'``."""
    return "/".join(_key_name(k) for k in path)


def flatten_tree(tree: Any) -> dict[str, np.ndarray]:
    """``{'/'-joined key path: host numpy array}`` for every leaf of ``tree``."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    out: dict[str, np.ndarray] = {}
    for path, leaf in leaves:
        name = key_path_name(path)
        if name in out:
            raise ValueError(f"two leaves of the tree share the checkpoint key {name!r}")
        out[name] = np.asarray(jax.device_get(leaf))
    return out


def sidecar_path(path: str | os.PathLike) -> Path:
    """The JSON sidecar that goes with ``path`` (same name, ``.json``)."""
    return _npz_path(path).with_suffix(".json")


def _npz_path(path: str | os.PathLike) -> Path:
    p = Path(path)
    return p if p.suffix == ".npz" else p.with_name(p.name + ".npz")


def _atomic_write(dest: Path, write) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    # Make the rename itself durable where the platform allows it.
    with contextlib.suppress(OSError):
        dir_fd = os.open(dest.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def save_checkpoint(
    path: str | os.PathLike, tree: Any, metadata: dict[str, Any] | None = None
) -> Path:
    """Write ``tree`` to ``path`` (``.npz`` appended if missing) and ``metadata`` (JSON-able)
    to the sidecar ``.json``, each atomically. Returns the ``.npz`` path."""
    npz = _npz_path(path)
    arrays = flatten_tree(tree)
    meta = dict(metadata or {})
    meta["keys"] = sorted(arrays)
    text = json.dumps(meta, indent=1, sort_keys=True, allow_nan=True, default=_json_default)
    _atomic_write(npz, lambda f: np.savez(f, **arrays))
    _atomic_write(sidecar_path(npz), lambda f: f.write(text.encode()))
    return npz


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray | jax.Array):
        return np.asarray(obj).tolist()
    if isinstance(obj, np.dtype | type):
        return np.dtype(obj).name
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"metadata value {obj!r} of type {type(obj).__name__} is not JSON-able")


def load_checkpoint(path: str | os.PathLike, like_tree: Any) -> tuple[Any, dict[str, Any]]:
    """Read a checkpoint written by :func:`save_checkpoint` into the structure of
    ``like_tree``; returns ``(tree, metadata)`` (metadata ``{}`` if the sidecar is missing).

    Raises ValueError if a key of ``like_tree`` is missing from the file, if the file holds
    keys ``like_tree`` lacks, or if a leaf's shape or dtype differs.
    """
    npz = _npz_path(path)
    if not npz.is_file():
        raise FileNotFoundError(f"no checkpoint at {npz}")
    leaves, treedef = jax.tree_util.tree_flatten_with_path(like_tree)
    out = []
    with np.load(npz, allow_pickle=False) as f:
        stored = set(f.files)
        names = [key_path_name(p) for p, _ in leaves]
        missing = [n for n in names if n not in stored]
        extra = sorted(stored - set(names))
        if missing or extra:
            raise ValueError(
                f"checkpoint {npz} does not match the tree: missing {missing[:5]}"
                f"{'...' if len(missing) > 5 else ''}, unexpected {extra[:5]}"
                f"{'...' if len(extra) > 5 else ''}"
            )
        for name, (_, like) in zip(names, leaves, strict=True):
            arr = f[name]
            want_shape = tuple(np.shape(like))
            want_dtype = np.dtype(like.dtype if hasattr(like, "dtype") else np.asarray(like).dtype)
            if arr.shape != want_shape or arr.dtype != want_dtype:
                raise ValueError(
                    f"checkpoint {npz}: {name} is {arr.dtype}{list(arr.shape)}, expected "
                    f"{want_dtype}{list(want_shape)}"
                )
            out.append(arr)
    meta: dict[str, Any] = {}
    side = sidecar_path(npz)
    if side.is_file():
        meta = json.loads(side.read_text())
    return jax.tree_util.tree_unflatten(treedef, out), meta
