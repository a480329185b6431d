"""What the CIFAR-10 apps share: flags and their checks, the run loop, the run's files.

The apps (:mod:`experiments.vgg_cifar`, :mod:`experiments.three_layer_cifar`) only add their
model's flags and a ``make_model(config)``; everything else is here::

    config = config_from_flags(fv, names)          # plain dict of flag values
    model = make_model(config)                     # checked before any data is loaded
    summary = train_and_evaluate(config, model, RunWriter(workdir), app_name='vgg_cifar')

Bad flags stop the program with one line naming the flag, before data is loaded: per-flag
checks are absl validators (they run while the command line and flagfiles are parsed), checks
that involve several flags are multi-flag validators, and the model itself is built (its
dataclass checks every field; no arrays yet) before the data.

A run writes into its workdir, through one :class:`RunWriter` (only process 0 writes)::

    flags.cfg        the flags as a flagfile: --flagfile=<workdir>/flags.cfg reruns it
    config.json      flags, model, versions and device, written when the run starts
    metrics.jsonl    {"iteration", "epoch", "loss"} every print_every iterations and
                     {"epoch", "train_acc", "val_acc", "lr", ...} after each accuracy check
    summary.json     final/best accuracies, test accuracy of the best parameters, timings
    loss.png, accuracy.png, filters.png   (after every epoch and at the end)
    checkpoints/     epoch_XXX.npz + .json from the Solver (the last --keep_checkpoints),
                     step_XXXXXXXX.npz + .json every --checkpoint_every iterations (the
                     newest two checkpoints are always kept), best.npz + .json: the
                     parameters with the best validation accuracy
    nonfinite.json   only if training met a non-finite loss: the iteration, loss, learning
                     rate and the minibatch's indices
    evaluation.json  only after ``python -m experiments.evaluate --workdir=...``: the best
                     parameters' val/test accuracy again, plain and with test-time flips

Crashes: running the same command again (same --workdir) resumes from the newest complete
checkpoint whose checksums hold (a corrupt one is set aside with a warning and the one before
it used) and ends exactly as an uninterrupted run would; metrics.jsonl is rewritten from the
checkpoint's histories, so no line appears twice. A checkpoint made with other flags (those
that shape the model or the training, see :data:`RESUME_MAY_DIFFER` for the rest) stops the
app with one line naming them. ``--overwrite`` starts over instead.

Scaling out: training is data-parallel over ``--num_devices`` devices per process (default:
all local ones); ``--batch_size`` is the global batch, split evenly over them (a batch that
does not divide stops the app before the data is loaded). Several hosts: start one process
per host with the same flags plus ``--coordinator_address=host0:port --num_processes=N
--process_id=i``; :func:`main` calls ``jax.distributed.initialize`` before anything touches a
device. Every process loads the (small) dataset and gathers only its rows of each global
batch; only process 0 prints and writes; every process reads the checkpoints to resume, so
the workdir must then be on a filesystem they share. ``--compute_dtype=bfloat16`` runs the
network in bfloat16 (parameters, optimiser state and the loss stay float32).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from absl import flags

from jcnn.optim import LR_SCHEDULES, UPDATE_RULES
from jcnn.parallel import COMPUTE_DTYPES

# ----------------------------------------------------------------------------------- flags

CIFAR10_TRAIN, CIFAR10_TEST = 50_000, 10_000
RESULT_FILES = ("metrics.jsonl", "summary.json")
# Flags that may change when a run resumes: where things are, how often it reports and
# checkpoints, how long it runs (more epochs extend it). Every other flag must match.
RESUME_MAY_DIFFER = (
    "workdir", "overwrite", "data_dir", "num_test", "num_epochs", "print_every",
    "plot_every_epoch", "keep_checkpoints", "checkpoint_every", "debug_nans",
    "num_devices", "coordinator_address", "num_processes", "process_id",
)  # fmt: skip
# Flags added after runs were made: a checkpoint without them was made with these values.
ADDED_FLAG_DEFAULTS = {
    "lr_schedule": "exponential", "warmup_epochs": 0.0, "test_time_flip": False,
    "label_smoothing": 0.0, "cutout": 0,
}  # fmt: skip


class IntListParser(flags.ListParser):
    """Comma-separated positive integers: ``64,64,128`` -> ``[64, 64, 128]``."""

    def parse(self, argument: Any) -> list[int]:
        items = super().parse(argument)
        out = []
        for item in items:
            try:
                value = int(item)
            except (TypeError, ValueError):
                raise ValueError(f"{item!r} is not an integer") from None
            if value <= 0:
                raise ValueError(f"entries must be positive integers, got {value}")
            out.append(value)
        return out

    def flag_type(self) -> str:
        return "list of positive integers"


class WeightScaleParser(flags.ArgumentParser):
    """A positive float (std of the Gaussian init) or ``he`` (std ``sqrt(2 / fan_in)``)."""

    def parse(self, argument: Any) -> float | str:
        if isinstance(argument, str) and argument.strip().lower() == "he":
            return "he"
        try:
            value = float(argument)
        except (TypeError, ValueError):
            raise ValueError(f"must be a positive float or 'he', got {argument!r}") from None
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"must be a positive float or 'he', got {argument!r}")
        return value

    def flag_type(self) -> str:
        return "positive float or 'he'"


def define_int_list(
    name: str, default: Sequence[int], help: str, fv: flags.FlagValues, *, allow_empty=False
) -> None:
    """A ``--name=1,2,3`` flag holding a list of positive ints (empty only if allowed)."""
    flags.DEFINE(
        IntListParser(), name, list(default), help, flag_values=fv,
        serializer=flags.CsvListSerializer(","),
    )  # fmt: skip
    if not allow_empty:
        check(fv, name, bool, "a non-empty list")


def check(fv: flags.FlagValues, name: str, ok: Callable[[Any], bool], requirement: str) -> None:
    """Register an absl validator: ``--name`` must satisfy ``ok`` (None passes)."""

    def validator(value: Any) -> bool:
        if value is None or ok(value):
            return True
        raise flags.ValidationError(f"must be {requirement}, got {value!r}")

    flags.register_validator(name, validator, flag_values=fv)


def check_model(
    fv: flags.FlagValues, names: Sequence[str], build: Callable[[Mapping[str, Any]], Any]
) -> None:
    """Register a multi-flag validator: ``build({name: value})`` must not raise ValueError
    (e.g. a model dataclass built from just these flags)."""

    def validator(values: Mapping[str, Any]) -> bool:
        try:
            build(values)
        except ValueError as e:
            raise flags.ValidationError(str(e)) from None
        return True

    flags.register_multi_flags_validator(list(names), validator, flag_values=fv)


def _finite_positive(v: float) -> bool:
    return math.isfinite(v) and v > 0


COMMON_FLAGS = (
    "workdir", "overwrite", "data_dir", "num_train", "num_val", "num_test",
    "weight_scale", "reg", "label_smoothing", "layers", "conv_impl", "pool_impl",
    "update_rule", "learning_rate", "lr_decay", "lr_schedule", "warmup_epochs",
    "batch_size", "num_epochs", "seed",
    "augment", "augment_pad", "cutout", "test_time_flip", "print_every", "num_train_samples",
    "num_val_samples",
    "plot_every_epoch", "keep_checkpoints", "checkpoint_every", "debug_nans",
    "num_devices", "compute_dtype", "coordinator_address", "num_processes", "process_id",
)  # fmt: skip
# Where a run executes, not what it computes: left out of the run's flags.cfg.
DEPLOYMENT_FLAGS = ("coordinator_address", "num_processes", "process_id")


def define_common_flags(
    fv: flags.FlagValues,
    *,
    weight_scale: float | str,
    reg: float,
    update_rule: str,
    learning_rate: float,
    lr_decay: float,
    batch_size: int,
    num_epochs: int,
    print_every: int,
) -> None:
    """Define (on ``fv``) and check the flags every app has; the arguments are the app's
    defaults for the hyper-parameters."""
    D = functools.partial
    D(flags.DEFINE_string, flag_values=fv)(
        "workdir", None, "Where the run writes its files (default: runs/<app>-<timestamp>)."
    )
    D(flags.DEFINE_bool, flag_values=fv)(
        "overwrite", False, "Start over in a --workdir that already holds a run (its files are "
        "replaced); without it, the run there resumes from its newest checkpoint.",
    )  # fmt: skip
    D(flags.DEFINE_string, flag_values=fv)(
        "data_dir", None, "Folder holding cifar-10-batches-py/ (or where to download it); "
        "default $JCNN_DATA_DIR, else ~/.cache/jcnn.",
    )  # fmt: skip
    D(flags.DEFINE_integer, flag_values=fv)(
        "num_train", 49_000, "Training images: the first num_train of CIFAR-10's 50000.",
        lower_bound=1,
    )  # fmt: skip
    D(flags.DEFINE_integer, flag_values=fv)(
        "num_val", 1_000, "Validation images, the ones after the training images.", lower_bound=1
    )
    D(flags.DEFINE_integer, flag_values=fv)(
        "num_test", 1_000, "Test images (the first of the test batch); 0: no test accuracy.",
        lower_bound=0,
    )  # fmt: skip
    flags.DEFINE(
        WeightScaleParser(), "weight_scale", weight_scale,
        "Std of the Gaussian weight init, or 'he' for sqrt(2 / fan_in).", flag_values=fv,
        serializer=flags.ArgumentSerializer(),
    )  # fmt: skip
    D(flags.DEFINE_float, flag_values=fv)("reg", reg, "L2 strength: 0.5·reg·Σ W² in the loss.")
    check(fv, "reg", lambda v: math.isfinite(v) and v >= 0, "a finite float >= 0")
    D(flags.DEFINE_float, flag_values=fv)(
        "label_smoothing", 0.0, "Softmax targets (1 - e)·onehot + e/10 instead of one-hot labels "
        "(0: the plain cross-entropy).",
    )  # fmt: skip
    check(fv, "label_smoothing", lambda v: 0.0 <= v < 1.0, "in [0, 1)")
    D(flags.DEFINE_enum, flag_values=fv)(
        "layers", "jcnn", ["jcnn", "reference"],
        "jcnn: the hand-written layers; reference: their autodiff twins.",
    )  # fmt: skip
    D(flags.DEFINE_enum, flag_values=fv)(
        "conv_impl", "xla", ["naive", "im2col", "xla"], "Convolution implementation."
    )
    D(flags.DEFINE_enum, flag_values=fv)(
        "pool_impl", "fast", ["naive", "fast"], "Max-pool implementation."
    )
    D(flags.DEFINE_enum, flag_values=fv)(
        "update_rule", update_rule, list(UPDATE_RULES), "Optimiser (cs231n names, optax inside)."
    )
    D(flags.DEFINE_float, flag_values=fv)("learning_rate", learning_rate, "Initial learning rate.")
    check(fv, "learning_rate", _finite_positive, "a finite float > 0")
    D(flags.DEFINE_float, flag_values=fv)(
        "lr_decay", lr_decay, "The learning rate is multiplied by this after every epoch."
    )
    check(fv, "lr_decay", _finite_positive, "a finite float > 0")
    D(flags.DEFINE_enum, flag_values=fv)(
        "lr_schedule", "exponential", list(LR_SCHEDULES), "exponential: times --lr_decay after "
        "every epoch (cs231n); cosine: annealed to 0 over the run (needs --lr_decay=1).",
    )  # fmt: skip
    D(flags.DEFINE_float, flag_values=fv)(
        "warmup_epochs", 0.0, "Ramp the learning rate up linearly over this many epochs first."
    )
    check(fv, "warmup_epochs", lambda v: math.isfinite(v) and v >= 0, "a finite float >= 0")
    D(flags.DEFINE_integer, flag_values=fv)(
        "batch_size", batch_size, "Minibatch size.", lower_bound=1
    )
    D(flags.DEFINE_integer, flag_values=fv)("num_epochs", num_epochs, "Epochs.", lower_bound=1)

    def schedule_fits(values: Mapping[str, Any]) -> bool:
        if values["lr_schedule"] == "cosine" and values["lr_decay"] != 1.0:
            raise flags.ValidationError(
                f"lr_decay={values['lr_decay']} applies to --lr_schedule=exponential only; "
                "--lr_schedule=cosine anneals to 0 by itself: pass --lr_decay=1"
            )
        if values["warmup_epochs"] >= values["num_epochs"]:
            raise flags.ValidationError(
                f"warmup_epochs must be < num_epochs={values['num_epochs']}, "
                f"got {values['warmup_epochs']}"
            )
        return True

    flags.register_multi_flags_validator(
        ["lr_schedule", "lr_decay", "warmup_epochs", "num_epochs"], schedule_fits, flag_values=fv
    )
    D(flags.DEFINE_integer, flag_values=fv)(
        "seed", 0, "Seeds the initialisation, minibatches, dropout and augmentation."
    )
    D(flags.DEFINE_bool, flag_values=fv)(
        "augment", False, "Random crops (zero padding --augment_pad) and horizontal flips of "
        "every minibatch, inside the jitted step.",
    )  # fmt: skip
    D(flags.DEFINE_integer, flag_values=fv)(
        "augment_pad", 4, "Zero padding per side for the random crops.", lower_bound=0
    )
    D(flags.DEFINE_integer, flag_values=fv)(
        "cutout", 0, "With --augment: also zero a square of this side at a random place in "
        "every training image (cutout; 0: none).", lower_bound=0,
    )  # fmt: skip

    def cutout_needs_augment(values: Mapping[str, Any]) -> bool:
        if values["cutout"] and not values["augment"]:
            raise flags.ValidationError(
                f"cutout={values['cutout']} is part of the augmentation: add --augment "
                "(or --cutout=0)"
            )
        return True

    flags.register_multi_flags_validator(
        ["cutout", "augment"], cutout_needs_augment, flag_values=fv
    )
    D(flags.DEFINE_bool, flag_values=fv)(
        "test_time_flip", False, "Every accuracy (train, val, test) classifies each image by "
        "its scores plus those of its left-right mirror (twice the evaluation compute).",
    )  # fmt: skip
    D(flags.DEFINE_integer, flag_values=fv)(
        "print_every", print_every, "Print (and log to metrics.jsonl) the loss every this many "
        "iterations.", lower_bound=1,
    )  # fmt: skip
    D(flags.DEFINE_integer, flag_values=fv)(
        "num_train_samples", 1_000, "Training images the train accuracy is measured on.",
        lower_bound=1,
    )  # fmt: skip
    D(flags.DEFINE_integer, flag_values=fv)(
        "num_val_samples", None, "Validation images the val accuracy is measured on "
        "(default: all).", lower_bound=1,
    )  # fmt: skip
    D(flags.DEFINE_bool, flag_values=fv)(
        "plot_every_epoch", True, "Redraw the PNG plots after every epoch (always at the end)."
    )
    D(flags.DEFINE_integer, flag_values=fv)(
        "keep_checkpoints", 3, "Keep the last this many epoch checkpoints (0: all).",
        lower_bound=0,
    )  # fmt: skip
    D(flags.DEFINE_integer, flag_values=fv)(
        "checkpoint_every", None, "Also checkpoint every this many iterations (default: at "
        "epoch ends only); a crash loses at most this many.", lower_bound=1,
    )  # fmt: skip
    D(flags.DEFINE_bool, flag_values=fv)(
        "debug_nans", False, "Turn on jax_debug_nans: every step's outputs are checked for "
        "NaN (a sync per step), and the step that makes one is re-run op by op to name the "
        "primitive.",
    )  # fmt: skip
    D(flags.DEFINE_integer, flag_values=fv)(
        "num_devices", None, "Devices per process to train on, data-parallel: each takes an "
        "equal share of every --batch_size (the global batch; it must divide evenly). "
        "Default: all local devices.", lower_bound=1,
    )  # fmt: skip
    D(flags.DEFINE_enum, flag_values=fv)(
        "compute_dtype", "float32", list(COMPUTE_DTYPES), "Dtype of the network's arithmetic "
        "(bfloat16: mixed precision for GPU/TPU; parameters, optimiser state and the loss "
        "stay float32).",
    )  # fmt: skip
    D(flags.DEFINE_string, flag_values=fv)(
        "coordinator_address", None, "Multi-host runs: host:port of process 0, passed with "
        "--num_processes and --process_id to jax.distributed.initialize.",
    )  # fmt: skip
    D(flags.DEFINE_integer, flag_values=fv)(
        "num_processes", 1, "Multi-host runs: the number of processes (one per host).",
        lower_bound=1,
    )  # fmt: skip
    D(flags.DEFINE_integer, flag_values=fv)(
        "process_id", 0, "Multi-host runs: this process's rank in [0, num_processes); "
        "process 0 writes the run's files.", lower_bound=0,
    )  # fmt: skip

    def processes_fit(values: Mapping[str, Any]) -> bool:
        n, pid = values["num_processes"], values["process_id"]
        if pid >= n:
            raise flags.ValidationError(f"process_id must be in [0, num_processes={n}), got {pid}")
        if n > 1 and not values["coordinator_address"]:
            raise flags.ValidationError(
                f"num_processes={n} needs --coordinator_address (host:port of process 0)"
            )
        return True

    flags.register_multi_flags_validator(
        ["num_processes", "process_id", "coordinator_address"], processes_fit, flag_values=fv
    )

    def split_fits(values: Mapping[str, Any]) -> bool:
        n_train, n_val, n_test = values["num_train"], values["num_val"], values["num_test"]
        if n_train + n_val > CIFAR10_TRAIN:
            raise flags.ValidationError(
                f"num_train + num_val must be <= {CIFAR10_TRAIN} (CIFAR-10's training images), "
                f"got {n_train} + {n_val}"
            )
        if n_test > CIFAR10_TEST:
            raise flags.ValidationError(f"num_test must be <= {CIFAR10_TEST}, got {n_test}")
        return True

    flags.register_multi_flags_validator(
        ["num_train", "num_val", "num_test"], split_fits, flag_values=fv
    )


def config_from_flags(fv: flags.FlagValues, names: Iterable[str]) -> dict[str, Any]:
    """``{name: value}`` for the given flags (lists copied, so the dict is the run's own)."""
    return {n: (list(fv[n].value) if isinstance(fv[n].value, list) else fv[n].value) for n in names}


def flagfile_text(
    fv: flags.FlagValues,
    names: Iterable[str],
    *,
    skip=("workdir", "overwrite", *DEPLOYMENT_FLAGS),
):
    """The flags as a flagfile (one ``--name=value`` per line, unset ones left out)."""
    lines = [fv[n].serialize() for n in names if n not in skip and fv[n].value is not None]
    return "\n".join(lines) + "\n"


def default_workdir(app_name: str, now: dt.datetime | None = None) -> Path:
    now = now or dt.datetime.now()
    return Path("runs") / f"{app_name}-{now:%Y%m%d-%H%M%S}"


class UsageFailure(SystemExit):
    """Stops the app with one line on stderr and exit status 1."""

    def __init__(self, message: str):
        super().__init__("FATAL " + " ".join(str(message).split()))


# ----------------------------------------------------------------------------------- files


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray | jax.Array):
        return np.asarray(obj).tolist()
    if isinstance(obj, np.dtype | type):
        return np.dtype(obj).name if isinstance(obj, np.dtype) else obj.__name__
    if isinstance(obj, Path):
        return str(obj)
    return repr(obj)


