"""Checkpoint files: a pytree of arrays as ``.npz`` plus a JSON sidecar, written atomically
and checksummed, read back within bounds and verified (see :mod:`jcnn.checkpoint`)."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import zipfile
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jcnn import files
from jcnn.files import atomic_write, file_digest

__all__ = [
    "CorruptCheckpointError",
    "CorruptCheckpointWarning",
    "flatten_tree",
    "key_path_name",
    "load_checkpoint",
    "read_sidecar",
    "save_checkpoint",
    "sidecar_path",
    "to_plain_json",
    "verify_checkpoint",
]

# Keys the writer adds to the sidecar (the caller's metadata must not use them).
_NPZ_SHA, _META_SHA, _KEYS = "npz_sha256", "sidecar_sha256", "keys"
# Bounds every sidecar is read within, signed or not (a run's histories stay far below).
MAX_SIDECAR_BYTES = 256 << 20
MAX_SIDECAR_DEPTH = 32
# What a damaged .npz raises while it is opened or read.
_READ_ERRORS = (OSError, EOFError, ValueError, zipfile.BadZipFile)


class CorruptCheckpointError(ValueError):
    """A checkpoint whose files are missing, unreadable or fail their checksum."""


class CorruptCheckpointWarning(UserWarning):
    """A corrupt checkpoint was found and moved aside; an older one is used instead."""


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
    """``(DictKey('params'), DictKey('conv1'), DictKey('w'))`` -> ``'params/conv1/w'``.

    Args:
      path: a key path from :func:`jax.tree_util.tree_flatten_with_path` (dict keys,
        attribute names, sequence indices, flattened indices).

    Returns:
      The keys' names joined with ``'/'``.

    Raises:
      ValueError: a key's name is empty or contains ``'/'``.
    """
    return "/".join(_key_name(k) for k in path)


def flatten_tree(tree: Any) -> dict[str, np.ndarray]:
    """``{'/'-joined key path: host numpy array}`` for every leaf of ``tree``.

    Args:
      tree: a pytree of arrays (device or host) and scalars.

    Returns:
      ``{key_path_name: numpy array}``, one entry per leaf in flattening order, each copied
      to the host with its shape and dtype.

    Raises:
      ValueError: a key's name is empty or contains ``'/'`` (:func:`key_path_name`), or two
        leaves get the same name.
    """
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    out: dict[str, np.ndarray] = {}
    for path, leaf in leaves:
        name = key_path_name(path)
        if name in out:
            raise ValueError(f"two leaves of the tree share the checkpoint key {name!r}")
        out[name] = np.asarray(jax.device_get(leaf))
    return out


def sidecar_path(path: str | os.PathLike) -> Path:
    """The JSON sidecar that goes with ``path`` (same name, ``.json``).

    Args:
      path: the checkpoint, with or without its ``.npz`` suffix.

    Returns:
      The ``.json`` path beside the ``.npz`` (``run/epoch_003.npz`` ->
      ``run/epoch_003.json``).
    """
    return _npz_path(path).with_suffix(".json")


def _npz_path(path: str | os.PathLike) -> Path:
    p = Path(path)
    return p if p.suffix == ".npz" else p.with_name(p.name + ".npz")


def to_plain_json(obj: Any) -> Any:
    """``obj`` as the plain JSON values a sidecar holds (:func:`jcnn.files.to_json_values`),
    so that a value can be compared with a stored one.

    Args:
      obj: JSON values, NumPy/JAX scalars and arrays, dtypes, paths, tuples, nested.

    Returns:
      Plain JSON values (dicts, lists, str, numbers, bool, None; non-finite floats as None).

    Raises:
      TypeError: a value with no JSON form.
    """
    return files.to_json_values(obj)


def _meta_digest(meta: dict[str, Any]) -> str:
    body = {k: v for k, v in meta.items() if k != _META_SHA}
    # allow_nan: sidecars written before the strict-JSON policy may hold a bare NaN.
    text = json.dumps(body, sort_keys=True, allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()


def save_checkpoint(
    path: str | os.PathLike, tree: Any, metadata: dict[str, Any] | None = None
) -> Path:
    """Write ``tree`` to ``path`` (``.npz`` appended if missing) and ``metadata`` (JSON-able)
    to the sidecar ``.json``, each atomically, the sidecar last. The sidecar also records
    ``keys`` (the array names), ``npz_sha256`` (checksum of the ``.npz`` file as written)
    and ``sidecar_sha256`` (of its own content). Returns the ``.npz`` path.

    Args:
      path: where to write; ``.npz`` is appended unless it ends so. Missing parent folders
        are created.
      tree: a pytree of arrays (parameters, model state, optimiser state, ...).
      metadata: JSON-able settings and counters for the sidecar (None: none); the keys
        ``npz_sha256`` and ``sidecar_sha256`` are reserved (``keys`` is overwritten).

    Returns:
      The ``.npz`` path.

    Raises:
      ValueError: ``metadata`` uses a reserved key, or the tree's key paths cannot name
        arrays (:func:`flatten_tree`); nothing is written.
      TypeError: ``metadata`` holds a value with no JSON form; nothing is written.
      OSError: a file cannot be written (:func:`jcnn.files.atomic_write`).
    """
    npz = _npz_path(path)
    arrays = flatten_tree(tree)
    meta = to_plain_json(dict(metadata or {}))
    clash = {_NPZ_SHA, _META_SHA} & set(meta)
    if clash:
        raise ValueError(f"metadata keys {sorted(clash)} are reserved for the checksums")
    meta[_KEYS] = sorted(arrays)
    digest: dict[str, str] = {}

    def write_npz(f):
        np.savez(f, **arrays)
        f.flush()
        # The checksum of the bytes as they are in the file (np.savez may seek back to
        # patch the zip headers, so hash what landed, not what streamed past).
        f.seek(0)
        h = hashlib.sha256()
        while block := f.read(1 << 20):
            h.update(block)
        digest["npz"] = h.hexdigest()

    atomic_write(npz, write_npz)
    meta[_NPZ_SHA] = digest["npz"]
    meta[_META_SHA] = _meta_digest(meta)
    text = files.dumps(meta, indent=1, sort_keys=True)
    atomic_write(sidecar_path(npz), lambda f: f.write(text.encode()))
    return npz


def _finite_constant(name: str) -> float:
    """JSON's non-standard constants: NaN (older sidecars wrote it for a missing accuracy)
    is read; ``Infinity`` and ``-Infinity``, which jcnn never writes, are refused."""
    if name == "NaN":
        return float("nan")
    raise ValueError(f"the non-finite number {name}")


def _depth(obj: Any) -> int:
    """How deeply lists and objects nest in a parsed JSON value (iteratively)."""
    deepest, stack = 0, [(obj, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict | list):
            deepest = max(deepest, depth)
            if depth <= MAX_SIDECAR_DEPTH:
                children = value.values() if isinstance(value, dict) else value
                stack.extend((child, depth + 1) for child in children)
    return deepest


def read_sidecar(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata of the checkpoint at ``path``; :class:`CorruptCheckpointError` if the
    sidecar is missing, is not JSON within bounds (:data:`MAX_SIDECAR_BYTES`,
    :data:`MAX_SIDECAR_DEPTH`, no infinite numbers), or fails its own checksum.

    Args:
      path: the checkpoint, with or without its ``.npz`` suffix.

    Returns:
      The sidecar's JSON object as a ``dict``, including ``keys`` and the checksums (when it
      was written with them).

    Raises:
      CorruptCheckpointError: the sidecar is missing, unreadable, larger than
        :data:`MAX_SIDECAR_BYTES`, not UTF-8 JSON, nested deeper than
        :data:`MAX_SIDECAR_DEPTH`, holds ``Infinity``, is not a JSON object, or fails its
        ``sidecar_sha256``.
    """
    side = sidecar_path(path)
    try:
        status = side.stat()
        if not stat.S_ISREG(status.st_mode):  # a FIFO would block the read for ever
            raise CorruptCheckpointError(f"checkpoint sidecar {side} is not a regular file")
        size = status.st_size
        if size > MAX_SIDECAR_BYTES:
            raise CorruptCheckpointError(
                f"checkpoint sidecar {side} is {size} bytes, more than a sidecar holds "
                f"({MAX_SIDECAR_BYTES})"
            )
        meta = json.loads(side.read_text(), parse_constant=_finite_constant)
    except FileNotFoundError:
        raise CorruptCheckpointError(f"checkpoint {side} is missing (incomplete write?)") from None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        if isinstance(e, CorruptCheckpointError):
            raise
        why = "nested too deeply" if isinstance(e, RecursionError) else str(e)
        raise CorruptCheckpointError(f"checkpoint sidecar {side} is unreadable: {why}") from None
    if not isinstance(meta, dict):
        raise CorruptCheckpointError(f"checkpoint sidecar {side} does not hold a JSON object")
    if _depth(meta) > MAX_SIDECAR_DEPTH:
        raise CorruptCheckpointError(
            f"checkpoint sidecar {side} nests deeper than {MAX_SIDECAR_DEPTH} levels"
        )
    if _META_SHA in meta and meta[_META_SHA] != _meta_digest(meta):
        raise CorruptCheckpointError(f"checkpoint sidecar {side} fails its checksum")
    return meta


