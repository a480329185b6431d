"""Train the VGG-like ConvNet on CIFAR-10: the seed's run and its variations.

    python -m experiments.vgg_cifar --flagfile=experiments/configs/vgg_seed.cfg
    python -m experiments.vgg_cifar --flagfile=experiments/configs/overfit_small.cfg
    python -m experiments.vgg_cifar --flagfile=experiments/configs/vgg_best.cfg --data_dir=...

The network is ``[(conv - spatial batchnorm - relu) × blocks[s] - 2×2 max pool]`` for each
stage ``s`` (``num_filters[s]`` filters of ``filter_size``, 'same' padding), then ``(affine
- batchnorm - relu - dropout)`` per entry of ``hidden_dims``, then affine - softmax. Every
hyper-parameter is a flag (``--help`` lists them by group); flags given later override
earlier ones, flagfiles included; the defaults are the seed's run
(:data:`experiments.recipes.VGG_SEED`). The run's files go to ``--workdir`` (see
:mod:`experiments.rundir`).
"""

from __future__ import annotations

from collections.abc import Sequence

from absl import flags

from experiments import errors, recipes, train, train_flags
from experiments.settings import names

RECIPE = recipes.VGG_SEED  # the flags' defaults
RECIPE_CLASS = recipes.VGGRecipe
NAMES = names(RECIPE_CLASS)


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
    """The app's flags on ``fv`` (:class:`experiments.recipes.VGGRecipe`'s settings); the
    defaults are the seed's run (``vgg_seed.cfg``)."""
    train_flags.define_recipe_flags(fv, RECIPE)


def main(argv: Sequence[str]) -> None:
    train.main(argv, recipe_class=RECIPE_CLASS)


if __name__ == "__main__":
    define_flags()
    flags.adopt_module_key_flags(train_flags)
    errors.run_app(main, lambda: train_flags.recipe_help(flags.FLAGS, RECIPE_CLASS), resumes=True)
