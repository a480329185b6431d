"""Train the airbench-style net on CIFAR-10: the fast recipe of Jordan (2024), "94% on
CIFAR-10 in 3.29 seconds on a single GPU", on jcnn's hand-written layers.

    python -m experiments.airbench_cifar --flagfile=experiments/configs/airbench94.cfg \\
        --data_dir=DIR

The net is :class:`jcnn.models.AirbenchNet` (a frozen whitening conv from the data, three
conv-pool-batchnorm-GELU blocks, a scaled linear head). The recipe around it: the whole
training set of 50,000 images, each epoch a new permutation (``--num_val=0``: nothing is
selected on a validation split, the final weights are the result); airbench's Nesterov SGD
with parameter groups (:func:`jcnn.optim.airbench_sgd`: ``--learning_rate``, ``--momentum``,
``--weight_decay`` in airbench's units per 1,024 examples, ``--bias_scaler`` for the
batchnorm shifts, the whitening bias trained for ``--whiten_bias_epochs``), a warm-up then
linear decay per update, or with ``--optimizer=muon`` airbench94_muon's
(:func:`jcnn.optim.airbench_muon`: Muon on the 3×3 filters at ``--muon_learning_rate`` and
``--muon_momentum``, the SGD groups as before, a linear decay to 0), lookahead averaging of
the weights and batchnorm statistics every ``--lookahead_every`` updates
(:class:`jcnn.train.Lookahead`), label smoothing, alternating flips (``--flips=random``: a
coin per image and step instead) and ``--augment_pad``-pixel reflect translations inside the
step (:func:`jcnn.augment.alternating_flip_crop`), and test-time augmentation over flips and
``--test_time_translate``-pixel shifts. The common flags ``--update_rule``, ``--lr_decay``,
``--lr_schedule``, ``--warmup_epochs``, ``--weight_scale``, ``--reg``, ``--conv_impl``,
``--pool_impl``, ``--cutout`` and ``--augment`` do not apply to this app. The run's files go
to ``--workdir`` (:mod:`experiments.rundir`); rerunning the same command resumes it.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

from absl import flags

from experiments import errors, train, train_flags
from jcnn.models import AirbenchNet

APP_NAME = "airbench_cifar"
MODEL_FLAGS = (
    "widths", "momentum", "weight_decay", "bias_scaler", "whiten_bias_epochs",
    "whiten_images", "lookahead_every", "flips", "test_time_translate", "optimizer",
    "muon_learning_rate", "muon_momentum",
)  # fmt: skip
NAMES = train_flags.COMMON_FLAGS + MODEL_FLAGS
INPUT_DIM = (3, 32, 32)


def make_model(config: Mapping[str, Any]) -> AirbenchNet:
    return AirbenchNet(
        input_dim=tuple(config.get("input_dim", INPUT_DIM)),
        num_classes=config.get("num_classes", 10),
        widths=tuple(config["widths"]),
        label_smoothing=config["label_smoothing"],
        layers=config["layers"],
    )


def solver_options(
    config: Mapping[str, Any], model: AirbenchNet, data: Mapping[str, Any]
) -> dict[str, Any]:
    """The recipe's Solver arguments: its optimiser, sampler, augmentation, lookahead,
    test-time augmentation and the data-dependent initialisation."""
    import jax

    from jcnn.augment import alternating_flip_crop, random_crop_flip
    from jcnn.optim import airbench_muon, airbench_sgd
    from jcnn.solver import check_epoch_batches
    from jcnn.train import Lookahead

    batch = int(config["batch_size"])
    check_epoch_batches(len(data["y_train"]), batch)  # before the whitening's work
    per_epoch = max(len(data["y_train"]) // batch, 1)
    total = per_epoch * int(config["num_epochs"])
    init_key = jax.random.split(jax.random.key(int(config["seed"])))[0]
    params, state = model.init_with_data(init_key, data["X_train"][: config["whiten_images"]])
    common = dict(
        num_iterations=total, iterations_per_epoch=per_epoch, batch_size=batch,
        learning_rate=config["learning_rate"], momentum=config["momentum"],
        weight_decay=config["weight_decay"], bias_scaler=config["bias_scaler"],
        whiten_bias_epochs=config["whiten_bias_epochs"],
    )  # fmt: skip
    if config.get("optimizer", "sgd") == "muon":
        optimizer, schedule = airbench_muon(
            params, muon_learning_rate=config["muon_learning_rate"],
            muon_momentum=config["muon_momentum"], **common,
        )  # fmt: skip
    else:
        optimizer, schedule = airbench_sgd(params, **common)
    every = int(config["lookahead_every"])
    pad = int(config["augment_pad"])
    if config.get("flips", "alternating") == "alternating":
        augment = functools.partial(alternating_flip_crop, steps_per_epoch=per_epoch, pad=pad)
    else:
        augment = functools.partial(random_crop_flip, pad=pad, padding="reflect")
    return {
        "params": params,
        "state": state,
        "optimizer": optimizer,
        "schedule": schedule,
        "sampling": "epoch",
        "select_best": False,
        "lookahead": Lookahead(every, total) if every else None,
        "augment": augment,
        "test_time_translate": int(config["test_time_translate"]),
    }


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
    """The app's flags on ``fv``; the defaults are airbench94's (``airbench94.cfg``)."""
    train_flags.define_common_flags(
        fv, weight_scale=1e-2, reg=0.0, update_rule="sgd_momentum", learning_rate=11.5,
        lr_decay=1.0, batch_size=1024, num_epochs=10, print_every=10,
    )  # fmt: skip
    train_flags.define_int_list(
        "widths", [64, 256, 256], "Filters of the three conv-pool-batchnorm-GELU blocks.", fv
    )
    flags.DEFINE_float(
        "momentum", 0.85, "Nesterov momentum of every parameter group.", flag_values=fv
    )
    train_flags.check(fv, "momentum", lambda v: 0.0 <= v < 1.0, "in [0, 1)")
    flags.DEFINE_float(
        "weight_decay", 0.0153, "Weight decay in airbench's units (per 1,024 examples).",
        lower_bound=0.0, flag_values=fv,
    )  # fmt: skip
    flags.DEFINE_float(
        "bias_scaler", 64.0, "Learning-rate factor of the batchnorm shifts.", lower_bound=0.0,
        flag_values=fv,
    )  # fmt: skip
    flags.DEFINE_float(
        "whiten_bias_epochs", 3.0, "Epochs the whitening conv's bias trains for.",
        lower_bound=0.0, flag_values=fv,
    )  # fmt: skip
    flags.DEFINE_integer(
        "whiten_images", 5000, "Training images the whitening filters are computed from.",
        lower_bound=1, flag_values=fv,
    )  # fmt: skip
    flags.DEFINE_integer(
        "lookahead_every", 5, "Updates between two lookahead averaging steps (0: no lookahead).",
        lower_bound=0, flag_values=fv,
    )  # fmt: skip
    flags.DEFINE_enum(
        "flips", "alternating", ["alternating", "random"], "Training flips: 'alternating' "
        "(each image mirrored in every other epoch) or 'random' (a coin per image and step).",
        flag_values=fv,
    )  # fmt: skip
    flags.DEFINE_enum(
        "optimizer", "sgd", ["sgd", "muon"], "'sgd': airbench94's Nesterov SGD on every group "
        "(jcnn.optim.airbench_sgd), a warm-up then a linear decay to 0.07; 'muon': "
        "airbench94_muon's Muon on the 3x3 filters and Nesterov SGD on the head and shifts "
        "(jcnn.optim.airbench_muon), a linear decay to 0 without warm-up.", flag_values=fv,
    )  # fmt: skip
    flags.DEFINE_float(
        "muon_learning_rate", 0.24, "With --optimizer=muon: the filters' Muon step at the "
        "start (relative to weights renormalised to Frobenius norm sqrt(filters)).",
        lower_bound=0.0, flag_values=fv,
    )  # fmt: skip
    flags.DEFINE_float(
        "muon_momentum",
        0.6,
        "With --optimizer=muon: the filters' Nesterov momentum.",
        flag_values=fv,
    )
    train_flags.check(fv, "muon_momentum", lambda v: 0.0 <= v < 1.0, "in [0, 1)")
    flags.DEFINE_integer(
        "test_time_translate", 1, "Test-time augmentation: also classify each image shifted "
        "by this many pixels diagonally each way (0: none; see --test_time_flip).",
        lower_bound=0, flag_values=fv,
    )  # fmt: skip


def main(argv: Sequence[str]) -> None:
    train.main(
        argv, app_name=APP_NAME, names=NAMES, make_model=make_model, solver_options=solver_options
    )


if __name__ == "__main__":
    define_flags()
    flags.adopt_module_key_flags(train_flags)
    errors.run_app(main)
