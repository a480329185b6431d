"""The models the apps and the benchmarks share, defined once: the seed's VGG run, the
assignment's three-layer net and airbench94's net.

Each :class:`Preset` holds the model's constructor arguments (``model``: everything but the
input size and the implementation choices) and the training settings of its run
(``training``: the defaults of the apps' flags; the flagfiles in ``experiments/configs/``
spell the same runs out). The training apps take their flag defaults from here,
:mod:`experiments.benchmark`, :mod:`experiments.bench_devices` and
:mod:`experiments.profile_step` their default model (:data:`AIRBENCH` holds the defaults of
:mod:`experiments.airbench_cifar`, which defines its own flags: a test keeps the two equal)::

    presets.VGG.build(input_dim=(3, 32, 32))   # the seed's VGGNet
    presets.VGG.flag_defaults()                 # --weight_scale, --reg, --learning_rate, ...

Importing this module imports no JAX (the benchmark's parent process stays without it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any


@dataclasses.dataclass(frozen=True)
class Preset:
    """One model and its training run; ``model_class`` names a :mod:`jcnn.models` class."""

    model_class: str
    model: Mapping[str, Any]
    training: Mapping[str, Any]

    def build(self, **overrides: Any) -> Any:
        """The :mod:`jcnn.models` model: the preset's arguments, then ``overrides``."""
        import jcnn.models

        return getattr(jcnn.models, self.model_class)(**{**self.model, **overrides})

    def flag_defaults(self) -> dict[str, Any]:
        """The defaults of the training apps' common flags
        (:func:`experiments.train_flags.define_common_flags`)."""
        return {
            "weight_scale": self.model["weight_scale"],
            "reg": self.model["reg"],
            **self.training,
        }


def _frozen(**kw: Any) -> Mapping[str, Any]:
    return MappingProxyType(kw)


# The seed's VGG-like net (experiments/configs/vgg_seed.cfg).
VGG = Preset(
    model_class="VGGNet",
    model=_frozen(
        num_filters=(64, 64, 128, 256),
        filter_size=3,
        blocks=(2, 2, 3, 3),
        hidden_dims=(64, 64),
        weight_scale=1e-2,
        reg=1e-3,
        use_batchnorm=True,
        dropout=0.2,
    ),
    training=_frozen(
        update_rule="adam",
        learning_rate=5e-4,
        lr_decay=0.95,
        batch_size=50,
        num_epochs=10,
        print_every=100,
    ),
)

# cs231n's three-layer ConvNet, the assignment's full-training cell
# (experiments/configs/three_layer_seed.cfg).
THREE_LAYER = Preset(
    model_class="ThreeLayerConvNet",
    model=_frozen(num_filters=32, filter_size=7, hidden_dim=500, weight_scale=1e-3, reg=1e-3),
    training=_frozen(
        update_rule="adam",
        learning_rate=1e-3,
        lr_decay=1.0,
        batch_size=50,
        num_epochs=1,
        print_every=20,
    ),
)


# airbench94's net and run (Jordan, 2024; experiments/configs/airbench94.cfg): the model's
# arguments are jcnn.models.AirbenchNet's defaults, the training settings the defaults of
# experiments.airbench_cifar's flags (Nesterov SGD in airbench's units per 1,024 examples;
# that app defines its own flags, so this preset has no flag_defaults()).
AIRBENCH = Preset(
    model_class="AirbenchNet",
    model=_frozen(
        widths=(64, 256, 256),
        whiten_kernel=2,
        head_scale=1.0 / 9.0,
        bn_momentum=0.6,
        bn_eps=1e-12,
        label_smoothing=0.2,
        reg=0.0,
    ),
    training=_frozen(
        learning_rate=11.5,
        momentum=0.85,
        weight_decay=0.0153,
        bias_scaler=64.0,
        whiten_bias_epochs=3.0,
        whiten_images=5000,
        lookahead_every=5,
        batch_size=1024,
        num_epochs=10,
        print_every=10,
    ),
)
