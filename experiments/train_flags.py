"""The flags every CIFAR-10 training app has, each checked right where it is defined.

:func:`define_common_flags` defines them on a ``FlagValues`` in four groups (the data, the
training, the run's files and checkpoints, the devices and processes); the apps add their
model's flags with :func:`define_int_list`, :func:`check` and :func:`check_model`. Bad flags
stop the program with one line naming the flag, while the command line and flagfiles are
parsed (before any data is loaded): a per-flag check is an absl validator registered next to
its flag, a check that involves several flags a multi-flag validator (a small named function
here) registered next to the last of them.

:func:`config_from_flags` turns the parsed flags into the run's config (a plain dict) and
:func:`flagfile_text` into the ``flags.cfg`` that reruns it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from absl import flags

from jcnn.layers.conv import IMPLS as CONV_IMPLS
from jcnn.optim import LR_SCHEDULES, UPDATE_RULES
from jcnn.parallel import COMPUTE_DTYPES

CIFAR10_TRAIN, CIFAR10_TEST = 50_000, 10_000

COMMON_FLAGS = (
    "workdir", "overwrite", "dataset", "data_dir", "image_size", "num_train", "num_val",
    "num_test", "weight_scale", "reg", "label_smoothing", "layers", "conv_impl", "pool_impl",
    "update_rule", "learning_rate", "lr_decay", "lr_schedule", "warmup_epochs",
    "batch_size", "num_epochs", "seed",
    "augment", "augment_pad", "cutout", "test_time_flip", "print_every", "num_train_samples",
    "num_val_samples",
    "plot_every_epoch", "keep_checkpoints", "checkpoint_every", "checkpoint_minutes",
    "allow_data_change", "debug_nans",
    "num_devices", "compute_dtype", "coordinator_address", "num_processes", "process_id",
    "coordinator_timeout",
)  # fmt: skip
# Where a run executes, not what it computes: left out of the run's flags.cfg.
DEPLOYMENT_FLAGS = ("coordinator_address", "num_processes", "process_id", "coordinator_timeout")

# ------------------------------------------------------------------------- parsers, checks


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


def _positive_in_float32(v: float) -> bool:
    """Finite and > 0, and still so as a float32 (1e39 would be inf, 1e-50 zero)."""
    with np.errstate(over="ignore", under="ignore"):
        as32 = np.float32(v)
    return _finite_positive(v) and bool(np.isfinite(as32)) and as32 > 0


def _finite_nonnegative(v: float) -> bool:
    return math.isfinite(v) and v >= 0


# ----------------------------------------------------------------------------------- the data


def _split_fits(values: Mapping[str, Any]) -> bool:
    n_train, n_val, n_test = values["num_train"], values["num_val"], values["num_test"]
    if values["dataset"] == "folder":  # checked against the folder when it is read
        return True
    if n_train + n_val > CIFAR10_TRAIN:
        raise flags.ValidationError(
            f"num_train + num_val must be <= {CIFAR10_TRAIN} (CIFAR-10's training images), "
            f"got {n_train} + {n_val}"
        )
    if n_test > CIFAR10_TEST:
        raise flags.ValidationError(f"num_test must be <= {CIFAR10_TEST}, got {n_test}")
    return True


def _dataset_fits(values: Mapping[str, Any]) -> bool:
    if values["dataset"] == "folder" and not values["data_dir"]:
        raise flags.ValidationError(
            "--dataset=folder needs --data_dir=ROOT (ROOT/train/<class>/ and ROOT/test/<class>/)"
        )
    if values["dataset"] == "cifar10" and values["image_size"] is not None:
        raise flags.ValidationError(
            "--image_size resizes an image folder's images (--dataset=folder)"
        )
    return True


def define_data_flags(fv: flags.FlagValues) -> None:
    """Which data (CIFAR-10 or an image folder), where, and how it is split."""
    flags.DEFINE_enum(
        "dataset", "cifar10", ["cifar10", "folder"], "cifar10, or folder: --data_dir=ROOT holds "
        "ROOT/train/<class>/ and ROOT/test/<class>/ images (.png, .jpg), one sub-folder per "
        "class.", flag_values=fv,
    )  # fmt: skip
    flags.DEFINE_string(
        "data_dir", None, "Folder holding cifar-10-batches-py/ (or where to download it; "
        "default $JCNN_DATA_DIR, else ~/.cache/jcnn), or the image folder's ROOT.", flag_values=fv,
    )  # fmt: skip
    flags.DEFINE_integer(
        "image_size", None, "--dataset=folder: resize every image to this square size "
        "(default: keep their size, which must then be the same for all).", lower_bound=1,
        flag_values=fv,
    )  # fmt: skip
    flags.register_multi_flags_validator(
        ["dataset", "data_dir", "image_size"], _dataset_fits, flag_values=fv
    )
    flags.DEFINE_integer(
        "num_train", 49_000, "Training images: the first num_train of CIFAR-10's 50000 (of an "
        "image folder's train/ images, in a fixed shuffled order).",
        lower_bound=1, flag_values=fv,
    )  # fmt: skip
    flags.DEFINE_integer(
        "num_val", 1_000, "Validation images, the ones after the training images (0: none, "
        "for recipes that select no parameters on validation accuracy).",
        lower_bound=0, flag_values=fv,
    )  # fmt: skip
    flags.DEFINE_integer(
        "num_test", 1_000, "Test images (the first of the test batch); 0: no test accuracy.",
        lower_bound=0, flag_values=fv,
    )  # fmt: skip
    flags.register_multi_flags_validator(
        ["dataset", "num_train", "num_val", "num_test"], _split_fits, flag_values=fv
    )


# ------------------------------------------------------------------------------- the training


def define_loss_flags(fv: flags.FlagValues, *, weight_scale: float | str, reg: float) -> None:
    """The initialisation, the loss and the layer implementations (any model)."""
    flags.DEFINE(
        WeightScaleParser(), "weight_scale", weight_scale,
        "Std of the Gaussian weight init, or 'he' for sqrt(2 / fan_in).", flag_values=fv,
        serializer=flags.ArgumentSerializer(),
    )  # fmt: skip
    flags.DEFINE_float("reg", reg, "L2 strength: 0.5·reg·Σ W² in the loss.", flag_values=fv)
    check(fv, "reg", _finite_nonnegative, "a finite float >= 0")
    flags.DEFINE_float(
        "label_smoothing", 0.0, "Softmax targets (1 - e)·onehot + e/10 instead of one-hot "
        "labels (0: the plain cross-entropy).", flag_values=fv,
    )  # fmt: skip
    check(fv, "label_smoothing", lambda v: 0.0 <= v < 1.0, "in [0, 1)")
    flags.DEFINE_enum(
        "layers", "jcnn", ["jcnn", "reference"],
        "jcnn: the hand-written layers; reference: their autodiff twins.", flag_values=fv,
    )  # fmt: skip
    flags.DEFINE_enum(
        "conv_impl", "auto", list(CONV_IMPLS), "What runs the convolutions: auto (oneDNN "
        "where available, else XLA), onednn, xla, im2col or naive (the same function: a run "
        "may resume with another).", flag_values=fv,
    )  # fmt: skip
    flags.register_validator("conv_impl", _onednn_available, flag_values=fv)
    flags.DEFINE_enum(
        "pool_impl", "fast", ["naive", "fast"], "Max-pool implementation.", flag_values=fv
    )


def _onednn_available(value: str) -> bool:
    if value == "onednn":
        from jcnn.layers import conv_onednn

        why = conv_onednn.unavailable()
        if why is not None:
            raise flags.ValidationError(f"onednn cannot run: {why}; use auto or xla")
    return True


def _schedule_fits(values: Mapping[str, Any]) -> bool:
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


def define_optimiser_flags(
    fv: flags.FlagValues,
    *,
    update_rule: str,
    learning_rate: float,
    lr_decay: float,
    batch_size: int,
    num_epochs: int,
) -> None:
    """The optimiser, its learning-rate schedule, the minibatches and the epochs."""
    flags.DEFINE_enum(
        "update_rule", update_rule, list(UPDATE_RULES), "Optimiser (cs231n names, optax inside).",
        flag_values=fv,
    )  # fmt: skip
    flags.DEFINE_float("learning_rate", learning_rate, "Initial learning rate.", flag_values=fv)
    check(fv, "learning_rate", _positive_in_float32, "a float > 0, finite in float32 (< 3.4e38)")
    flags.DEFINE_float(
        "lr_decay", lr_decay, "The learning rate is multiplied by this after every epoch.",
        flag_values=fv,
    )  # fmt: skip
    check(fv, "lr_decay", _finite_positive, "a finite float > 0")
    flags.DEFINE_enum(
        "lr_schedule", "exponential", list(LR_SCHEDULES), "exponential: times --lr_decay after "
        "every epoch (cs231n); cosine: annealed to 0 over the run (needs --lr_decay=1).",
        flag_values=fv,
    )  # fmt: skip
    flags.DEFINE_float(
        "warmup_epochs", 0.0, "Ramp the learning rate up linearly over this many epochs first.",
        flag_values=fv,
    )  # fmt: skip
    check(fv, "warmup_epochs", _finite_nonnegative, "a finite float >= 0")
    flags.DEFINE_integer("batch_size", batch_size, "Minibatch size.", lower_bound=1, flag_values=fv)
    flags.DEFINE_integer("num_epochs", num_epochs, "Epochs.", lower_bound=1, flag_values=fv)
    flags.register_multi_flags_validator(
        ["lr_schedule", "lr_decay", "warmup_epochs", "num_epochs"], _schedule_fits,
        flag_values=fv,
    )  # fmt: skip
    flags.DEFINE_integer(
        "seed", 0, "Seeds the initialisation, minibatches, dropout and augmentation.",
        lower_bound=0, upper_bound=2**32 - 1, flag_values=fv,
    )  # fmt: skip


def _cutout_needs_augment(values: Mapping[str, Any]) -> bool:
    if values["cutout"] and not values["augment"]:
        raise flags.ValidationError(
            f"cutout={values['cutout']} is part of the augmentation: add --augment (or --cutout=0)"
        )
    return True


def define_augment_flags(fv: flags.FlagValues) -> None:
    """Data augmentation inside the step, and test-time flips."""
    flags.DEFINE_bool(
        "augment", False, "Random crops (zero padding --augment_pad) and horizontal flips of "
        "every minibatch, inside the jitted step.", flag_values=fv,
    )  # fmt: skip
    flags.DEFINE_integer(
        "augment_pad", 4, "Zero padding per side for the random crops.", lower_bound=0,
        flag_values=fv,
    )  # fmt: skip
    flags.DEFINE_integer(
        "cutout", 0, "With --augment: also zero a square of this side at a random place in "
        "every training image (cutout; 0: none).", lower_bound=0, flag_values=fv,
    )  # fmt: skip
    flags.register_multi_flags_validator(
        ["cutout", "augment"], _cutout_needs_augment, flag_values=fv
    )
    flags.DEFINE_bool(
        "test_time_flip", False, "Every accuracy (train, val, test) classifies each image by "
        "its scores plus those of its left-right mirror (twice the evaluation compute).",
        flag_values=fv,
    )  # fmt: skip


def define_report_flags(fv: flags.FlagValues, *, print_every: int) -> None:
    """How often the loss is reported and on how many images the accuracies are measured."""
    flags.DEFINE_integer(
        "print_every", print_every, "Print (and log to metrics.jsonl) the loss every this many "
        "iterations.", lower_bound=1, flag_values=fv,
    )  # fmt: skip
    flags.DEFINE_integer(
        "num_train_samples", 1_000, "Training images the train accuracy is measured on.",
        lower_bound=1, flag_values=fv,
    )  # fmt: skip
    flags.DEFINE_integer(
        "num_val_samples", None, "Validation images the val accuracy is measured on "
        "(default: all).", lower_bound=1, flag_values=fv,
    )  # fmt: skip
    flags.DEFINE_bool(
        "debug_nans", False, "Turn on jax_debug_nans: every step's outputs are checked for "
        "NaN (a sync per step), and the step that makes one is re-run op by op to name the "
        "primitive.", flag_values=fv,
    )  # fmt: skip


# ------------------------------------------------------------------ the run's files, checkpoints


def define_run_dir_flags(fv: flags.FlagValues) -> None:
    """The workdir, its plots and its checkpoints."""
    flags.DEFINE_string(
        "workdir", None, "Where the run writes its files (default: runs/<app>-<timestamp>).",
        flag_values=fv,
    )  # fmt: skip
    flags.DEFINE_bool(
        "overwrite", False, "Start over in a --workdir that already holds a run (its files are "
        "replaced); without it, the run there resumes from its newest checkpoint.",
        flag_values=fv,
    )  # fmt: skip
    flags.DEFINE_bool(
        "plot_every_epoch", True, "Redraw the PNG plots after every epoch (always at the end).",
        flag_values=fv,
    )  # fmt: skip
    flags.DEFINE_integer(
        "keep_checkpoints", 3, "Keep the last this many epoch checkpoints (0: all).",
        lower_bound=0, flag_values=fv,
    )  # fmt: skip
    flags.DEFINE_bool(
        "allow_data_change", False, "Resume a run on data other than it was trained on (the "
        "checkpoint's data fingerprint differs); without it, that stops the app.",
        flag_values=fv,
    )  # fmt: skip
    flags.DEFINE_integer(
        "checkpoint_every", None, "Also checkpoint every this many iterations (default: at "
        "epoch ends only); a crash loses at most this many.", lower_bound=1, flag_values=fv,
    )  # fmt: skip
    flags.DEFINE_float(
        "checkpoint_minutes", 10.0, "Also checkpoint at the first update this many minutes "
        "after the last checkpoint, so a crash loses minutes, not an epoch (0: off; "
        "single-process runs).", lower_bound=0.0, flag_values=fv,
    )  # fmt: skip


# -------------------------------------------------------------------- devices and processes


def _processes_fit(values: Mapping[str, Any]) -> bool:
    n, pid = values["num_processes"], values["process_id"]
    if pid >= n:
        raise flags.ValidationError(f"process_id must be in [0, num_processes={n}), got {pid}")
    if n > 1 and not values["coordinator_address"]:
        raise flags.ValidationError(
            f"num_processes={n} needs --coordinator_address (host:port of process 0)"
        )
    return True


def define_device_flags(fv: flags.FlagValues) -> None:
    """The devices a process trains on, the arithmetic's dtype, and multi-host runs."""
    flags.DEFINE_integer(
        "num_devices", None, "Devices per process to train on, data-parallel: each takes an "
        "equal share of every --batch_size (the global batch; it must divide evenly). "
        "Default: all local devices.", lower_bound=1, flag_values=fv,
    )  # fmt: skip
    flags.DEFINE_enum(
        "compute_dtype", "float32", list(COMPUTE_DTYPES), "Dtype of the network's arithmetic "
        "(bfloat16: mixed precision, for GPU/TPU and CPUs with bfloat16 units such as "
        "AVX512-BF16 or AMX; parameters, optimiser state and the loss stay float32).",
        flag_values=fv,
    )  # fmt: skip
    flags.DEFINE_string(
        "coordinator_address", None, "Multi-host runs: host:port of process 0, passed with "
        "--num_processes and --process_id to jax.distributed.initialize.", flag_values=fv,
    )  # fmt: skip
    flags.DEFINE_integer(
        "num_processes", 1, "Multi-host runs: the number of processes (one per host).",
        lower_bound=1, flag_values=fv,
    )  # fmt: skip
    flags.DEFINE_integer(
        "process_id", 0, "Multi-host runs: this process's rank in [0, num_processes); "
        "process 0 writes the run's files.", lower_bound=0, flag_values=fv,
    )  # fmt: skip
    flags.DEFINE_integer(
        "coordinator_timeout", 300, "Multi-host runs: seconds to wait for every process to "
        "connect to --coordinator_address before stopping with an error.", lower_bound=1,
        flag_values=fv,
    )  # fmt: skip
    flags.register_multi_flags_validator(
        ["num_processes", "process_id", "coordinator_address"], _processes_fit, flag_values=fv
    )


# -------------------------------------------------------------------------------- all of them


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
    """Define (on ``fv``) and check the flags every app has (:data:`COMMON_FLAGS`); the
    arguments are the app's defaults for the hyper-parameters
    (:meth:`experiments.presets.Preset.flag_defaults`)."""
    define_run_dir_flags(fv)
    define_data_flags(fv)
    define_loss_flags(fv, weight_scale=weight_scale, reg=reg)
    define_optimiser_flags(
        fv, update_rule=update_rule, learning_rate=learning_rate, lr_decay=lr_decay,
        batch_size=batch_size, num_epochs=num_epochs,
    )  # fmt: skip
    define_augment_flags(fv)
    define_report_flags(fv, print_every=print_every)
    define_device_flags(fv)


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
