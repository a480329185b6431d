"""Recipes as typed configs (experiments.config, experiments.recipes): each setting declared
once with its checks and resume rule, the apps' flags derived from them, the flagfiles equal
to the named recipes."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
from absl import flags

from experiments import (
    airbench_cifar,
    config,
    recipes,
    settings,
    three_layer_cifar,
    train_flags,
    vgg_cifar,
)

CONFIGS = Path(__file__).resolve().parents[2] / "experiments" / "configs"
APP_OF = {recipes.VGGRecipe: vgg_cifar, recipes.ThreeLayerRecipe: three_layer_cifar,
          recipes.AirbenchRecipe: airbench_cifar}  # fmt: skip


def parsed(app, *args: str) -> flags.FlagValues:
    fv = flags.FlagValues()
    app.define_flags(fv)
    fv(["prog", *args])
    return fv


@pytest.mark.parametrize("name", sorted(recipes.FLAGFILES))
def test_each_flagfile_is_its_named_recipe(name):
    recipe = recipes.FLAGFILES[name]
    app = APP_OF[type(recipe)]
    from_file = train_flags.recipe_from_flags(
        parsed(app, f"--flagfile={CONFIGS / name}"), type(recipe)
    )
    assert from_file == recipe


@pytest.mark.parametrize("app", [vgg_cifar, three_layer_cifar, airbench_cifar])
def test_an_apps_flags_are_its_recipes_settings_defaulting_to_its_recipe(app):
    fv = parsed(app)
    assert {name for name in fv if name in settings.names(app.RECIPE_CLASS)} == set(app.NAMES)
    assert train_flags.recipe_from_flags(fv, app.RECIPE_CLASS) == app.RECIPE


def test_the_airbench_app_has_no_flag_that_does_not_apply_to_it():
    fv = flags.FlagValues()
    airbench_cifar.define_flags(fv)
    for name in ("update_rule", "lr_decay", "lr_schedule", "warmup_epochs", "weight_scale",
                 "reg", "conv_impl", "pool_impl", "augment"):  # fmt: skip
        assert name not in fv, name
    assert {"momentum", "optimizer", "cutout", "augment_pad"} <= set(fv)


def test_the_choices_are_the_librarys():
    from jcnn.layers.conv import IMPLS
    from jcnn.optim import LR_SCHEDULES, UPDATE_RULES
    from jcnn.parallel import COMPUTE_DTYPES

    assert config.CONV_IMPLS == tuple(IMPLS)
    assert config.UPDATE_RULES == tuple(UPDATE_RULES)
    assert config.LR_SCHEDULES == tuple(LR_SCHEDULES)
    assert config.COMPUTE_DTYPES == tuple(COMPUTE_DTYPES)


BAD = [
    ("learning_rate", -1.0, "learning_rate: must be a float > 0"),
    ("batch_size", 0, "batch_size: must be >= 1"),
    ("num_filters", (64, 0), "num_filters: must be a list of positive integers"),
    ("hidden_dims", (), None),  # may be empty
    ("update_rule", "adamw", "update_rule: must be one of sgd, sgd_momentum, rmsprop, adam"),
    ("dropout", 1.0, "dropout: must be in [0, 1)"),
    ("weight_scale", "xavier", "weight_scale: must be a positive float or 'he'"),
    ("cutout", 8, "cutout=8 is part of the augmentation: add --augment"),  # a group's check
    ("num_train", 49_500, "num_train + num_val must be <= 50000"),
    ("micro_batches", 3, "micro_batches=3 must divide batch_size=50"),
]


@pytest.mark.parametrize("name, value, message", BAD, ids=[b[0] for b in BAD])
def test_a_recipe_checks_itself_when_built_naming_the_setting(name, value, message):
    if message is None:
        assert getattr(dataclasses.replace(recipes.VGG_SEED, **{name: value}), name) == value
        return
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        dataclasses.replace(recipes.VGG_SEED, **{name: value})


def test_a_recipe_is_frozen_and_its_lists_are_tuples():
    recipe = recipes.VGGRecipe(num_filters=[8, 16], blocks=[1, 1])
    assert recipe.num_filters == (8, 16) and hash(recipe)
    with pytest.raises(dataclasses.FrozenInstanceError):
        recipe.num_epochs = 3  # type: ignore[misc]
    assert settings.flag_values(recipe)["num_filters"] == [8, 16]


def test_the_model_settings_are_checked_by_the_model_while_flags_are_parsed():
    with pytest.raises(flags.IllegalFlagValueError, match="too small for 6 stages"):
        parsed(vgg_cifar, "--num_filters=8,8,8,8,8,8", "--blocks=1,1,1,1,1,1")
    with pytest.raises(ValueError, match="too small for 6 stages"):
        recipes.VGGRecipe(num_filters=(8,) * 6, blocks=(1,) * 6).build_model()


def test_the_resume_rules_are_declared_beside_the_settings():
    may = set(settings.may_change_on_resume(recipes.VGGRecipe))
    assert {"workdir", "data_dir", "num_epochs", "print_every", "conv_impl", "layers"} <= may
    assert "micro_batches" in may  # memory, not the recipe
    assert not {"learning_rate", "batch_size", "seed", "num_filters", "augment"} & may
    assert settings.before_added(recipes.AirbenchRecipe)["flips"] == "alternating"


def test_a_record_from_an_older_run_gives_its_recipe():
    record = settings.flag_values(recipes.AIRBENCH94)
    del record["cutout"]  # recorded before the setting existed: no cutout then
    record["update_rule"] = "sgd_momentum"  # a flag the app had then and does not now
    assert settings.from_record(recipes.AirbenchRecipe, record) == recipes.AIRBENCH94


def test_importing_the_recipes_imports_no_jax():
    import subprocess
    import sys

    code = "import sys, experiments.recipes; print('jax' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_library_message_names_the_recipe_s_settings_as_flags():
    """The airbench app said "invalid training flags: batch_size=1000000 ..." (the library's
    argument name) where the user typed --batch_size; names that are no setting stay."""
    from experiments import recipes, settings

    said = "batch_size=8 and pad=1 and --seed=3 and augment_pad=4 and test_time_translate=40"
    assert settings.as_flags(said, recipes.AirbenchRecipe) == (
        "--batch_size=8 and pad=1 and --seed=3 and --augment_pad=4 and --test_time_translate=40"
    )