def _finite(value: Any) -> Any:
    """Floats as JSON can hold them: NaN and inf become None (strict JSON has neither)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def to_json(obj: Any, **kw: Any) -> str:
    return json.dumps(_finite(obj), default=_json_default, allow_nan=False, **kw)


class RunWriter:
    """Every file a run writes goes through this object, so that one switch decides who
    writes: by default only process 0 (``jax.process_index() == 0``); elsewhere each method
    does nothing and :attr:`checkpoint_dir` is None.

    Whole files (JSON, text) are written to a temporary file and renamed into place, so a
    reader never sees half of one; ``metrics.jsonl`` grows by whole lines.
    """

    def __init__(self, workdir: str | os.PathLike, *, enabled: bool | None = None):
        self.workdir = Path(workdir)
        self.enabled = (jax.process_index() == 0) if enabled is None else bool(enabled)

    def path(self, name: str) -> Path:
        return self.workdir / name

    @property
    def checkpoint_dir(self) -> Path | None:
        return self.path("checkpoints") if self.enabled else None

    @property
    def solver_checkpoint_dir(self) -> Path | None:
        """The Solver's ``checkpoint_dir``: :attr:`checkpoint_dir`, and with several
        processes every process's (all read it to resume together; the Solver writes only
        on process 0)."""
        if self.enabled or jax.process_count() > 1:
            return self.path("checkpoints")
        return None

    def holds_run(self) -> bool:
        """Whether the workdir holds (part of) a run: result files or checkpoints."""
        if any(self.path(n).exists() for n in RESULT_FILES):
            return True
        ckpt = self.path("checkpoints")
        return ckpt.is_dir() and any(ckpt.glob("*.json"))

    def clear(self) -> None:
        """Remove the files of an earlier run (only those this module writes)."""
        if not self.enabled:
            return
        for name in (
            *RESULT_FILES,
            "config.json",
            "nonfinite.json",
            "flags.cfg",
            "loss.png",
            "accuracy.png",
            "filters.png",
        ):
            self.path(name).unlink(missing_ok=True)
        ckpt = self.path("checkpoints")
        if ckpt.is_dir():
            for f in ckpt.glob("*"):
                if f.is_file() and (
                    f.suffix in (".npz", ".json", ".corrupt")
                    or (f.name.startswith(".") and f.suffix == ".tmp")
                ):
                    f.unlink()

    def _atomic(self, name: str, data: bytes) -> None:
        dest = self.path(name)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def write_text(self, name: str, text: str) -> None:
        if self.enabled:
            self._atomic(name, text.encode())

    def write_json(self, name: str, obj: Any) -> None:
        if self.enabled:
            self._atomic(name, (to_json(obj, indent=1) + "\n").encode())

    def append_jsonl(self, name: str, records: Iterable[Mapping[str, Any]]) -> None:
        if not self.enabled:
            return
        lines = "".join(to_json(dict(r)) + "\n" for r in records)
        if lines:
            self.workdir.mkdir(parents=True, exist_ok=True)
            with open(self.path(name), "a") as f:
                f.write(lines)
                f.flush()

    def save_figure(self, name: str, fig: Any) -> None:
        if self.enabled:
            from jcnn import viz

            viz.save_figure(fig, self.path(name))

    def save_checkpoint(self, name: str, tree: Any, metadata: Mapping[str, Any]) -> None:
        if self.enabled:
            from jcnn.checkpoint import save_checkpoint

            save_checkpoint(self.path(name), tree, dict(metadata))

    def prune_checkpoints(self, keep: int) -> None:
        """Delete all but the newest ``keep`` ``checkpoints/epoch_*.npz`` (and sidecars)."""
        if not self.enabled or keep <= 0:
            return
        for npz in sorted(self.path("checkpoints").glob("epoch_*.npz"))[:-keep]:
            npz.with_suffix(".json").unlink(missing_ok=True)  # the sidecar marks it complete
            npz.unlink(missing_ok=True)


# --------------------------------------------------------------------------------- metrics


def iteration_records(
    loss_history: Sequence[float], start: int, print_every: int, iterations_per_epoch: int
) -> list[dict[str, Any]]:
    """Records for the iterations ``start+1 .. len(loss_history)`` (1-based) that the Solver
    prints, i.e. iteration 1, 1 + print_every, ...; ``epoch`` is the epoch the iteration
    belongs to (1-based)."""
    out = []
    for i in range(start + 1, len(loss_history) + 1):
        if (i - 1) % print_every == 0:
            epoch = (i - 1) // iterations_per_epoch + 1
            out.append({"iteration": i, "epoch": epoch, "loss": float(loss_history[i - 1])})
    return out


def history_records(solver: Any, print_every: int) -> list[dict[str, Any]]:
    """Every metrics line of the solver's histories, in the order a run writes them (the
    iteration lines up to each accuracy check, then the check's line): what metrics.jsonl
    holds when the run resumes from a checkpoint."""
    out: list[dict[str, Any]] = []
    logged, ipe = 0, solver.iterations_per_epoch
    for check in solver.eval_history:
        upto = int(check["iteration"])
        out += iteration_records(solver.loss_history[:upto], logged, print_every, ipe)
        out.append(epoch_record(check))
        logged = upto
    return out + iteration_records(solver.loss_history, logged, print_every, ipe)


def epoch_record(check: Mapping[str, Any]) -> dict[str, Any]:
    """The metrics line of one accuracy check (a ``Solver.eval_history`` entry)."""
    return {
        "epoch": int(check["epoch"]),
        "train_acc": float(check["train_acc"]),
        "val_acc": float(check["val_acc"]),
        "lr": float(f"{float(check['lr']):.7g}"),  # the schedule computes in float32
        "at_iteration": int(check["iteration"]),
        "elapsed_s": round(float(check["seconds"]), 3),
    }


def first_conv_weights(params: Mapping[str, Any]) -> np.ndarray | None:
    """The first convolution's filters ``(F, C, HH, WW)``: ``conv1`` (ThreeLayerConvNet) or
    ``conv1_1`` (VGGNet); None if the model has neither."""
    for name in ("conv1", "conv1_1"):
        layer = params.get(name)
        if isinstance(layer, Mapping) and np.ndim(layer.get("w")) == 4:
            return np.asarray(jax.device_get(layer["w"]))
    return None


def have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def write_plots(writer: RunWriter, solver: Any) -> None:
    """loss.png, accuracy.png and filters.png from the solver's histories and parameters."""
    if not writer.enabled:
        return
    from jcnn import viz

    if solver.loss_history:
        writer.save_figure(
            "loss.png",
            viz.plot_loss(solver.loss_history, iterations_per_epoch=solver.iterations_per_epoch),
        )
    if solver.eval_history:
        epochs = [r["epoch"] for r in solver.eval_history]
        writer.save_figure(
            "accuracy.png",
            viz.plot_accuracy(solver.train_acc_history, solver.val_acc_history, epochs),
        )
    w = first_conv_weights(solver.params)
    if w is not None:
        writer.save_figure("filters.png", viz.plot_filters(w))


