"""Train the VGG-like ConvNet on CIFAR-10: the seed's run and its variations.

    python -m experiments.vgg_cifar --flagfile=experiments/configs/vgg_seed.cfg
    python -m experiments.vgg_cifar --flagfile=experiments/configs/overfit_small.cfg
    python -m experiments.vgg_cifar --flagfile=experiments/configs/vgg_best.cfg --data_dir=...

The network is ``[(conv - spatial batchnorm - relu) × blocks[s] - 2×2 max pool]`` for each
stage ``s`` (``num_filters[s]`` filters of ``filter_size``, 'same' padding), then
``(affine - batchnorm - relu - dropout)`` per entry of ``hidden_dims``, then affine - softmax.
Every hyper-parameter is a flag (``--helpfull`` lists them); flags given later override
earlier ones, flagfiles included. The run's files go to ``--workdir`` (see
:mod:`experiments.train`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from absl import app, flags

from experiments import train
from jcnn.models import VGGNet

APP_NAME = "vgg_cifar"
MODEL_FLAGS = ("num_filters", "blocks", "filter_size", "hidden_dims", "dropout", "use_batchnorm")
NAMES = train.COMMON_FLAGS + MODEL_FLAGS
INPUT_DIM = (3, 32, 32)


def make_model(config: Mapping[str, Any]) -> VGGNet:
    return VGGNet(
        input_dim=INPUT_DIM,
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
    train.define_common_flags(
        fv, weight_scale=1e-2, reg=1e-3, update_rule="adam", learning_rate=5e-4, lr_decay=0.95,
        batch_size=50, num_epochs=10, print_every=100,
    )  # fmt: skip
    train.define_int_list(
        "num_filters", (64, 64, 128, 256), "Filters of the convolutions of each stage.", fv
    )
    train.define_int_list(
        "blocks", (2, 2, 3, 3), "Conv-bn-relu blocks per stage (the seed's As); one entry per "
        "--num_filters entry.", fv,
    )  # fmt: skip
    flags.DEFINE_integer(
        "filter_size", 3, "Square conv filter size ('same' padding).", lower_bound=1,
        flag_values=fv,
    )  # fmt: skip
    train.define_int_list(
        "hidden_dims", (64, 64), "Widths of the hidden affine layers (may be empty).", fv,
        allow_empty=True,
    )  # fmt: skip
    flags.DEFINE_float(
        "dropout", 0.2, "Probability of dropping each hidden unit (0: no dropout).", flag_values=fv
    )
    train.check(fv, "dropout", lambda v: 0.0 <= v < 1.0, "in [0, 1) (a probability of dropping)")
    flags.DEFINE_bool(
        "use_batchnorm", True, "Batchnorm after every conv and affine layer.", flag_values=fv
    )
    train.check_model(fv, ("num_filters", "blocks", "filter_size"), _stages)


def main(argv: Sequence[str]) -> None:
    train.main(argv, app_name=APP_NAME, names=NAMES, make_model=make_model)


if __name__ == "__main__":
    define_flags()
    flags.adopt_module_key_flags(train)
    app.run(main)
