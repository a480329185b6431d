"""Train the VGG-like ConvNet on CIFAR-10: the seed's run and its variations.

    python -m experiments.vgg_cifar --flagfile=experiments/configs/vgg_seed.cfg
    python -m experiments.vgg_cifar --flagfile=experiments/configs/overfit_small.cfg
    python -m experiments.vgg_cifar --flagfile=experiments/configs/vgg_best.cfg --data_dir=...

The network is ``[(conv - spatial batchnorm - relu) × blocks[s] - 2×2 max pool]`` for each
stage ``s`` (``num_filters[s]`` filters of ``filter_size``, 'same' padding), then
``(affine - batchnorm - relu - dropout)`` per entry of ``hidden_dims``, then affine - softmax.
Every hyper-parameter is a flag (``--helpfull`` lists them); flags given later override
earlier ones, flagfiles included; the defaults are the seed's run
(:data:`experiments.presets.VGG`). The run's files go to ``--workdir`` (see
:mod:`experiments.rundir`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from absl import flags

from experiments import errors, presets, train, train_flags
from jcnn.models import VGGNet

APP_NAME = "vgg_cifar"
MODEL_FLAGS = ("num_filters", "blocks", "filter_size", "hidden_dims", "dropout", "use_batchnorm")
NAMES = train_flags.COMMON_FLAGS + MODEL_FLAGS
INPUT_DIM = (3, 32, 32)


def make_model(config: Mapping[str, Any]) -> VGGNet:
    return VGGNet(
        input_dim=tuple(config.get("input_dim", INPUT_DIM)),
        num_classes=config.get("num_classes", 10),
        num_filters=tuple(config["num_filters"]),
        blocks=tuple(config["blocks"]),
        filter_size=config["filter_size"],
        hidden_dims=tuple(config["hidden_dims"]),
        weight_scale=config["weight_scale"],
        reg=config["reg"],
        label_smoothing=config.get("label_smoothing", 0.0),
        use_batchnorm=config["use_batchnorm"],
        dropout=config["dropout"],
        layers=config["layers"],
        conv_impl=config["conv_impl"],
        pool_impl=config["pool_impl"],
    )


def _stages(values: Mapping[str, Any]) -> VGGNet:
    """Only the stage layout (for the multi-flag check of the pooled sizes)."""
    return VGGNet(
        input_dim=INPUT_DIM,
        num_filters=tuple(values["num_filters"]),
        blocks=tuple(values["blocks"]),
        filter_size=values["filter_size"],
        hidden_dims=(),
    )


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
    """The app's flags on ``fv``; the defaults are the seed's run (``vgg_seed.cfg``)."""
    seed = presets.VGG.model
    train_flags.define_common_flags(fv, **presets.VGG.flag_defaults())
    train_flags.define_int_list(
        "num_filters", seed["num_filters"], "Filters of the convolutions of each stage.", fv
    )
    train_flags.define_int_list(
        "blocks", seed["blocks"], "Conv-bn-relu blocks per stage (the seed's As); one entry "
        "per --num_filters entry.", fv,
    )  # fmt: skip
    flags.DEFINE_integer(
        "filter_size", seed["filter_size"], "Square conv filter size ('same' padding).",
        lower_bound=1, flag_values=fv,
    )  # fmt: skip
    train_flags.check_model(fv, ("num_filters", "blocks", "filter_size"), _stages)
    train_flags.define_int_list(
        "hidden_dims", seed["hidden_dims"], "Widths of the hidden affine layers (may be empty).",
        fv, allow_empty=True,
    )  # fmt: skip
    flags.DEFINE_float(
        "dropout", seed["dropout"], "Probability of dropping each hidden unit (0: no dropout).",
        flag_values=fv,
    )  # fmt: skip
    train_flags.check(
        fv, "dropout", lambda v: 0.0 <= v < 1.0, "in [0, 1) (a probability of dropping)"
    )
    flags.DEFINE_bool(
        "use_batchnorm", seed["use_batchnorm"], "Batchnorm after every conv and affine layer.",
        flag_values=fv,
    )  # fmt: skip


def main(argv: Sequence[str]) -> None:
    train.main(argv, app_name=APP_NAME, names=NAMES, make_model=make_model)


if __name__ == "__main__":
    define_flags()
    flags.adopt_module_key_flags(train_flags)
    errors.run_app(main)