class RunLogger:
    """The Solver's ``on_epoch_end`` hook: metrics lines, plots, and the time spent outside
    training steps (accuracy checks, checkpoints, plots), so that images/s counts training
    only. (The Solver prunes its checkpoints itself.)"""

    def __init__(self, writer: RunWriter, config: Mapping[str, Any], *, plots: bool):
        self.writer = writer
        self.print_every = int(config["print_every"])
        self.plot_every_epoch = bool(config["plot_every_epoch"]) and plots
        self.logged = 0  # iterations of loss_history already considered
        self.t0 = 0.0
        self.overhead_s = 0.0
        self.eval_s = 0.0

    def start(self, solver: Any = None) -> None:
        """Start the clock; a resumed solver's checks count time from the run's start."""
        self.t0 = time.perf_counter() - (solver.elapsed_s if solver is not None else 0.0)
        if solver is not None:
            self.logged = len(solver.loss_history)

    def flush(self, solver: Any) -> None:
        records = iteration_records(
            solver.loss_history, self.logged, self.print_every, solver.iterations_per_epoch
        )
        self.logged = len(solver.loss_history)
        self.writer.append_jsonl("metrics.jsonl", records)

    def __call__(self, solver: Any, epoch: int) -> None:
        entered = time.perf_counter()
        check = solver.eval_history[-1]
        # The check (and the Solver's checkpoint) ran from t0 + seconds until now.
        self.eval_s += max(0.0, entered - (self.t0 + check["seconds"]))
        self.flush(solver)
        self.writer.append_jsonl("metrics.jsonl", [epoch_record(check)])
        if self.plot_every_epoch:
            write_plots(self.writer, solver)
        self.overhead_s += time.perf_counter() - entered

    @property
    def outside_training_s(self) -> float:
        return self.eval_s + self.overhead_s


