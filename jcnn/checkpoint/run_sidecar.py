"""The schema of a run checkpoint's JSON sidecar: every value a run reads back, of its type and
in its range, and the histories consistent with each other and with the counters; applied to
every sidecar, signed or not (see :func:`check_run_sidecar`)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from jcnn.checkpoint.store import CorruptCheckpointError

__all__ = ["CHECKPOINT_FORMAT", "check_run_sidecar"]

# Version of what a Solver checkpoint holds (arrays and sidecar keys); resuming needs this one.
CHECKPOINT_FORMAT = 2


def _is_int(v: Any, minimum: int = 0) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= minimum


def _is_number(v: Any, low: float = -math.inf, high: float = math.inf) -> bool:
    """A finite JSON number in [low, high]."""
    ok = isinstance(v, int | float) and not isinstance(v, bool)
    return ok and math.isfinite(v) and low <= v <= high


def _missing(v: Any) -> bool:
    """No accuracy: null, or NaN as older sidecars wrote it."""
    return v is None or (isinstance(v, float) and math.isnan(v))


def _is_accuracy(v: Any) -> bool:
    """In [0, 1], or missing: null (NaN, as older sidecars wrote it) for no validation split."""
    return _missing(v) or _is_number(v, 0.0, 1.0)


def _is_generator_state(v: Any) -> bool:
    """Exactly what ``PCG64().state`` gives: NumPy itself takes more (any int, True for 1,
    an even increment) and then draws numbers no generator of a run would."""
    if not (isinstance(v, dict) and set(v) == {"bit_generator", "state", "has_uint32",
                                               "uinteger"}):  # fmt: skip
        return False
    state = v["state"]
    return (
        v["bit_generator"] == "PCG64"
        and isinstance(state, dict) and set(state) == {"state", "inc"}
        and _is_int(state["state"]) and state["state"] < 2**128
        and _is_int(state["inc"]) and state["inc"] < 2**128
        and state["inc"] % 2 == 1  # made as 2 * stream + 1
        and _is_int(v["has_uint32"]) and v["has_uint32"] <= 1
        and _is_int(v["uinteger"]) and v["uinteger"] < 2**32
    )  # fmt: skip


# A run's clock is far below this (about 32 years); a larger one is no clock a run kept, and
# adding a step's seconds to it would be lost to round-off (1e300 + 5.0 == 1e300).
_LONGEST_RUN_S = 1e9


def _is_seconds(v: Any) -> bool:
    return _is_number(v, 0.0, _LONGEST_RUN_S)


def _is_check(v: Any) -> bool:
    """One accuracy check of ``eval_history``, with what a resumed run reads of it."""
    return (
        isinstance(v, dict) and _is_int(v.get("epoch")) and _is_int(v.get("iteration"))
        and _is_accuracy(v.get("train_acc")) and _is_accuracy(v.get("val_acc"))
        and _is_number(v.get("loss")) and _is_number(v.get("lr"))
        and _is_seconds(v.get("seconds"))
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
    "lr_history": ("a list of finite numbers >= 0", lambda v: isinstance(v, list) and all(
        _is_number(x, 0.0) for x in v)),
    "eval_history": ("a list of accuracy checks", lambda v: isinstance(v, list) and all(
        _is_check(x) for x in v)),
    "best_val_acc": ("an accuracy in [0, 1] or null", _is_accuracy),
    "best_epoch": ("an int >= 0 or null", lambda v: v is None or _is_int(v)),
    "elapsed_s": (f"seconds in [0, {_LONGEST_RUN_S:g}]", _is_seconds),
}  # fmt: skip
# Values that older checkpoints do not record, checked when present.
_OPTIONAL_RUN_FIELDS: dict[str, tuple[str, Any]] = {
    "outside_s": (f"seconds in [0, {_LONGEST_RUN_S:g}]", _is_seconds),
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
    if meta.get("outside_s", 0.0) > meta["elapsed_s"]:
        raise CorruptCheckpointError(
            f"checkpoint {npz} has outside_s={meta['outside_s']} in its sidecar, more than the "
            f"run's elapsed_s={meta['elapsed_s']} of which it is a part"
        )
    _check_history(npz, meta)


def _check_history(npz: Path, meta: dict[str, Any]) -> None:
    """The accuracy checks agree with the counters and the histories with the checks (see
    :func:`_history_problem`), and the best check with both (:func:`_best_problem`)."""
    problem = _history_problem(meta) or _best_problem(meta)
    if problem:
        raise CorruptCheckpointError(f"checkpoint {npz} has {problem} in its sidecar")


def _history_problem(meta: dict[str, Any]) -> str | None:
    """What is wrong with the sidecar's accuracy checks, or None. A run checks after its
    first update, at the end of every epoch (``epoch = iteration // per_epoch``) and after
    its last update, each check recording the loss of its update, and each history holds one
    field of each check, in order."""
    checks, done, per_epoch = meta["eval_history"], meta["iteration"], meta["iterations_per_epoch"]
    lengths = {len(meta[name]) for name in ("train_acc_history", "val_acc_history", "lr_history")}
    if lengths != {len(checks)}:
        return f"histories of {sorted(lengths)} entries for {len(checks)} accuracy checks"
    last = meta.get("num_iterations")  # the run's last update is checked too
    ends = {last} if _is_int(last, 1) and last <= done else set()
    due = sorted({1, *range(per_epoch, done + 1, per_epoch), *ends} if done else set())
    at = [c["iteration"] for c in checks]
    if at != due:
        return (
            f"accuracy checks at iterations {_shown(at)}, where a run at iteration {done} "
            f"checked at {_shown(due)}"
        )
    split = meta.get("data", {}).get("num_val") if isinstance(meta.get("data"), dict) else None
    for c in checks:
        if _missing(c["train_acc"]) or (_is_int(split) and _missing(c["val_acc"]) != (split == 0)):
            return (
                f"an accuracy check with train_acc={c['train_acc']}, val_acc={c['val_acc']} "
                f"in a run of {split} validation images"
            )
        if c["epoch"] != c["iteration"] // per_epoch:
            return f"an accuracy check of epoch {c['epoch']} at iteration {c['iteration']}"
        if c["loss"] != meta["loss_history"][c["iteration"] - 1]:
            return f"an accuracy check's loss {c['loss']} that is not iteration {c['iteration']}'s"
    for name, field in (("train_acc_history", "train_acc"), ("val_acc_history", "val_acc"),
                        ("lr_history", "lr")):  # fmt: skip
        if meta[name] != [c[field] for c in checks]:
            return f"a {name} that differs from its accuracy checks' {field}"
    return None


def _best_problem(meta: dict[str, Any]) -> str | None:
    """What is wrong with the sidecar's best check, or None: the run's own choice among its
    checks (the first with the highest validation accuracy, or the last without
    ``select_best``), none before the first check, and the best parameters stored exactly
    when the run selects them and has checked (``has_best``: otherwise a resumed run would
    drop its best parameters, or take the stand-in as best)."""
    checks, best_epoch = meta["eval_history"], meta["best_epoch"]
    solver = meta.get("solver")
    select_best = solver.get("select_best", True) if isinstance(solver, dict) else True
    if (best_epoch is None) != (not checks):
        return f"best_epoch={best_epoch} after {len(checks)} accuracy checks"
    if checks:
        best = checks[-1]
        if select_best is True:
            accs = [c["val_acc"] for c in checks]
            best = checks[accs.index(max(accs))] if None not in accs else best
        if (best_epoch, meta["best_val_acc"]) != (best["epoch"], best["val_acc"]):
            return (
                f"best_epoch={best_epoch} with best_val_acc={_shown(meta['best_val_acc'])}, "
                f"where its checks make epoch {best['epoch']} ({best['val_acc']}) the best"
            )
    if meta["has_best"] != (select_best is True and bool(checks)):
        return (
            f"has_best={meta['has_best']} after {len(checks)} accuracy checks with "
            f"select_best={select_best}"
        )
    return None
