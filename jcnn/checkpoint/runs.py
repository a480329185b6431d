"""A training run's checkpoints: their names, which are kept, which one a run starts from,
and whether it may (see :mod:`jcnn.checkpoint`)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from jcnn.checkpoint.folder import latest_checkpoint
from jcnn.checkpoint.run_sidecar import CHECKPOINT_FORMAT, check_run_sidecar
from jcnn.checkpoint.store import sidecar_path

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
    "solver.selection": None,
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
