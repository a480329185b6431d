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

from collections.abc import Sequence

from absl import flags

from experiments import errors, recipes, train, train_flags
from experiments.settings import names

RECIPE = recipes.AIRBENCH94  # the flags' defaults
RECIPE_CLASS = recipes.AirbenchRecipe
NAMES = names(RECIPE_CLASS)


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
    """The app's flags on ``fv`` (:class:`experiments.recipes.AirbenchRecipe`'s settings);
    the defaults are airbench94's (``airbench94.cfg``)."""
    train_flags.define_recipe_flags(fv, RECIPE)


def main(argv: Sequence[str]) -> None:
    train.main(argv, recipe_class=RECIPE_CLASS)


if __name__ == "__main__":
    define_flags()
    flags.adopt_module_key_flags(train_flags)
    errors.run_app(main, lambda: train_flags.recipe_help(flags.FLAGS, RECIPE_CLASS), resumes=True)