# ------------------------------------------------------------------------------------ run


def load_data(config: Mapping[str, Any]) -> dict[str, Any]:
    """CIFAR-10 split the cs231n way (mean image subtracted, float32 NCHW); a problem with
    the data on disk or the split sizes stops the app with one line."""
    from jcnn.data import DatasetError, get_cifar10_data
    from jcnn.data.cifar10 import resolve_data_dir

    try:
        return get_cifar10_data(
            config["data_dir"],
            num_training=config["num_train"],
            num_validation=config["num_val"],
            num_test=config["num_test"],
        )
    except (DatasetError, ValueError) as e:
        where = resolve_data_dir(config["data_dir"])
        raise UsageFailure(f"could not load CIFAR-10 from {where} (--data_dir): {e}") from e


def make_augment(config: Mapping[str, Any]) -> Callable | None:
    if not config["augment"]:
        return None
    from jcnn.augment import random_crop_flip

    cut = int(config.get("cutout", 0))
    if cut:
        return functools.partial(random_crop_flip, pad=int(config["augment_pad"]), cutout=cut)
    return functools.partial(random_crop_flip, pad=int(config["augment_pad"]))


def solver_kwargs(config: Mapping[str, Any]) -> dict[str, Any]:
    """The Solver's keyword arguments for a run's config."""
    return dict(
        checkpoint_every=config.get("checkpoint_every"),
        keep_checkpoints=config.get("keep_checkpoints", 0),
        update_rule=config["update_rule"],
        optim_config={"learning_rate": config["learning_rate"]},
        lr_decay=config["lr_decay"],
        lr_schedule=config.get("lr_schedule", "exponential"),
        warmup_epochs=config.get("warmup_epochs", 0.0),
        batch_size=config["batch_size"],
        num_epochs=config["num_epochs"],
        num_train_samples=config["num_train_samples"],
        num_val_samples=config["num_val_samples"],
        print_every=config["print_every"],
        seed=config["seed"],
        compute_dtype=config.get("compute_dtype"),
        test_time_flip=config.get("test_time_flip", False),
        verbose=True,
    )


