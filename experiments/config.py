"""The groups of settings every training recipe is made of, each setting declared once with
its default, help text, checks and resume rule (:func:`experiments.settings.option`).

:class:`Files`, :class:`Data`, :class:`Schedule`, :class:`Cs231nOptimiser`, :class:`Init`,
:class:`Loss`, :class:`Layers`, :class:`Kernels`, :class:`Translate`, :class:`Cutout`,
:class:`Augment`, :class:`Evaluation`, :class:`Report`, :class:`Devices`. An app's recipe
class (:mod:`experiments.recipes`) inherits the groups it uses and adds its model's
settings, so the app has exactly the settings (and flags) that apply to it.

Importing this module imports no JAX.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from experiments.settings import (
    Settings,
    finite_nonnegative,
    finite_positive,
    onednn_available,
    option,
    positive_in_float32,
    probability,
    weight_scale_ok,
)

CIFAR10_TRAIN, CIFAR10_TEST = 50_000, 10_000

# The choices of the settings jcnn's library defines (tests/experiments/test_config.py keeps
# them equal to jcnn.layers.conv.IMPLS, jcnn.optim.UPDATE_RULES, LR_SCHEDULES and
# jcnn.precision.COMPUTE_DTYPES; literal here so that reading a recipe imports no JAX).
CONV_IMPLS = ("auto", "onednn", "xla", "im2col", "naive")
UPDATE_RULES = ("sgd", "sgd_momentum", "rmsprop", "adam")
LR_SCHEDULES = ("exponential", "cosine")
COMPUTE_DTYPES = ("float32", "bfloat16")


# ------------------------------------------------------------------------------------ groups


@dataclasses.dataclass(frozen=True)
class Files(Settings):
    """The workdir, its plots and its checkpoints."""

    workdir: str | None = option(
        None, "Where the run writes its files (default: runs/<app>-<timestamp>).", kind="str",
        may_change_on_resume=True, in_flagfile=False,
    )  # fmt: skip
    overwrite: bool = option(
        False, "Start over in a --workdir that already holds a run (its files are replaced); "
        "without it, the run there resumes from its newest checkpoint.",
        may_change_on_resume=True, in_flagfile=False,
    )  # fmt: skip
    plots: bool = option(
        True, "Draw the PNG plots (loss, accuracy, first-layer filters; needs matplotlib); "
        "--noplots leaves them out.", may_change_on_resume=True,
    )  # fmt: skip
    plot_every_epoch: bool = option(
        True, "Redraw the PNG plots after every epoch (always at the end).",
        may_change_on_resume=True,
    )  # fmt: skip
    keep_checkpoints: int = option(
        3, "Keep the last this many epoch checkpoints (0: all).", lower=0,
        may_change_on_resume=True,
    )  # fmt: skip
    allow_data_change: bool = option(
        False, "Resume a run on data other than it was trained on (the checkpoint's data "
        "fingerprint differs); without it, that stops the app.", may_change_on_resume=True,
    )  # fmt: skip
    checkpoint_every: int | None = option(
        None, "Also checkpoint every this many iterations (default: at epoch ends only); a "
        "crash loses at most this many.", kind="int", lower=1, may_change_on_resume=True,
    )  # fmt: skip
    checkpoint_minutes: float = option(
        10.0, "Also checkpoint at the first update this many minutes after the last "
        "checkpoint, so a crash loses minutes, not an epoch (0: off; single-process runs).",
        lower=0.0, may_change_on_resume=True,
    )  # fmt: skip


def _dataset_fits(v: Mapping[str, Any]) -> None:
    if v["data_dir"] is not None and not str(v["data_dir"]).strip():  # "" would mean the cwd
        raise ValueError("--data_dir= is empty: name a folder, or leave the flag out")
    if v["dataset"] == "folder" and not v["data_dir"]:
        raise ValueError(
            "--dataset=folder needs --data_dir=ROOT (ROOT/train/<class>/ and ROOT/test/<class>/)"
        )
    if v["dataset"] == "cifar10" and v["image_size"] is not None:
        raise ValueError("--image_size resizes an image folder's images (--dataset=folder)")


def _split_fits(v: Mapping[str, Any]) -> None:
    if v["dataset"] == "folder":  # checked against the folder when it is read
        return
    if v["num_train"] + v["num_val"] > CIFAR10_TRAIN:
        raise ValueError(
            f"num_train + num_val must be <= {CIFAR10_TRAIN} (CIFAR-10's training images), "
            f"got {v['num_train']} + {v['num_val']}"
        )
    if v["num_test"] > CIFAR10_TEST:
        raise ValueError(f"num_test must be <= {CIFAR10_TEST}, got {v['num_test']}")


@dataclasses.dataclass(frozen=True)
class Data(Settings):
    """Which data (CIFAR-10 or an image folder), where, and how it is split."""

    dataset: str = option(
        "cifar10", "cifar10, or folder: --data_dir=ROOT holds ROOT/train/<class>/ and "
        "ROOT/test/<class>/ images (.png, .jpg), one sub-folder per class.",
        choices=("cifar10", "folder"), before_added="cifar10",
    )  # fmt: skip
    data_dir: str | None = option(
        None, "Folder holding cifar-10-batches-py/ (or where to download it; default "
        "$JCNN_DATA_DIR, else ~/.cache/jcnn), or the image folder's ROOT.", kind="str",
        may_change_on_resume=True,
    )  # fmt: skip
    image_size: int | None = option(
        None, "--dataset=folder: resize every image to this square size (default: keep their "
        "size, which must then be the same for all).", kind="int", lower=1, before_added=None,
    )  # fmt: skip
    num_train: int = option(
        49_000, "Training images: the first num_train of CIFAR-10's 50000 (of an image "
        "folder's train/ images, in a fixed shuffled order).", lower=1,
    )  # fmt: skip
    num_val: int = option(
        1_000, "Validation images, the ones after the training images (0: none, for recipes "
        "that select no parameters on validation accuracy).", lower=0,
    )  # fmt: skip
    num_test: int = option(
        1_000, "Test images (the first of the test batch); 0: no test accuracy.", lower=0,
        may_change_on_resume=True,
    )  # fmt: skip

    CHECKS = (
        (("dataset", "data_dir", "image_size"), _dataset_fits),
        (("dataset", "num_train", "num_val", "num_test"), _split_fits),
    )


def _micro_batches_fit(v: Mapping[str, Any]) -> None:
    if v["batch_size"] % v["micro_batches"]:
        raise ValueError(
            f"micro_batches={v['micro_batches']} must divide batch_size={v['batch_size']}"
        )


@dataclasses.dataclass(frozen=True)
class Schedule(Settings):
    """The minibatches, the epochs and the seed (every recipe)."""

    batch_size: int = option(50, "Minibatch size.", lower=1)
    micro_batches: int = option(
        1, "Compute each minibatch's gradient in this many equal parts, one after the other: "
        "the memory of one part's activations instead of the whole batch's, for the same "
        "update except that batchnorm's statistics are each part's. It must divide "
        "--batch_size; it may change when a run resumes.", lower=1, may_change_on_resume=True,
    )  # fmt: skip
    num_epochs: int = option(
        10, "Epochs (more than a run has done extend it when it resumes).", lower=1,
        may_change_on_resume=True,
    )  # fmt: skip
    seed: int = option(
        0, "Seeds the initialisation, minibatches, dropout and augmentation.", lower=0,
        upper=2**32 - 1,
    )  # fmt: skip

    CHECKS = ((("batch_size", "micro_batches"), _micro_batches_fit),)


def _schedule_fits(v: Mapping[str, Any]) -> None:
    if v["lr_schedule"] == "cosine" and v["lr_decay"] != 1.0:
        raise ValueError(
            f"lr_decay={v['lr_decay']} applies to --lr_schedule=exponential only; "
            "--lr_schedule=cosine anneals to 0 by itself: pass --lr_decay=1"
        )
    if v["warmup_epochs"] >= v["num_epochs"]:
        raise ValueError(
            f"warmup_epochs must be < num_epochs={v['num_epochs']}, got {v['warmup_epochs']}"
        )


@dataclasses.dataclass(frozen=True)
class Cs231nOptimiser(Schedule):
    """cs231n's update rules (optax inside) and their learning-rate schedule."""

    update_rule: str = option(
        "sgd", "Optimiser (cs231n names, optax inside).", choices=UPDATE_RULES
    )
    learning_rate: float = option(
        1e-3, "Initial learning rate.", check=positive_in_float32,
        requirement="a float > 0, finite in float32 (< 3.4e38)",
    )  # fmt: skip
    lr_decay: float = option(
        1.0, "The learning rate is multiplied by this after every epoch.",
        check=finite_positive, requirement="a finite float > 0",
    )  # fmt: skip
    lr_schedule: str = option(
        "exponential", "exponential: times --lr_decay after every epoch (cs231n); cosine: "
        "annealed to 0 over the run (needs --lr_decay=1).", choices=LR_SCHEDULES,
        before_added="exponential",
    )  # fmt: skip
    warmup_epochs: float = option(
        0.0, "Ramp the learning rate up linearly over this many epochs first.",
        check=finite_nonnegative, requirement="a finite float >= 0", before_added=0.0,
    )  # fmt: skip

    CHECKS = ((("lr_schedule", "lr_decay", "warmup_epochs", "num_epochs"), _schedule_fits),)


