"""Train the cs231n three-layer ConvNet on CIFAR-10 (the assignment's full-training cell).

    python -m experiments.three_layer_cifar --flagfile=experiments/configs/three_layer_seed.cfg

conv (``num_filters`` of ``filter_size``, 'same' padding) - relu - 2×2 max pool - affine
(``hidden_dim``) - relu - affine - softmax. Every hyper-parameter is a flag (``--helpfull``
lists them; the defaults are :data:`experiments.presets.THREE_LAYER`); the run's files go to
``--workdir`` (see :mod:`experiments.rundir`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from absl import flags

from experiments import errors, presets, train, train_flags
from jcnn.models import ThreeLayerConvNet

APP_NAME = "three_layer_cifar"
MODEL_FLAGS = ("num_filters", "filter_size", "hidden_dim")
NAMES = train_flags.COMMON_FLAGS + MODEL_FLAGS
INPUT_DIM = (3, 32, 32)


def make_model(config: Mapping[str, Any]) -> ThreeLayerConvNet:
    return ThreeLayerConvNet(
        input_dim=tuple(config.get("input_dim", INPUT_DIM)),
        num_classes=config.get("num_classes", 10),
        num_filters=config["num_filters"],
        filter_size=config["filter_size"],
        hidden_dim=config["hidden_dim"],
        weight_scale=config["weight_scale"],
        reg=config["reg"],
        label_smoothing=config.get("label_smoothing", 0.0),
        layers=config["layers"],
        conv_impl=config["conv_impl"],
        pool_impl=config["pool_impl"],
    )


def _conv_fits(values: Mapping[str, Any]) -> ThreeLayerConvNet:
    return ThreeLayerConvNet(input_dim=INPUT_DIM, filter_size=values["filter_size"])


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
    """The app's flags on ``fv``; the defaults are the assignment's run
    (``three_layer_seed.cfg``)."""
    seed = presets.THREE_LAYER.model
    train_flags.define_common_flags(fv, **presets.THREE_LAYER.flag_defaults())
    flags.DEFINE_integer(
        "num_filters", seed["num_filters"], "Conv filters.", lower_bound=1, flag_values=fv
    )
    flags.DEFINE_integer(
        "filter_size", seed["filter_size"], "Square conv filter size ('same' padding).",
        lower_bound=1, flag_values=fv,
    )  # fmt: skip
    train_flags.check_model(fv, ("filter_size",), _conv_fits)
    flags.DEFINE_integer(
        "hidden_dim", seed["hidden_dim"], "Hidden affine units.", lower_bound=1, flag_values=fv
    )


def main(argv: Sequence[str]) -> None:
    train.main(argv, app_name=APP_NAME, names=NAMES, make_model=make_model)


if __name__ == "__main__":
    define_flags()
    flags.adopt_module_key_flags(train_flags)
    errors.run_app(main)
