"""Checkpoints: a pytree of arrays as ``.npz`` plus a JSON sidecar, written atomically and
checksummed.

``save_checkpoint('run/epoch_003.npz', {'params': p, 'state': s, 'opt_state': o}, meta)``
writes ``run/epoch_003.npz`` (one array per leaf, named by its '/'-joined key path, e.g.
``params/conv1_1/w`` or ``opt_state/0/mu/conv1_1/w``) and ``run/epoch_003.json`` (the
metadata, the list of keys, the SHA-256 of the ``.npz`` bytes and the SHA-256 of the sidecar's
own content). Each file goes to a temporary file in the same folder, is flushed and
fsync'ed, moved into place with :func:`os.replace`, and the folder is fsync'ed; the sidecar
is written last, so its presence marks a complete checkpoint. No pickle anywhere:
``np.load(..., allow_pickle=False)``, plain JSON.

``load_checkpoint(path, like_tree)`` verifies the checksums (a mismatch is a
:class:`CorruptCheckpointError`), rebuilds a pytree with the structure of ``like_tree`` (e.g.
a freshly initialised model and optimiser state), checking every leaf's shape and dtype, and
returns ``(tree, metadata)``.

For runs that resume: :func:`latest_checkpoint` finds the newest complete checkpoint of a
folder whose checksums hold, moving corrupt ones aside (``*.corrupt``) with a warning, so the
previous one is used; :func:`remove_stale_temporaries` deletes the temporary files a killed
writer left behind.

A training run's checkpoints (the :class:`~jcnn.solver.Solver`'s and the apps'), in one
place: their names (:func:`run_checkpoint_path`: ``epoch_{epoch:03d}.npz`` at an epoch's end,
``step_{iteration:08d}.npz`` between), which are kept (:func:`prune_run_checkpoints`), which
one a run starts from (:func:`resume_checkpoint`), and whether it may
(:func:`check_resumable`: the format version, then :func:`config_differences`, the one
comparison of a checkpoint's settings with the run's, which the apps use for their flags
too). The settings include ``data.fingerprint``, a SHA-256 of the training and validation
arrays (:attr:`jcnn.solver.Solver.data_fingerprint`): other data is a mismatch unless the
caller ignores that key (``Solver(check_data=False)``); a checkpoint made before the key
existed is not checked on it (:data:`IDENTITY_ACCEPT_ABSENT`). Pruning also deletes orphans,
``.npz`` files older than the newest complete checkpoint whose sidecar is gone (a kill while
pruning); corrupt checkpoints moved aside (``*.corrupt``) are never deleted here.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import warnings
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jcnn import files
from jcnn.files import atomic_write, file_digest, fsync_dir

__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointMismatchError",
    "CorruptCheckpointError",
    "CorruptCheckpointWarning",
    "check_resumable",
    "config_differences",
    "describe_differences",
    "flatten_tree",
    "key_path_name",
    "latest_checkpoint",
    "load_checkpoint",
    "quarantine",
    "read_sidecar",
    "prune_run_checkpoints",
    "remove_stale_temporaries",
    "resume_checkpoint",
    "run_checkpoint_path",
    "run_checkpoints",
    "save_checkpoint",
    "sidecar_path",
    "verify_checkpoint",
]

# Keys the writer adds to the sidecar (the caller's metadata must not use them).
_NPZ_SHA, _META_SHA, _KEYS = "npz_sha256", "sidecar_sha256", "keys"
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


def read_sidecar(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata of the checkpoint at ``path``; :class:`CorruptCheckpointError` if the
    sidecar is missing, is not JSON, or fails its own checksum.

    Args:
      path: the checkpoint, with or without its ``.npz`` suffix.

    Returns:
      The sidecar's JSON object as a ``dict``, including ``keys`` and the checksums (when it
      was written with them).

    Raises:
      CorruptCheckpointError: the sidecar is missing, unreadable, not UTF-8 JSON, not a JSON
        object, or fails its ``sidecar_sha256``.
    """
    side = sidecar_path(path)
    try:
        meta = json.loads(side.read_text())
    except FileNotFoundError:
        raise CorruptCheckpointError(f"checkpoint {side} is missing (incomplete write?)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorruptCheckpointError(f"checkpoint sidecar {side} is unreadable: {e}") from None
    if not isinstance(meta, dict):
        raise CorruptCheckpointError(f"checkpoint sidecar {side} does not hold a JSON object")
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
        raise CorruptCheckpointError(f"checkpoint {npz} is missing (its sidecar exists)")
    want = meta.get(_NPZ_SHA)
    if want is not None:
        got = file_digest(npz)
        if got != want:
            raise CorruptCheckpointError(
                f"checkpoint {npz} fails its checksum (sha256 {got[:12]}..., the sidecar "
                f"recorded {want[:12]}...): truncated or corrupt"
            )
    return meta


def load_checkpoint(
    path: str | os.PathLike, like_tree: Any, *, verify: bool = True
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
        extra = sorted(stored - set(names))
        if missing or extra:
            raise ValueError(
                f"checkpoint {npz} does not match the tree: missing {missing[:5]}"
                f"{'...' if len(missing) > 5 else ''}, unexpected {extra[:5]}"
                f"{'...' if len(extra) > 5 else ''}"
            )
        for name, (_, like) in zip(names, leaves, strict=True):
            try:
                arr = f[name]
            except _READ_ERRORS as e:
                raise CorruptCheckpointError(
                    f"checkpoint {npz}: {name} is unreadable: {e}"
                ) from None
            want_shape = tuple(np.shape(like))
            want_dtype = np.dtype(like.dtype if hasattr(like, "dtype") else np.asarray(like).dtype)
            if arr.shape != want_shape or arr.dtype != want_dtype:
                raise ValueError(
                    f"checkpoint {npz}: {name} is {arr.dtype}{list(arr.shape)}, expected "
                    f"{want_dtype}{list(want_shape)}"
                )
            out.append(arr)
    return jax.tree_util.tree_unflatten(treedef, out), meta


# ----------------------------------------------------------------------- runs that resume


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
        except CorruptCheckpointError as e:
            quarantine(npz, f"corrupt checkpoint: {e}")
            continue
        key = order(npz, meta) if order else (meta.get("iteration", _number(npz)), npz.name)
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


# ----------------------------------------------------------------- a training run's checkpoints

# Version of what a Solver checkpoint holds (arrays and sidecar keys); resuming needs this one.
CHECKPOINT_FORMAT = 2
CHECKPOINT_PATTERNS = ("epoch_*.npz", "step_*.npz")
_RUN_NAME = re.compile(r"(epoch|step)_(\d+)\.npz")
RESUME_CHOICES = (True, False, "auto")
# Settings added after checkpoints were first made: one a checkpoint lacks had this value.
IDENTITY_DEFAULTS: dict[str, Any] = {
    "model.label_smoothing": 0.0,
    "solver.lr_schedule": "exponential",
    "solver.warmup_epochs": 0.0,
    "solver.compute_dtype": None,
    "solver.test_time_flip": False,
}
# Settings added later that an older checkpoint could not record and no default stands
# for (the data's fingerprint): one a checkpoint lacks is not compared ("unknown: accept").
IDENTITY_ACCEPT_ABSENT = frozenset({"data.fingerprint"})
_ABSENT = "<absent>"


class CheckpointMismatchError(ValueError):
    """The checkpoint to resume from was made by a differently configured run;
    ``differences`` maps each differing setting (``'model.num_filters'``) to ``(in the
    checkpoint, now)``.

    Args:
      message: the error message.
      differences: ``{'dotted.key': (saved value, current value)}``, as from
        :func:`config_differences` (copied).
    """

    def __init__(self, message: str, differences: dict[str, tuple[Any, Any]]):
        super().__init__(message)
        self.differences = dict(differences)


def _dotted(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix.rstrip("."): tree}
    out: dict[str, Any] = {}
    for k, v in tree.items():
        out.update(_dotted(v, f"{prefix}{k}."))
    return out


def config_differences(
    saved: Any,
    current: Any,
    *,
    defaults: dict[str, Any] | None = None,
    ignore: Iterable[str] = (),
    accept_absent: Iterable[str] = (),
) -> dict[str, tuple[Any, Any]]:
    """The one rule for whether a run may continue from a checkpoint: the settings that
    differ between two nested dicts of plain JSON values.

    Args:
      saved: what the checkpoint recorded.
      current: the same for the run now (pass it through :func:`to_plain_json` first).
      defaults: ``{'dotted.key': value}`` for settings added after older checkpoints were
        made: a side that lacks the key counts as having this value.
      ignore: dotted keys (or prefixes of them) that may differ.
      accept_absent: dotted keys that ``saved`` may lack: then they are not compared (a
        setting older checkpoints could not record and no default stands for, e.g. a
        fingerprint of the data). When ``saved`` has one, it must match as usual.

    Returns:
      ``{'dotted.key': (saved value, current value)}`` in key order; a key only one side
      has (and no default) counts as ``'<absent>'`` on the other.
    """
    defaults = defaults or {}
    ignored = tuple(ignore)
    unknown = set(accept_absent)
    a, b = _dotted(saved), _dotted(current)
    out: dict[str, tuple[Any, Any]] = {}
    for k in sorted(set(a) | set(b), key=str):
        if any(k == i or k.startswith(f"{i}.") for i in ignored):
            continue
        if k in unknown and k not in a:
            continue
        va, vb = a.get(k, defaults.get(k, _ABSENT)), b.get(k, defaults.get(k, _ABSENT))
        if va != vb:
            out[k] = (va, vb)
    return out


def describe_differences(differences: dict[str, tuple[Any, Any]], limit: int = 8) -> str:
    """``'model.num_filters: [4] in the checkpoint, [8] now; ...'``.

    Args:
      differences: ``{'dotted.key': (saved value, current value)}`` from
        :func:`config_differences`.
      limit: how many differences to spell out (default 8); the rest are counted.

    Returns:
      One line, the differences joined by ``'; '`` in the mapping's order, ending
      ``'; and N more'`` when there are more than ``limit``.

    Raises:
      TypeError: a value that :func:`json.dumps` cannot write (plain JSON values never are).
    """
    items = [
        f"{k}: {json.dumps(a)} in the checkpoint, {json.dumps(b)} now"
        for k, (a, b) in list(differences.items())[:limit]
    ]
    more = len(differences) - limit
    return "; ".join(items) + (f"; and {more} more" if more > 0 else "")


def check_resumable(
    npz: Path, meta: dict[str, Any], identity: dict[str, Any], *, ignore: Iterable[str] = ()
) -> None:
    """Raise unless the checkpoint ``npz`` (sidecar ``meta``) can continue a run whose
    settings are ``identity`` (``{'model', 'solver', 'data'}``; ``num_epochs`` may differ,
    and so may the dotted keys in ``ignore``, e.g. ``'data.fingerprint'``). A checkpoint
    made before a setting existed counts as made with its :data:`IDENTITY_DEFAULTS` value;
    one without a data fingerprint (:data:`IDENTITY_ACCEPT_ABSENT`) is not checked on it.

    Args:
      npz: the checkpoint's path (named in the messages).
      meta: its sidecar metadata (``format`` and the ``identity`` keys).
      identity: the run's settings as plain JSON values, e.g. ``{'model': {...},
        'solver': {...}, 'data': {...}}``; each top-level key is compared with ``meta``'s.
      ignore: further dotted keys (or prefixes) that may differ.

    Returns:
      None: the checkpoint may be resumed.

    Raises:
      ValueError: another checkpoint format (naming it).
      CheckpointMismatchError: a differently configured run (naming each difference).
    """
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"checkpoint {npz} has format {meta.get('format')!r}, not {CHECKPOINT_FORMAT}: "
            "it was written by another jcnn version and lacks what resuming needs"
        )
    saved = {k: meta.get(k) for k in identity}
    differences = config_differences(
        saved, identity, defaults=IDENTITY_DEFAULTS, ignore=("solver.num_epochs", *ignore),
        accept_absent=IDENTITY_ACCEPT_ABSENT,
    )  # fmt: skip
    if differences:
        data = (
            " (the data differ from the data it was trained on: check_data=False accepts "
            "that)" if "data.fingerprint" in differences else ""
        )  # fmt: skip
        raise CheckpointMismatchError(
            f"checkpoint {npz} was made by a differently configured run: "
            f"{describe_differences(differences)}{data}. Resume with the settings it was made "
            "with, or start the new run in another checkpoint_dir",
            differences,
        )


def run_checkpoint_path(directory: Path, iteration: int, iterations_per_epoch: int) -> Path:
    """Where a run saves after ``iteration`` updates: ``epoch_{epoch:03d}.npz`` at an epoch's
    end, else ``step_{iteration:08d}.npz``.

    Args:
      directory: the run's checkpoint folder.
      iteration: updates done so far.
      iterations_per_epoch: updates per epoch (a positive int).

    Returns:
      ``directory / 'epoch_{epoch:03d}.npz'`` when ``iteration`` ends an epoch, else
      ``directory / 'step_{iteration:08d}.npz'``.

    Raises:
      ZeroDivisionError: ``iterations_per_epoch`` is 0.
    """
    if iteration % iterations_per_epoch == 0:
        return directory / f"epoch_{iteration // iterations_per_epoch:03d}.npz"
    return directory / f"step_{iteration:08d}.npz"


def _run_files(directory: Path | None, iterations_per_epoch: int) -> list[tuple[int, Path]]:
    """``(iteration, npz)`` of every run-checkpoint ``.npz`` in ``directory`` (by name)."""
    out = []
    if directory is not None and directory.is_dir():
        for pattern in CHECKPOINT_PATTERNS:
            for npz in directory.glob(pattern):
                m = _RUN_NAME.fullmatch(npz.name)
                if m and npz.is_file():
                    n = int(m.group(2))
                    out.append((n * iterations_per_epoch if m.group(1) == "epoch" else n, npz))
    return sorted(out)


def run_checkpoints(directory: Path | None, iterations_per_epoch: int) -> list[tuple[int, Path]]:
    """``(iteration, npz)`` of the complete run checkpoints in ``directory``, oldest first.

    Args:
      directory: the run's checkpoint folder (None or a missing folder: none).
      iterations_per_epoch: updates per epoch, to turn ``epoch_N`` into an iteration.

    Returns:
      ``[(iteration, npz path), ...]`` of the ``epoch_*.npz``/``step_*.npz`` files whose
      sidecar exists, sorted by iteration (checksums are not verified here).
    """
    return [
        (n, npz)
        for n, npz in _run_files(directory, iterations_per_epoch)
        if sidecar_path(npz).is_file()
    ]


def prune_run_checkpoints(
    directory: Path, *, iterations_per_epoch: int, keep_epochs: int = 0
) -> list[Path]:
    """The one pruning policy: keep the newest ``keep_epochs`` epoch checkpoints (all if 0),
    the newest checkpoint and at least one before it (so a corrupt newest one has a
    fallback); delete the rest, each sidecar first (the sidecar marks a checkpoint
    complete). Also deletes orphans: run-checkpoint ``.npz`` files without a sidecar that
    are older than the newest complete checkpoint (a kill while pruning, between the two
    deletes, leaves one); a newer one is left alone. Returns the deleted ``.npz`` paths.

    Args:
      directory: the run's checkpoint folder.
      iterations_per_epoch: updates per epoch, to order ``epoch_*`` and ``step_*`` files.
      keep_epochs: how many epoch checkpoints to keep, newest first (0: all).

    Returns:
      The deleted ``.npz`` paths: the pruned checkpoints, oldest first, then the orphans.

    Raises:
      OSError: a file cannot be deleted (other than one already gone).
    """
    complete = run_checkpoints(directory, iterations_per_epoch)
    found = [npz for _, npz in complete]
    newest = complete[-1][0] if complete else 0
    orphans = [
        npz
        for n, npz in _run_files(directory, iterations_per_epoch)
        if n < newest and not sidecar_path(npz).exists()
    ]
    epochs = [npz for npz in found if npz.name.startswith("epoch_")]
    keep = set(epochs[-keep_epochs:] if keep_epochs else epochs)
    keep.update(found[-1:])
    for npz in reversed(found):
        if len(keep) >= 2:
            break
        keep.add(npz)
    removed = [npz for npz in found if npz not in keep]
    for npz in removed:
        sidecar_path(npz).unlink(missing_ok=True)
        npz.unlink(missing_ok=True)
    for npz in orphans:
        npz.unlink(missing_ok=True)
    return removed + orphans


def resume_checkpoint(
    directory: Path | None, resume: bool | str, iterations_per_epoch: int
) -> tuple[Path, dict[str, Any]] | None:
    """The checkpoint a run in ``directory`` starts from, by the ``resume`` mode:
    ``'auto'`` the newest good one if any (corrupt ones are moved aside), ``True`` the same
    but one must exist, ``False`` none, and the folder must hold none.

    Args:
      directory: the run's checkpoint folder (None: no checkpoints, nothing to resume).
      resume: ``True``, ``False`` or ``'auto'``.
      iterations_per_epoch: updates per epoch (for the ``resume=False`` check).

    Returns:
      ``(npz path, metadata)`` of the checkpoint to start from (:func:`latest_checkpoint`),
      or None to start afresh.

    Raises:

      ValueError: ``resume`` is none of ``True``, ``False``, ``'auto'``; or ``False`` and
        ``directory`` holds checkpoints.
      FileNotFoundError: ``True`` and there is no good checkpoint.
    """
    if not any(resume is c or (isinstance(c, str) and resume == c) for c in RESUME_CHOICES):
        raise ValueError(f"resume must be True, False or 'auto', got {resume!r}")
    if directory is None:
        return None
    if resume is False:
        if run_checkpoints(directory, iterations_per_epoch):
            raise ValueError(
                f"checkpoint_dir {directory} already holds checkpoints; with resume=False "
                "the solver would mix two runs: empty it, choose another checkpoint_dir, or "
                "pass resume='auto' to continue from them"
            )
        return None
    found = latest_checkpoint(directory, CHECKPOINT_PATTERNS)
    if found is None and resume is True:
        raise FileNotFoundError(f"resume=True, but {directory} holds no complete checkpoint")
    return found