@dataclasses.dataclass(frozen=True)
class Init(Settings):
    """The Gaussian initialisation and the L2 term of cs231n's models."""

    weight_scale: float | str = option(
        1e-3, "Std of the Gaussian weight init, or 'he' for sqrt(2 / fan_in).",
        kind="weight_scale", check=weight_scale_ok, requirement="a positive float or 'he'",
    )  # fmt: skip
    reg: float = option(
        0.0, "L2 strength: 0.5·reg·Σ W² in the loss.", check=finite_nonnegative,
        requirement="a finite float >= 0",
    )  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Loss(Settings):
    """The softmax loss's targets."""

    label_smoothing: float = option(
        0.0, "Softmax targets (1 - e)·onehot + e/10 instead of one-hot labels (0: the plain "
        "cross-entropy).", check=probability, requirement="in [0, 1)", before_added=0.0,
    )  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Layers(Settings):
    """Which layers compute the model (the same function either way)."""

    layers: str = option(
        "jcnn", "jcnn: the hand-written layers; reference: their autodiff twins.",
        choices=("jcnn", "reference"), may_change_on_resume=True,
    )  # fmt: skip


def _kernels_run_jcnn_layers(v: Mapping[str, Any]) -> None:
    """The implementations are those of jcnn's layers; the reference layers have none (a
    recipe with :class:`Kernels` has :class:`Layers` too)."""
    chosen = [f"--{n}={v[n]}" for n in ("conv_impl", "pool_impl") if v[n] != getattr(Kernels, n)]
    if v["layers"] == "reference" and chosen:
        raise ValueError(
            f"{' and '.join(chosen)} choose{'s' if len(chosen) == 1 else ''} what runs jcnn's "
            "layers; --layers=reference runs their autodiff twins, which have one implementation "
            f"each: leave {'it' if len(chosen) == 1 else 'them'} out"
        )


