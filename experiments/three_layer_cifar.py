"""Train the cs231n three-layer ConvNet on CIFAR-10 (the assignment's full-training cell).

    python -m experiments.three_layer_cifar --flagfile=experiments/configs/three_layer_seed.cfg

conv (``num_filters`` of ``filter_size``, 'same' padding) - relu - 2×2 max pool - affine
(``hidden_dim``) - relu - affine - softmax. Every hyper-parameter is a flag (``--help``
lists them; the defaults are :data:`experiments.recipes.THREE_LAYER_SEED`); the run's files
go to ``--workdir`` (see :mod:`experiments.rundir`).
"""

from __future__ import annotations

from collections.abc import Sequence

from absl import flags

from experiments import errors, recipes, train, train_flags
from experiments.settings import names

RECIPE = recipes.THREE_LAYER_SEED  # the flags' defaults
RECIPE_CLASS = recipes.ThreeLayerRecipe
NAMES = names(RECIPE_CLASS)


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
    """The app's flags on ``fv`` (:class:`experiments.recipes.ThreeLayerRecipe`'s
    settings); the defaults are the assignment's run (``three_layer_seed.cfg``)."""
    train_flags.define_recipe_flags(fv, RECIPE)


def main(argv: Sequence[str]) -> None:
    train.main(argv, recipe_class=RECIPE_CLASS)


if __name__ == "__main__":
    define_flags()
    flags.adopt_module_key_flags(train_flags)
    errors.run_app(main, lambda: train_flags.recipe_help(flags.FLAGS, RECIPE_CLASS), resumes=True)