def describe_device(mesh: Any = None) -> dict[str, Any]:
    d = jax.devices()[0]
    out = {
        "platform": d.platform,
        "device_kind": d.device_kind,
        "device_count": jax.device_count(),
        "process_count": jax.process_count(),
        "backend": jax.default_backend(),
    }
    if mesh is not None:
        out["mesh_devices"] = int(mesh.size)  # the devices this run trains on
    return out


def describe_host() -> dict[str, Any]:
    return {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
    }


def model_config(model: Any) -> dict[str, Any]:
    fields = dataclasses.asdict(model) if dataclasses.is_dataclass(model) else {}
    return {"class": type(model).__name__, **fields}


def num_params(params: Any) -> int:
    return int(sum(np.size(leaf) for leaf in jax.tree_util.tree_leaves(params)))


def make_summary(
    solver: Any,
    *,
    app_name: str,
    model: Any,
    config: Mapping[str, Any],
    test_acc: float | None,
    timings: Mapping[str, float],
    start_iteration: int = 0,
) -> dict[str, Any]:
    """The run's summary. Timings are this session's: for a resumed run (``start_iteration``
    > 0), images/s counts the iterations trained since it resumed."""
    images = solver.num_iterations * solver.batch_size
    images_now = (solver.iteration - start_iteration) * solver.batch_size
    train_s = timings["train_s"]
    return {
        "app": app_name,
        "workdir": str(config.get("workdir")),
        "final_train_acc": solver.train_acc_history[-1],
        "final_val_acc": solver.val_acc_history[-1],
        "best_val_acc": solver.best_val_acc,
        "best_epoch": solver.best_epoch,
        "test_acc": test_acc,
        "final_loss": solver.loss_history[-1],
        "epochs": solver.num_epochs,
        "iterations": solver.num_iterations,
        "iterations_per_epoch": solver.iterations_per_epoch,
        "batch_size": solver.batch_size,
        "training_images_seen": images,
        "resumed_from_iteration": start_iteration or None,
        "wall_time_s": round(timings["wall_s"], 3),
        "data_time_s": round(timings["data_s"], 3),
        "train_time_s": round(train_s, 3),
        "eval_time_s": round(timings["outside_training_s"], 3),
        "images_per_s": round(images_now / train_s, 2) if train_s > 0 and images_now else None,
        "num_params": num_params(solver.params),
        "num_train": int(solver.num_train),
        "num_val": int(np.shape(solver.X_val)[0]),
        "model": model_config(model),
        "flags": dict(config),
        "jax_version": jax.__version__,
        "device": describe_device(getattr(solver, "mesh", None)),
        "host": describe_host(),
    }