@dataclasses.dataclass(frozen=True)
class Kernels(Settings):
    """What runs the convolutions and the pooling (the same function either way)."""

    conv_impl: str = option(
        "auto", "What runs the convolutions: auto (oneDNN where available, else XLA), "
        "onednn, xla, im2col or naive (the same function: a run may resume with another).",
        choices=CONV_IMPLS, check=onednn_available, may_change_on_resume=True,
    )  # fmt: skip
    pool_impl: str = option(
        "fast", "Max-pool implementation.", choices=("naive", "fast"), may_change_on_resume=True
    )

    CHECKS = ((("layers", "conv_impl", "pool_impl"), _kernels_run_jcnn_layers),)


@dataclasses.dataclass(frozen=True)
class Translate(Settings):
    """The padding of the random crops (translations) inside the step."""

    augment_pad: int = option(4, "Padding per side for the random crops.", lower=0)


@dataclasses.dataclass(frozen=True)
class Cutout(Settings):
    """Cutout (DeVries & Taylor, 2017) inside the step."""

    cutout: int = option(
        0, "Zero a square of this side at a random place in every training image (cutout; "
        "0: none).", lower=0, before_added=0,
    )  # fmt: skip


def _cutout_needs_augment(v: Mapping[str, Any]) -> None:
    if v["cutout"] and not v["augment"]:
        raise ValueError(
            f"cutout={v['cutout']} is part of the augmentation: add --augment (or --cutout=0)"
        )


