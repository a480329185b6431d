"""The training apps' recipes: one typed, frozen config class per app, and the named runs
as values of them.

    VGGRecipe          experiments.vgg_cifar          VGG_SEED (default), VGG_BEST, OVERFIT_SMALL
    ThreeLayerRecipe   experiments.three_layer_cifar  THREE_LAYER_SEED (default)
    AirbenchRecipe     experiments.airbench_cifar     AIRBENCH94 (default), AIRBENCH94_MUON,
                                                      AIRBENCH94_MUON_FAST, AIRBENCH95_MUON,
                                                      AIRBENCH96_MUON

Each class inherits the groups of settings it uses (:mod:`experiments.config`) and adds
its model's; the app's flags are derived from its fields and their defaults are its default
recipe. The flagfiles in ``experiments/configs/`` spell the same runs out for the command
line (:data:`FLAGFILES`; a test keeps each equal to its value)::

    recipe = dataclasses.replace(VGG_SEED, num_epochs=2, learning_rate=1e-3)
    model = recipe.build_model()                # a jcnn.models.VGGNet
    flag_values(recipe)                          # the run's flags, as recorded

Importing this module imports no JAX (the benchmark's parent process stays without it).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any, ClassVar

from experiments.config import (
    Augment,
    Cs231nOptimiser,
    Cutout,
    Data,
    Devices,
    Evaluation,
    Files,
    Init,
    Kernels,
    Layers,
    Loss,
    Report,
    Schedule,
    Translate,
)
from experiments.settings import option, probability

INPUT_DIM = (3, 32, 32)


@dataclasses.dataclass(frozen=True)
class Recipe(Files, Data, Layers, Loss, Evaluation, Report, Devices):
    """What every app's recipe has; a subclass adds its optimiser, augmentation and model
    settings and names its model (``MODEL_CLASS``, a :mod:`jcnn.models` class)."""

    APP_NAME: ClassVar[str] = ""  # the app that trains it (in config.json, summary.json)
    MODEL_CLASS: ClassVar[str] = ""
    # Settings whose combination only the model's constructor can check (e.g. the pooled
    # sizes of a VGG's stages): checked together while the flags are parsed, and when the
    # model is built.
    MODEL_CHECKED: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def check_model_settings(cls, values: Mapping[str, Any]) -> None:
        """Raise ValueError unless the model's constructor accepts ``values`` (some of
        :attr:`MODEL_CHECKED`; the rest of the model at its defaults, no hidden layers)."""
        import jcnn.models

        args = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        if "hidden_dims" in {f.name for f in dataclasses.fields(cls)}:
            args.setdefault("hidden_dims", ())
        getattr(jcnn.models, cls.MODEL_CLASS)(input_dim=INPUT_DIM, **args)

    def model_arguments(self) -> dict[str, Any]:
        """The model's constructor arguments this recipe sets (not the input size)."""
        raise NotImplementedError

    def training_pieces(self, model: Any, data: Mapping[str, Any]) -> dict[str, Any]:
        """The Solver arguments only this recipe has (its own optimiser, sampler,
        augmentation, ...; they override those of the common settings): none here."""
        return {}

    def build_model(self, input_dim: tuple[int, ...] = INPUT_DIM, num_classes: int = 10) -> Any:
        """The :mod:`jcnn.models` model of this recipe for ``input_dim`` images."""
        import jcnn.models

        model_class = getattr(jcnn.models, self.MODEL_CLASS)
        return model_class(
            input_dim=tuple(input_dim), num_classes=num_classes, **self.model_arguments()
        )


def _validation_selects_best(v: Mapping[str, Any]) -> None:
    """cs231n's recipes keep the parameters of the best validation accuracy."""
    if v["num_val"] == 0:
        raise ValueError(
            "num_val=0 leaves no validation images, and this recipe keeps the parameters of "
            "its best validation accuracy: give --num_val of at least 1"
        )