def make_run_mesh(config: Mapping[str, Any]) -> Any:
    """The run's device mesh (``--num_devices`` per process); too many devices, or a batch
    size that does not split evenly over them, stops the app with one line."""
    from jcnn.parallel import make_mesh

    try:
        return make_mesh(config.get("num_devices"), batch_size=config["batch_size"])
    except ValueError as e:
        raise UsageFailure(f"--num_devices / --batch_size: {e}") from None


def start_processes(config: Mapping[str, Any]) -> None:
    """``jax.distributed.initialize`` for a multi-host run (``--num_processes`` > 1, or a
    ``--coordinator_address``); a failure stops the app with one line."""
    from jcnn.parallel import initialize_distributed

    n = config.get("num_processes") or 1
    if n == 1 and not config.get("coordinator_address"):
        return
    try:
        initialize_distributed(config.get("coordinator_address"), n, config.get("process_id"))
    except (ValueError, RuntimeError) as e:
        raise UsageFailure(
            f"could not start process {config.get('process_id')} of {n}: {e}"
        ) from None


def train_and_evaluate(
    config: Mapping[str, Any],
    model: Any,
    writer: RunWriter,
    *,
    app_name: str,
    data: Mapping[str, Any] | None = None,
    mesh: Any = None,
) -> dict[str, Any]:
    """Load the data (unless given), train ``model`` with the Solver (resuming from the
    workdir's newest checkpoint if it holds one), evaluate the best parameters on the test
    split, write every file of the run; returns the summary.

    Training is data-parallel over ``mesh`` (default: :func:`make_run_mesh`); every process
    gathers only its rows of each global batch, only process 0 prints and writes."""
    from jcnn.parallel import is_primary
    from jcnn.solver import Solver

    if mesh is None:
        mesh = make_run_mesh(config)
    say = print if is_primary() else (lambda *args, **kwargs: None)
    t_start = time.perf_counter()
    plots = have_matplotlib()
    if not plots:
        say("matplotlib is not installed: no plots (pip install 'jcnn[plots]')", flush=True)
    if data is None:
        data = load_data(config)
    data_s = time.perf_counter() - t_start

    logger = RunLogger(writer, config, plots=plots)
    solver = Solver(
        model,
        data,
        checkpoint_dir=writer.solver_checkpoint_dir,
        on_epoch_end=[logger],
        augment=make_augment(config),
        resume="auto",
        run_config=config,
        mesh=mesh,
        **{**solver_kwargs(config), "verbose": is_primary()},
    )
    start_iteration = solver.iteration
    if solver.resumed_from is not None:
        if solver.iteration >= solver.num_iterations and writer.path("summary.json").is_file():
            say(f"{app_name}: the run in {writer.workdir} is complete; see summary.json")
            return json.loads(writer.path("summary.json").read_text())
        # The lines the checkpoint covers, exactly once; later ones are appended as usual.
        lines = history_records(solver, int(config["print_every"]))
        writer.write_text("metrics.jsonl", "".join(to_json(r) + "\n" for r in lines))
    started = {
        "app": app_name,
        "started": dt.datetime.now().isoformat(timespec="seconds"),
        "resumed_from": solver.resumed_from,
        "flags": dict(config),
        "model": model_config(model),
        "data": {k: list(np.shape(data[k])) for k in ("X_train", "X_val", "X_test") if k in data},
        "jax_version": jax.__version__,
        "device": describe_device(mesh),
        "host": describe_host(),
    }
    writer.write_json("config.json", started)
    dev = describe_device(mesh)
    procs = f" in {dev['process_count']} processes" if dev["process_count"] > 1 else ""
    say(
        f"{app_name}: {type(model).__name__}, {num_params(solver.params):,} parameters; "
        f"{solver.num_train} train / {len(data['y_val'])} val images; "
        f"{solver.num_epochs} epochs x {solver.iterations_per_epoch} iterations of "
        f"{solver.batch_size}; {dev['platform']} ({dev['device_kind']}) x "
        f"{dev['mesh_devices']}{procs}; writing to {writer.workdir}",
        flush=True,
    )
    session_start = time.perf_counter()
    logger.start(solver)
    debug_nans = jax.config.jax_debug_nans
    if config.get("debug_nans"):
        jax.config.update("jax_debug_nans", True)
    try:
        solver.train()
    finally:
        jax.config.update("jax_debug_nans", debug_nans)
        logger.flush(solver)
    train_wall = time.perf_counter() - session_start

    test_acc = None
    X_test = data.get("X_test")
    if X_test is not None and len(X_test):
        test_acc = solver.check_accuracy(X_test, data["y_test"])
    writer.save_checkpoint(
        "checkpoints/best.npz",
        {"params": solver.params, "state": solver.state},
        {
            "best_epoch": solver.best_epoch,
            "best_val_acc": solver.best_val_acc,
            "test_acc": test_acc,
            "model": model_config(model),
            "jax_version": jax.__version__,
        },
    )
    if plots:
        write_plots(writer, solver)
    timings = {
        "wall_s": time.perf_counter() - t_start,
        "data_s": data_s,
        "train_s": max(train_wall - logger.outside_training_s, 1e-9),
        "outside_training_s": logger.outside_training_s,
    }
    summary = make_summary(
        solver, app_name=app_name, model=model, config=config, test_acc=test_acc,
        timings=timings, start_iteration=start_iteration,
    )  # fmt: skip
    summary = json.loads(to_json(summary))  # plain JSON values, exactly what the file holds
    writer.write_json("summary.json", summary)
    test = "n/a" if test_acc is None else f"{test_acc:f}"
    say(
        f"best val_acc: {solver.best_val_acc:f} (epoch {solver.best_epoch}); test acc of the "
        f"best parameters: {test}; {summary['images_per_s']} training images/s; "
        f"wall time {summary['wall_time_s']:.1f} s; files in {writer.workdir}",
        flush=True,
    )
    return summary