@dataclasses.dataclass(frozen=True)
class Augment(Translate, Cutout):
    """Optional augmentation of cs231n's models: crops, flips and cutout, or none."""

    augment: bool = option(
        False, "Random crops (zero padding --augment_pad), horizontal flips (and --cutout) of "
        "every minibatch, inside the jitted step.",
    )  # fmt: skip

    CHECKS = ((("cutout", "augment"), _cutout_needs_augment),)


@dataclasses.dataclass(frozen=True)
class Evaluation(Settings):
    """How accuracies are measured: on how many images, with test-time flips or not."""

    test_time_flip: bool = option(
        False, "Every accuracy (train, val, test) classifies each image by its scores plus "
        "those of its left-right mirror (twice the evaluation compute).", before_added=False,
    )  # fmt: skip
    num_train_samples: int = option(
        1_000, "Training images the train accuracy is measured on.", lower=1
    )
    num_val_samples: int | None = option(
        None, "Validation images the val accuracy is measured on (default: all).", kind="int",
        lower=1,
    )  # fmt: skip
    test_time_confidence: float | None = option(
        None, "The final test gives the test-time augmentation only to the images whose plain "
        "prediction's softmax confidence is below this, in [0, 1] (default: to every image); "
        "the plain prediction is made anyway, for the accuracy without it.", kind="float",
        lower=0.0, upper=1.0, may_change_on_resume=True,
    )  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Report(Settings):
    """How often the loss is reported, and NaN debugging."""

    print_every: int = option(
        10, "Print (and log to metrics.jsonl) the loss every this many iterations.", lower=1,
        may_change_on_resume=True,
    )  # fmt: skip
    debug_nans: bool = option(
        False, "Turn on jax_debug_nans: every step's outputs are checked for NaN (a sync per "
        "step), and the step that makes one is re-run op by op to name the primitive.",
        may_change_on_resume=True,
    )  # fmt: skip


def _processes_fit(v: Mapping[str, Any]) -> None:
    n, pid = v["num_processes"], v["process_id"]
    if pid >= n:
        raise ValueError(f"process_id must be in [0, num_processes={n}), got {pid}")
    if n > 1 and not v["coordinator_address"]:
        raise ValueError(f"num_processes={n} needs --coordinator_address (host:port of process 0)")


@dataclasses.dataclass(frozen=True)
class Devices(Settings):
    """The devices a process trains on, the arithmetic's dtype, and multi-host runs."""

    num_devices: int | None = option(
        None, "Devices per process to train on, data-parallel: each takes an equal share of "
        "every --batch_size (the global batch; it must divide evenly). Default: all local "
        "devices.", kind="int", lower=1, may_change_on_resume=True,
    )  # fmt: skip
    compute_dtype: str = option(
        "float32", "Dtype of the network's arithmetic (bfloat16: mixed precision, for GPU/TPU "
        "and CPUs with bfloat16 units such as AVX512-BF16 or AMX; parameters, optimiser state "
        "and the loss stay float32).", choices=COMPUTE_DTYPES,
    )  # fmt: skip
    coordinator_address: str | None = option(
        None, "Multi-host runs: host:port of process 0, passed with --num_processes and "
        "--process_id to jax.distributed.initialize.", kind="str", may_change_on_resume=True,
        in_flagfile=False,
    )  # fmt: skip
    num_processes: int = option(
        1, "Multi-host runs: the number of processes (one per host).", lower=1,
        may_change_on_resume=True, in_flagfile=False,
    )  # fmt: skip
    process_id: int = option(
        0, "Multi-host runs: this process's rank in [0, num_processes); process 0 writes the "
        "run's files.", lower=0, may_change_on_resume=True, in_flagfile=False,
    )  # fmt: skip
    coordinator_timeout: int = option(
        300, "Multi-host runs: seconds to wait for every process to connect to "
        "--coordinator_address before stopping with an error.", lower=1,
        may_change_on_resume=True, in_flagfile=False,
    )  # fmt: skip

    CHECKS = ((("num_processes", "process_id", "coordinator_address"), _processes_fit),)