@dataclasses.dataclass(frozen=True)
class VGGRecipe(Recipe, Init, Kernels, Cs231nOptimiser, Augment):
    """The VGG-like ConvNet: ``[(conv - sbn - relu) × blocks[s] - pool]`` per stage, then
    ``(affine - bn - relu - dropout)`` per hidden width, then affine - softmax."""

    APP_NAME = "vgg_cifar"
    MODEL_CLASS = "VGGNet"
    MODEL_CHECKED = ("num_filters", "blocks", "filter_size")

    num_filters: tuple[int, ...] = option(
        (64, 64, 128, 256), "Filters of the convolutions of each stage."
    )
    blocks: tuple[int, ...] = option(
        (2, 2, 3, 3), "Conv-bn-relu blocks per stage (the seed's As); one entry per "
        "--num_filters entry.",
    )  # fmt: skip
    filter_size: int = option(3, "Square conv filter size ('same' padding).", lower=1)
    hidden_dims: tuple[int, ...] = option(
        (64, 64), "Widths of the hidden affine layers (may be empty).", allow_empty=True
    )
    dropout: float = option(
        0.2, "Probability of dropping each hidden unit (0: no dropout).", check=probability,
        requirement="in [0, 1) (a probability of dropping)",
    )  # fmt: skip
    use_batchnorm: bool = option(True, "Batchnorm after every conv and affine layer.")

    CHECKS = ((("num_val",), _validation_selects_best),)

    def model_arguments(self) -> dict[str, Any]:
        return dict(
            num_filters=self.num_filters, blocks=self.blocks, filter_size=self.filter_size,
            hidden_dims=self.hidden_dims, weight_scale=self.weight_scale, reg=self.reg,
            label_smoothing=self.label_smoothing, use_batchnorm=self.use_batchnorm,
            dropout=self.dropout, layers=self.layers, conv_impl=self.conv_impl,
            pool_impl=self.pool_impl,
        )  # fmt: skip


@dataclasses.dataclass(frozen=True)
class ThreeLayerRecipe(Recipe, Init, Kernels, Cs231nOptimiser, Augment):
    """cs231n's three-layer ConvNet: conv - relu - 2×2 max pool - affine - relu - affine."""

    APP_NAME = "three_layer_cifar"
    MODEL_CLASS = "ThreeLayerConvNet"
    MODEL_CHECKED = ("filter_size",)

    num_filters: int = option(32, "Conv filters.", lower=1)
    filter_size: int = option(7, "Square conv filter size ('same' padding).", lower=1)
    hidden_dim: int = option(500, "Hidden affine units.", lower=1)

    CHECKS = ((("num_val",), _validation_selects_best),)

    def model_arguments(self) -> dict[str, Any]:
        return dict(
            num_filters=self.num_filters, filter_size=self.filter_size,
            hidden_dim=self.hidden_dim, weight_scale=self.weight_scale, reg=self.reg,
            label_smoothing=self.label_smoothing, layers=self.layers,
            conv_impl=self.conv_impl, pool_impl=self.pool_impl,
        )  # fmt: skip


def _selection_fits(v: Mapping[str, Any]) -> None:
    keep = v["select_keep"]
    if keep > v["batch_size"]:
        raise ValueError(f"select_keep={keep} must be at most batch_size={v['batch_size']}")
    if keep and keep % v["micro_batches"]:
        raise ValueError(f"micro_batches={v['micro_batches']} must divide select_keep={keep}")