def _flag_text(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return json.dumps(value) if value is None or isinstance(value, bool) else str(value)


def check_resumable(writer: RunWriter, config: Mapping[str, Any]) -> Path | None:
    """The checkpoint a rerun in ``writer``'s workdir resumes from (None: none, start over).

    Stops the app with one line if the checkpoint was made with other flags (naming them),
    or if the workdir holds a finished run without any checkpoint."""
    from jcnn.checkpoint import CHECKPOINT_PATTERNS, config_differences, latest_checkpoint

    workdir = writer.workdir
    found = latest_checkpoint(writer.path("checkpoints"), CHECKPOINT_PATTERNS)
    if found is None:
        if writer.path("summary.json").exists():
            raise UsageFailure(
                f"--workdir={workdir} holds a finished run and no checkpoint to resume from; "
                "choose another --workdir or pass --overwrite"
            )
        print(f"{workdir} holds no complete checkpoint: starting the run over", flush=True)
        writer.clear()
        return None
    path, meta = found
    saved = meta.get("run_config")
    if not isinstance(saved, Mapping):
        raise UsageFailure(
            f"--workdir={workdir}: checkpoint {path.name} records no flags, so it cannot be "
            "resumed safely; choose another --workdir or pass --overwrite"
        )
    keep = [k for k in set(saved) | set(config) if k not in RESUME_MAY_DIFFER]
    differences = config_differences(
        {k: saved.get(k, ADDED_FLAG_DEFAULTS.get(k)) for k in keep},
        to_jsonable({k: config.get(k) for k in keep}),
    )
    if differences:
        listed = "; ".join(
            f"--{k}={_flag_text(a)} there, --{k}={_flag_text(b)} now"
            for k, (a, b) in sorted(differences.items())
        )
        raise UsageFailure(
            f"--workdir={workdir} holds a run made with other flags ({listed}): rerun it with "
            f"its flags (--flagfile={workdir / 'flags.cfg'}), or choose another --workdir, or "
            "pass --overwrite to start over"
        )
    return path


def to_jsonable(obj: Any) -> Any:
    """``obj`` as the plain JSON values a checkpoint's sidecar holds."""
    return json.loads(json.dumps(obj, default=_json_default, allow_nan=True))


def main(
    argv: Sequence[str],
    *,
    app_name: str,
    names: Sequence[str],
    make_model: Callable[[Mapping[str, Any]], Any],
    fv: flags.FlagValues = flags.FLAGS,
) -> dict[str, Any]:
    """The body of an app's ``main``: checks that need more than the flag validators, then
    :func:`train_and_evaluate`. Every problem found before training stops with one line; so
    does a non-finite loss (details in the workdir's nonfinite.json).

    A ``--workdir`` that holds a run resumes it (after checking its flags), unless
    ``--overwrite`` starts over."""
    import jcnn.cpu
    from jcnn.solver import CheckpointMismatchError, NonFiniteLossError

    jcnn.cpu.tune()  # before any data or device memory: huge pages for the heap
    if len(argv) > 1:
        raise UsageFailure(
            f"unexpected argument(s) {argv[1:]!r}: flags are written --name=value (in a "
            "flagfile too, one per line)"
        )
    config = config_from_flags(fv, names)
    start_processes(config)  # before anything touches a device
    try:
        model = make_model(config)
    except ValueError as e:
        raise UsageFailure(f"invalid model flags: {e}") from None
    mesh = make_run_mesh(config)  # a batch that does not split stops here, before the data
    workdir = Path(config["workdir"]) if config["workdir"] else default_workdir(app_name)
    config["workdir"] = str(workdir)
    writer = RunWriter(workdir)
    if config["overwrite"]:
        writer.clear()
    elif writer.enabled and writer.holds_run():  # process 0 checks (and tidies) the workdir
        resume_from = check_resumable(writer, config)
        if resume_from is not None:
            print(f"{app_name}: resuming the run in {workdir} from {resume_from}", flush=True)
    writer.write_text("flags.cfg", flagfile_text(fv, names))
    if jax.process_count() > 1:  # the others read the workdir only once process 0 is done
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("jcnn: workdir ready")
    try:
        return train_and_evaluate(config, model, writer, app_name=app_name, mesh=mesh)
    except CheckpointMismatchError as e:
        raise UsageFailure(f"--workdir={workdir}: {e}; or pass --overwrite") from None
    except NonFiniteLossError as e:
        raise UsageFailure(
            f"{e}. Running the same command again resumes from that checkpoint and meets the "
            "same step: start over (--overwrite, or another --workdir) with, e.g., a lower "
            "--learning_rate"
        ) from e