def verify_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Check the sidecar and the ``.npz`` checksum of a checkpoint; returns its metadata or
    raises :class:`CorruptCheckpointError` (checkpoints written before checksums existed
    pass on the sidecar alone).

    Args:
      path: the checkpoint, with or without its ``.npz`` suffix.

    Returns:
      Its metadata, as :func:`read_sidecar`.

    Raises:
      CorruptCheckpointError: the sidecar is bad (:func:`read_sidecar`), the ``.npz`` is
        missing, or its SHA-256 differs from the recorded ``npz_sha256``.
      OSError: the ``.npz`` exists but cannot be read.
    """
    npz = _npz_path(path)
    meta = read_sidecar(npz)
    if not npz.is_file():
        what = "is not a regular file" if npz.exists() else "is missing"  # e.g. /dev/zero
        raise CorruptCheckpointError(f"checkpoint {npz} {what} (its sidecar exists)")
    want = meta.get(_NPZ_SHA)
    if want is not None:
        got = file_digest(npz)
        if got != want:
            raise CorruptCheckpointError(
                f"checkpoint {npz} fails its checksum (sha256 {got[:12]}..., the sidecar "
                f"recorded {want[:12]}...): truncated or corrupt"
            )
    return meta


def _member_header(f: Any, name: str) -> tuple[tuple[int, ...], np.dtype]:
    """``(shape, dtype)`` from the ``.npy`` header of array ``name`` of an open ``.npz``
    (``np.load``'s), without reading its data."""
    readers = {
        (1, 0): np.lib.format.read_array_header_1_0,
        (2, 0): np.lib.format.read_array_header_2_0,
    }
    with f.zip.open(f"{name}.npy") as member:
        version = np.lib.format.read_magic(member)
        if version not in readers:
            raise ValueError(f"an .npy header of version {version}, which jcnn never writes")
        shape, _, dtype = readers[version](member)
    return tuple(shape), np.dtype(dtype)


def load_checkpoint(
    path: str | os.PathLike, like_tree: Any, *, verify: bool = True, strict: bool = True
) -> tuple[Any, dict[str, Any]]:
    """Read a checkpoint written by :func:`save_checkpoint` into the structure of
    ``like_tree``; returns ``(tree, metadata)`` (metadata ``{}`` if the sidecar is missing).

    With ``verify`` (default) the checksums recorded in the sidecar are checked first:
    :class:`CorruptCheckpointError` if they fail. Raises ValueError if a key of ``like_tree``
    is missing from the file, if the file holds keys ``like_tree`` lacks, or if a leaf's
    shape or dtype differs.

    Args:
      path: the checkpoint, with or without its ``.npz`` suffix.
      like_tree: a pytree with the structure, leaf shapes and dtypes to read into (its
        values are not used).
      verify: check the ``.npz`` checksum against the sidecar (default True); False still
        reads the sidecar and checks its own checksum.
      strict: the file must hold exactly ``like_tree``'s arrays (default); False reads
        ``like_tree``'s arrays out of a file that may hold more (e.g. only the best
        parameters of a run checkpoint).

    Returns:
      ``(tree, metadata)``: a pytree shaped like ``like_tree`` whose leaves are host NumPy
      arrays, and the sidecar's ``dict`` (``{}`` if there is no sidecar).

    Raises:
      FileNotFoundError: there is no ``.npz`` at ``path``.
      CorruptCheckpointError: the sidecar or a checksum fails, or the ``.npz`` or one of its
        arrays cannot be read.
      ValueError: the file's array names differ from ``like_tree``'s key paths, a key path
        cannot name an array (:func:`key_path_name`), or an array's shape or dtype differs
        from its leaf in ``like_tree``.
    """
    npz = _npz_path(path)
    if not npz.is_file():
        raise FileNotFoundError(f"no checkpoint at {npz}")
    meta: dict[str, Any] = {}
    if sidecar_path(npz).is_file():
        meta = verify_checkpoint(npz) if verify else read_sidecar(npz)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(like_tree)
    out = []
    try:
        f = np.load(npz, allow_pickle=False)
    except _READ_ERRORS as e:  # not a zip, truncated, ...
        raise CorruptCheckpointError(f"checkpoint {npz} is unreadable: {e}") from None
    with f:
        stored = set(f.files)
        names = [key_path_name(p) for p, _ in leaves]
        missing = [n for n in names if n not in stored]
        extra = sorted(stored - set(names)) if strict else []
        if missing or extra:
            raise ValueError(
                f"checkpoint {npz} does not match the tree: missing {missing[:5]}"
                f"{'...' if len(missing) > 5 else ''}, unexpected {extra[:5]}"
                f"{'...' if len(extra) > 5 else ''}"
            )
        for name, (_, like) in zip(names, leaves, strict=True):
            want_shape = tuple(np.shape(like))
            want_dtype = np.dtype(like.dtype if hasattr(like, "dtype") else np.asarray(like).dtype)
            try:  # the header first: its shape decides what reading the array allocates
                shape, dtype = _member_header(f, name)
                if shape == want_shape and dtype == want_dtype:
                    arr = f[name]
            except (*_READ_ERRORS, MemoryError) as e:
                raise CorruptCheckpointError(
                    f"checkpoint {npz}: {name} is unreadable: {e}"
                ) from None
            if shape != want_shape or dtype != want_dtype:
                raise ValueError(
                    f"checkpoint {npz}: {name} is {dtype}{list(shape)}, expected "
                    f"{want_dtype}{list(want_shape)}"
                )
            out.append(arr)
    return jax.tree_util.tree_unflatten(treedef, out), meta
