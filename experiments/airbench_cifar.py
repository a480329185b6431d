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
``--test_time_translate``-pixel shifts (and ``--cutout``, off in airbench94). Its flags are
the settings of :class:`experiments.recipes.AirbenchRecipe`, their defaults airbench94's
(:data:`experiments.recipes.AIRBENCH94`, ``airbench94.cfg``). The run's files go to
``--workdir`` (:mod:`experiments.rundir`); rerunning the same command resumes it.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

from absl import flags

from experiments import errors, recipes, train, train_flags
from experiments.config import names

APP_NAME = "airbench_cifar"
RECIPE = recipes.AIRBENCH94  # the flags' defaults
RECIPE_CLASS = recipes.AirbenchRecipe
NAMES = names(RECIPE_CLASS)


def solver_options(
    recipe: recipes.AirbenchRecipe, model: Any, data: Mapping[str, Any]
) -> dict[str, Any]:
    """The recipe's Solver arguments: its optimiser, sampler, augmentation, lookahead,
    test-time augmentation and the data-dependent initialisation."""
    import jax

    from jcnn.augment import alternating_flip_crop, random_crop_flip
    from jcnn.optim import airbench_muon, airbench_sgd
    from jcnn.solver import check_epoch_batches
    from jcnn.train import Lookahead

    batch = recipe.batch_size
    check_epoch_batches(len(data["y_train"]), batch)  # before the whitening's work
    per_epoch = max(len(data["y_train"]) // batch, 1)
    total = per_epoch * recipe.num_epochs
    init_key = jax.random.split(jax.random.key(recipe.seed))[0]
    params, state = model.init_with_data(init_key, data["X_train"][: recipe.whiten_images])
    common = dict(
        num_iterations=total, iterations_per_epoch=per_epoch, batch_size=batch,
        learning_rate=recipe.learning_rate, momentum=recipe.momentum,
        weight_decay=recipe.weight_decay, bias_scaler=recipe.bias_scaler,
        whiten_bias_epochs=recipe.whiten_bias_epochs,
    )  # fmt: skip
    if recipe.optimizer == "muon":
        optimizer, schedule = airbench_muon(
            params, muon_learning_rate=recipe.muon_learning_rate,
            muon_momentum=recipe.muon_momentum, **common,
        )  # fmt: skip
    else:
        optimizer, schedule = airbench_sgd(params, **common)
    every = recipe.lookahead_every
    crops = {"pad": recipe.augment_pad, **({"cutout": recipe.cutout} if recipe.cutout else {})}
    if recipe.flips == "alternating":
        augment = functools.partial(alternating_flip_crop, steps_per_epoch=per_epoch, **crops)
    else:
        augment = functools.partial(random_crop_flip, padding="reflect", **crops)
    return {
        "params": params,
        "state": state,
        "optimizer": optimizer,
        "schedule": schedule,
        "sampling": "epoch",
        "select_best": False,
        "lookahead": Lookahead(every, total) if every else None,
        "augment": augment,
        "test_time_translate": recipe.test_time_translate,
    }


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
    """The app's flags on ``fv`` (:class:`experiments.recipes.AirbenchRecipe`'s settings);
    the defaults are airbench94's (``airbench94.cfg``)."""
    train_flags.define_recipe_flags(fv, RECIPE)


def main(argv: Sequence[str]) -> None:
    train.main(
        argv, app_name=APP_NAME, recipe_class=RECIPE_CLASS,
        solver_options=solver_options,
    )  # fmt: skip


if __name__ == "__main__":
    define_flags()
    flags.adopt_module_key_flags(train_flags)
    errors.run_app(main)