@dataclasses.dataclass(frozen=True)
class AirbenchRecipe(Recipe, Schedule, Translate, Cutout):
    """airbench94's net and recipe (Jordan, 2024): :class:`jcnn.models.AirbenchNet`, its
    Nesterov SGD (or airbench94_muon's Muon) in airbench's units, lookahead, alternating
    flips and reflect translations inside the step, test-time flips and shifts."""

    APP_NAME = "airbench_cifar"
    MODEL_CLASS = "AirbenchNet"

    widths: tuple[int, ...] = option(
        (64, 256, 256),
        "Filters of each conv-pool-batchnorm-GELU block, one entry per block (airbench94: three).",
    )
    convs_per_block: int = option(
        2, "Convolutions per block (airbench94: 2; airbench96: 3, the first's activation added "
        "to the last's).", lower=2, before_added=2,
    )  # fmt: skip
    gelu_after_add: bool = option(
        False, "With --convs_per_block > 2: each block's last GELU after its residual add "
        "(airbench96's 2024 revision) instead of before it.", before_added=False,
    )  # fmt: skip
    optimizer: str = option(
        "sgd", "'sgd': airbench94's Nesterov SGD on every group (jcnn.optim.airbench_sgd), a "
        "warm-up then a linear decay to 0.07; 'muon': airbench94_muon's Muon on the 3x3 "
        "filters and Nesterov SGD on the head and shifts (jcnn.optim.airbench_muon), a linear "
        "decay to 0 without warm-up.", choices=("sgd", "muon"),
    )  # fmt: skip
    learning_rate: float = option(
        11.5, "The SGD groups' learning rate in airbench's units (per 1,024 examples).",
        lower=0.0,
    )  # fmt: skip
    momentum: float = option(
        0.85, "Nesterov momentum of every parameter group.", check=probability,
        requirement="in [0, 1)",
    )  # fmt: skip
    weight_decay: float = option(
        0.0153, "Weight decay in airbench's units (per 1,024 examples).", lower=0.0
    )
    bias_scaler: float = option(64.0, "Learning-rate factor of the batchnorm shifts.", lower=0.0)
    whiten_bias_epochs: float = option(
        3.0, "Epochs the whitening conv's bias trains for.", lower=0.0
    )
    whiten_images: int = option(
        5000, "Training images the whitening filters are computed from.", lower=1
    )
    lookahead_every: int = option(
        5, "Updates between two lookahead averaging steps (0: no lookahead).", lower=0
    )
    flips: str = option(
        "alternating", "Training flips: 'alternating' (each image mirrored in every other "
        "epoch) or 'random' (a coin per image and step).", choices=("alternating", "random"),
        before_added="alternating",
    )  # fmt: skip
    muon_learning_rate: float = option(
        0.24, "With --optimizer=muon: the filters' Muon step at the start (relative to weights "
        "renormalised to Frobenius norm sqrt(filters)).", lower=0.0,
    )  # fmt: skip
    muon_momentum: float = option(
        0.6, "With --optimizer=muon: the filters' Nesterov momentum.", check=probability,
        requirement="in [0, 1)",
    )  # fmt: skip
    test_time_translate: int = option(
        1, "Test-time augmentation: also classify each image shifted by this many pixels "
        "diagonally each way (0: none; see --test_time_flip).", lower=0,
    )  # fmt: skip
    select_keep: int = option(
        0, "Data selection (airbench96_faster's): each update trains on this many rows of "
        "the minibatch, those a small proxy net finds hardest (0: every row). The rates stay "
        "per example: the learning rate applies to the kept rows, the weight decay per "
        "update as without.", lower=0, before_added=0,
    )  # fmt: skip
    select_proxy_widths: tuple[int, ...] = option(
        (32, 64, 64), "With --select_keep: the proxy's block widths (two convolutions per "
        "block; it trains with airbench's SGD).", before_added=(32, 64, 64),
    )  # fmt: skip
    select_proxy_every: int = option(
        4, "With --select_keep: the proxy trains on its selection every this many updates.",
        lower=1, before_added=4,
    )  # fmt: skip

    CHECKS = ((("select_keep", "batch_size", "micro_batches"), _selection_fits),)

    def _check_shifts(self, image_hw: tuple[int, ...]) -> None:
        """The crops and the test-time shifts reflect the image at its edges: fewer pixels
        than the images have (a ValueError naming the flag, before any work)."""
        for name in ("augment_pad", "test_time_translate"):
            if getattr(self, name) >= min(image_hw):
                raise ValueError(
                    f"--{name}={getattr(self, name)} must be smaller than the images "
                    f"{tuple(image_hw)}: they are reflected at their edges"
                )

    def model_arguments(self) -> dict[str, Any]:
        return dict(
            widths=self.widths, convs_per_block=self.convs_per_block,
            gelu_after_add=self.gelu_after_add, label_smoothing=self.label_smoothing,
            layers=self.layers,
        )  # fmt: skip

    def training_pieces(self, model: Any, data: Mapping[str, Any]) -> dict[str, Any]:
        """airbench's optimiser, sampler, augmentation, lookahead, test-time augmentation
        and data-dependent initialisation, as Solver arguments."""
        import jax

        from jcnn.augment import alternating_flip_crop, random_crop_flip
        from jcnn.optim import airbench_muon, airbench_sgd
        from jcnn.solver import check_epoch_batches
        from jcnn.train import Lookahead

        batch = self.batch_size
        check_epoch_batches(len(data["y_train"]), batch)  # before the whitening's work
        self._check_shifts(model.input_shape[1:])
        per_epoch = max(len(data["y_train"]) // batch, 1)
        total = per_epoch * self.num_epochs
        init_key = jax.random.split(jax.random.key(self.seed))[0]
        params, state = model.init_with_data(init_key, data["X_train"][: self.whiten_images])
        keep = self.select_keep or batch  # the rows each update trains on
        common = dict(
            num_iterations=total, iterations_per_epoch=per_epoch, batch_size=keep,
            learning_rate=self.learning_rate, momentum=self.momentum,
            weight_decay=self.weight_decay * batch / keep, bias_scaler=self.bias_scaler,
            whiten_bias_epochs=self.whiten_bias_epochs,
        )  # fmt: skip
        if self.optimizer == "muon":
            optimizer, schedule = airbench_muon(
                params, muon_learning_rate=self.muon_learning_rate,
                muon_momentum=self.muon_momentum, **common,
            )  # fmt: skip
        else:
            optimizer, schedule = airbench_sgd(params, **common)
        every = self.lookahead_every
        crops = {"pad": self.augment_pad, **({"cutout": self.cutout} if self.cutout else {})}
        if self.flips == "alternating":
            augment = functools.partial(alternating_flip_crop, steps_per_epoch=per_epoch, **crops)
        else:
            augment = functools.partial(random_crop_flip, padding="reflect", **crops)
        return {
            "params": params,
            "state": state,
            "selection": self._selection(model, data, init_key, per_epoch, common),
            "optimizer": optimizer,
            "schedule": schedule,
            "sampling": "epoch",
            "select_best": False,
            "lookahead": Lookahead(every, total) if every else None,
            "augment": augment,
            "test_time_translate": self.test_time_translate,
        }

    def _selection(
        self, model: Any, data: Mapping[str, Any], key: Any, per_epoch: int, common: dict
    ) -> Any:
        """With ``select_keep``: the proxy (this net at ``select_proxy_widths``, two convs per
        block, whitened from the same images, its whitening bias frozen) and its airbench
        SGD over its own updates (one per ``select_proxy_every``); None without."""
        import jax

        from jcnn.optim import airbench_sgd
        from jcnn.selection import PROXY_FOLD, Selection

        if not self.select_keep:
            return None
        every = self.select_proxy_every
        proxy = dataclasses.replace(
            model, widths=self.select_proxy_widths, convs_per_block=2, gelu_after_add=False
        )
        params, state = proxy.init_with_data(
            jax.random.fold_in(key, PROXY_FOLD), data["X_train"][: self.whiten_images]
        )
        proxy_common = {
            **common, "num_iterations": -(-common["num_iterations"] // every),
            "iterations_per_epoch": max(per_epoch // every, 1), "whiten_bias_epochs": 0.0,
        }  # fmt: skip
        optimizer, _ = airbench_sgd(params, **proxy_common)
        return Selection(proxy, optimizer, self.select_keep, every, params, state)


# --------------------------------------------------------------------------- the named runs

# The seed's VGG run (cs231n assignment 2 tutorial, part 12): experiments/configs/vgg_seed.cfg.
VGG_SEED = VGGRecipe(
    weight_scale=1e-2, reg=1e-3, update_rule="adam", learning_rate=5e-4, lr_decay=0.95,
    batch_size=50, num_epochs=10, print_every=100,
)  # fmt: skip

# The best VGG recipe measured: wider, He init, SGD with momentum on a cosine schedule,
# crops, flips and cutout, label smoothing, 40 epochs (vgg_best.cfg).
VGG_BEST = dataclasses.replace(
    VGG_SEED, num_filters=(64, 128, 256, 512), hidden_dims=(512,), dropout=0.3,
    weight_scale="he", reg=5e-4, update_rule="sgd_momentum", learning_rate=0.1, lr_decay=1.0,
    lr_schedule="cosine", warmup_epochs=2.0, batch_size=128, num_epochs=40, augment=True,
    cutout=16, label_smoothing=0.1, keep_checkpoints=2,
)  # fmt: skip

# The seed's sanity check: a small VGG overfits 100 images (overfit_small.cfg).
OVERFIT_SMALL = dataclasses.replace(
    VGG_SEED, num_filters=(16, 32, 64), blocks=(1, 2, 2), hidden_dims=(64,), dropout=0.0,
    weight_scale="he", reg=0.0, learning_rate=2e-3, lr_decay=1.0, batch_size=20,
    num_epochs=15, num_train=100, num_val=200, num_test=200, print_every=10,
    num_train_samples=100, keep_checkpoints=2,
)  # fmt: skip

# cs231n's three-layer ConvNet, the assignment's full-training cell (three_layer_seed.cfg).
THREE_LAYER_SEED = ThreeLayerRecipe(
    weight_scale=1e-3, reg=1e-3, update_rule="adam", learning_rate=1e-3, lr_decay=1.0,
    batch_size=50, num_epochs=1, print_every=20,
)  # fmt: skip

# airbench94 (Jordan, 2024) on jcnn: the whole training set, no validation split, the final
# weights are the result (airbench94.cfg).
AIRBENCH94 = AirbenchRecipe(
    num_train=50_000, num_val=0, num_test=10_000, label_smoothing=0.2, augment_pad=2,
    batch_size=1024, num_epochs=10, print_every=8, num_train_samples=500,
    test_time_flip=True, keep_checkpoints=1,
)  # fmt: skip

# airbench94_muon: Muon on the 3x3 filters, no lookahead, batch 2,000 (airbench94_muon.cfg).
AIRBENCH94_MUON = dataclasses.replace(
    AIRBENCH94, optimizer="muon", learning_rate=6.5, weight_decay=0.0157, lookahead_every=0,
    batch_size=2000, print_every=5,
)  # fmt: skip

# The fast CPU recipe: airbench94_muon with its network in bfloat16, each update of 2,000
# images taken in two micro-batches (under 3 GB resident), test-time augmentation only where
# the plain prediction is unsure, 11 epochs (airbench94_muon_fast.cfg).
AIRBENCH94_MUON_FAST = dataclasses.replace(
    AIRBENCH94_MUON, compute_dtype="bfloat16", micro_batches=2, test_time_confidence=0.7,
    num_epochs=11,
)  # fmt: skip

# airbench95's wider net (widths 128/384/384, 15 epochs) with airbench94_muon's optimiser and
# augmentation, in bfloat16 (airbench95_muon.cfg).
AIRBENCH95_MUON = dataclasses.replace(
    AIRBENCH94_MUON, widths=(128, 384, 384), num_epochs=15, compute_dtype="bfloat16",
    micro_batches=2,
)  # fmt: skip

# airbench96's wider, residual net with airbench94_muon's optimiser, cutout and 4-pixel
# translations, in bfloat16 (airbench96_muon.cfg).
AIRBENCH96_MUON = dataclasses.replace(
    AIRBENCH94_MUON, widths=(128, 384, 512), convs_per_block=3, augment_pad=4, cutout=12,
    num_epochs=34, compute_dtype="bfloat16", micro_batches=2,
)  # fmt: skip

# Every recipe class, by the app that trains it.
RECIPE_CLASSES: dict[str, type[Recipe]] = {
    cls.APP_NAME: cls for cls in (VGGRecipe, ThreeLayerRecipe, AirbenchRecipe)
}

# Each flagfile's recipe (its app's flags, defaults, then the file).
FLAGFILES: dict[str, Recipe] = {
    "vgg_seed.cfg": VGG_SEED,
    "vgg_best.cfg": VGG_BEST,
    "overfit_small.cfg": OVERFIT_SMALL,
    "three_layer_seed.cfg": THREE_LAYER_SEED,
    "airbench94.cfg": AIRBENCH94,
    "airbench94_muon.cfg": AIRBENCH94_MUON,
    "airbench94_muon_fast.cfg": AIRBENCH94_MUON_FAST,
    "airbench95_muon.cfg": AIRBENCH95_MUON,
    "airbench96_muon.cfg": AIRBENCH96_MUON,
}
