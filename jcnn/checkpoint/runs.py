"""A training run's checkpoints: their names, which are kept, which one a run starts from,
and whether it may (see :mod:`jcnn.checkpoint`)."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from jcnn.checkpoint.folder import latest_checkpoint
from jcnn.checkpoint.store import CorruptCheckpointError, sidecar_path

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_PATTERNS",
    "IDENTITY_ACCEPT_ABSENT",
    "IDENTITY_DEFAULTS",
    "RESUME_CHOICES",
    "CheckpointMismatchError",
    "check_resumable",
    "check_run_sidecar",
    "latest_run_checkpoint",
    "config_differences",
    "describe_differences",
    "prune_run_checkpoints",
    "resume_checkpoint",
    "run_checkpoint_path",
    "run_checkpoints",
]

# Version of what a Solver checkpoint holds (arrays and sidecar keys); resuming needs this one.
CHECKPOINT_FORMAT = 2
CHECKPOINT_PATTERNS = ("epoch_*.npz", "step_*.npz")
_RUN_NAME = re.compile(r"(epoch|step)_(\d+)\.npz")
RESUME_CHOICES = (True, False, "auto")
# Settings added after checkpoints were first made: one a checkpoint lacks had this value.
IDENTITY_DEFAULTS: dict[str, Any] = {
    "model.label_smoothing": 0.0,
    "model.convs_per_block": 2,
    "model.gelu_after_add": False,
    "solver.lr_schedule": "exponential",
    "solver.warmup_epochs": 0.0,
    "solver.compute_dtype": None,
    "solver.test_time_flip": False,
    "solver.test_time_translate": 0,
    "solver.optimizer": None,
    "solver.sampling": "replacement",
    "solver.select_best": True,
    "solver.lookahead": None,
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
      CheckpointMismatchError: another checkpoint format (naming it), or a differently
        configured run (naming each difference).
    """
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointMismatchError(
            f"checkpoint {npz} has format {meta.get('format')!r}, not {CHECKPOINT_FORMAT}: "
            "it was written by another jcnn version and lacks what resuming needs",
            {"format": (meta.get("format"), CHECKPOINT_FORMAT)},
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


def _is_int(v: Any, minimum: int = 0) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= minimum


def _is_number(v: Any, low: float = -math.inf, high: float = math.inf) -> bool:
    """A finite JSON number in [low, high]."""
    ok = isinstance(v, int | float) and not isinstance(v, bool)
    return ok and math.isfinite(v) and low <= v <= high


def _is_accuracy(v: Any) -> bool:
    """In [0, 1], or missing: null (NaN, as older sidecars wrote it) for no validation split."""
    return v is None or (isinstance(v, float) and math.isnan(v)) or _is_number(v, 0.0, 1.0)


def _is_generator_state(v: Any) -> bool:
    try:
        np.random.PCG64().state = v
    except (TypeError, ValueError, KeyError, OverflowError):
        return False
    return True


def _is_check(v: Any) -> bool:
    """One accuracy check of ``eval_history``, with what a resumed run reads of it."""
    return (
        isinstance(v, dict) and _is_int(v.get("epoch")) and _is_int(v.get("iteration"))
        and _is_accuracy(v.get("train_acc")) and _is_accuracy(v.get("val_acc"))
        and _is_number(v.get("lr")) and _is_number(v.get("seconds"), 0.0)
    )  # fmt: skip


# What a run reads back from its checkpoint's sidecar, and what each value must be.
_RUN_FIELDS: dict[str, tuple[str, Any]] = {
    "iteration": ("an int >= 0", _is_int),
    "epoch": ("an int >= 0", _is_int),
    "num_epochs": ("an int >= 1", lambda v: _is_int(v, 1)),
    "iterations_per_epoch": ("an int >= 1", lambda v: _is_int(v, 1)),
    "has_best": ("true or false", lambda v: isinstance(v, bool)),
    "host_rng": ("a numpy PCG64 state", _is_generator_state),
    "loss_history": ("a list of finite numbers", lambda v: isinstance(v, list) and all(
        _is_number(x) for x in v)),
    "train_acc_history": ("a list of accuracies", lambda v: isinstance(v, list) and all(
        _is_accuracy(x) for x in v)),
    "val_acc_history": ("a list of accuracies", lambda v: isinstance(v, list) and all(
        _is_accuracy(x) for x in v)),
    "lr_history": ("a list of finite numbers", lambda v: isinstance(v, list) and all(
        _is_number(x) for x in v)),
    "eval_history": ("a list of accuracy checks", lambda v: isinstance(v, list) and all(
        _is_check(x) for x in v)),
    "best_val_acc": ("an accuracy in [0, 1] or null", _is_accuracy),
    "best_epoch": ("an int >= 0 or null", lambda v: v is None or _is_int(v)),
    "elapsed_s": ("a finite number >= 0", lambda v: _is_number(v, 0.0)),
}  # fmt: skip
# Values that older checkpoints do not record, checked when present.
_OPTIONAL_RUN_FIELDS: dict[str, tuple[str, Any]] = {
    "outside_s": ("a finite number >= 0", lambda v: _is_number(v, 0.0)),
}


def _shown(value: Any) -> str:
    shown = repr(value)
    return shown if len(shown) <= 60 else shown[:57] + "..."


def check_run_sidecar(npz: Path, meta: dict[str, Any]) -> None:
    """Raise :class:`~jcnn.checkpoint.CorruptCheckpointError` unless a run's checkpoint
    sidecar holds every value a run reads back, each of its type and in its range (the
    schema :data:`_RUN_FIELDS`), whether or not the sidecar carries its checksum. A sidecar
    without a format (an int >= 1) is corrupt; one of another format is left to
    :func:`check_resumable`, which names the format.

    Args:
      npz: the checkpoint's path (named in the message).
      meta: its sidecar metadata.

    Raises:
      CorruptCheckpointError: naming the first value that is missing or out of its range.
    """
    if not _is_int(meta.get("format"), 1):  # every run checkpoint jcnn wrote names it
        raise CorruptCheckpointError(
            f"checkpoint {npz} has no checkpoint format in its sidecar (format="
            f"{_shown(meta.get('format'))}), so it is no run checkpoint jcnn wrote"
        )
    if meta["format"] != CHECKPOINT_FORMAT:
        return
    for name, (what, ok) in (_RUN_FIELDS | _OPTIONAL_RUN_FIELDS).items():
        if name not in meta:
            if name in _OPTIONAL_RUN_FIELDS:
                continue
            raise CorruptCheckpointError(f"checkpoint {npz} lacks {name!r} in its sidecar")
        if not ok(meta[name]):
            raise CorruptCheckpointError(
                f"checkpoint {npz} has {name}={_shown(meta[name])} in its sidecar, which must "
                f"be {what}"
            )
    done, per_epoch = meta["iteration"], meta["iterations_per_epoch"]
    if meta["epoch"] != done // per_epoch or len(meta["loss_history"]) != done:
        raise CorruptCheckpointError(
            f"checkpoint {npz} claims epoch {meta['epoch']} and "
            f"{len(meta['loss_history'])} losses after {done} iterations of {per_epoch} per epoch"
        )
    _check_history(npz, meta)


def _check_history(npz: Path, meta: dict[str, Any]) -> None:
    """The accuracy checks agree with each other and with the counters: one entry per check
    in each history, in order, none after the checkpoint, the best epoch one of them."""
    checks = meta["eval_history"]
    lengths = {len(meta[name]) for name in ("train_acc_history", "val_acc_history", "lr_history")}
    where = [(c["epoch"], c["iteration"]) for c in checks]
    problem = None
    if lengths != {len(checks)}:
        problem = f"histories of {sorted(lengths)} entries for {len(checks)} accuracy checks"
    elif where != sorted(where) or any(
        e > meta["epoch"] or i > meta["iteration"] for e, i in where
    ):
        problem = "accuracy checks out of order, or after the checkpoint's own iteration"
    else:
        problem = _best_problem(meta)
    if problem:
        raise CorruptCheckpointError(f"checkpoint {npz} has {problem} in its sidecar")


def _best_problem(meta: dict[str, Any]) -> str | None:
    """What is wrong with the sidecar's best check, or None: the best epoch is one that was
    checked (none before the first check), its accuracy that check's, and the best parameters
    stored exactly when the run selects them and has checked (``has_best``: otherwise a
    resumed run would drop its best parameters, or take the stand-in as best)."""
    checks, best_epoch = meta["eval_history"], meta["best_epoch"]
    solver = meta.get("solver")
    select_best = solver.get("select_best", True) if isinstance(solver, dict) else True
    if (best_epoch is None) != (not checks):
        return f"best_epoch={best_epoch} after {len(checks)} accuracy checks"
    if checks and meta["best_val_acc"] not in {
        c["val_acc"] for c in checks if c["epoch"] == best_epoch
    }:
        if best_epoch not in {c["epoch"] for c in checks}:
            return f"best_epoch={best_epoch}, an epoch with no accuracy check"
        return f"best_val_acc={_shown(meta['best_val_acc'])}, not epoch {best_epoch}'s accuracy"
    if meta["has_best"] != (select_best is True and bool(checks)):
        return (
            f"has_best={meta['has_best']} after {len(checks)} accuracy checks with "
            f"select_best={select_best}"
        )
    return None


def latest_run_checkpoint(directory: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest good checkpoint of a run's folder: checksums and the run schema
    (:func:`check_run_sidecar`) hold; others met on the way are moved aside."""
    return latest_checkpoint(directory, CHECKPOINT_PATTERNS, validate=check_run_sidecar)


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
    found = latest_run_checkpoint(directory)
    if found is None and resume is True:
        raise FileNotFoundError(f"resume=True, but {directory} holds no complete checkpoint")
    return found
