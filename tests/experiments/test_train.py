"""The run loop's helpers (experiments.train): the augmentation and the Solver's arguments."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from experiments import recipes, train

SEED = recipes.VGG_SEED


def test_make_augment():
    assert train.make_augment(dataclasses.replace(SEED, augment=False, augment_pad=4)) is None
    fn = train.make_augment(dataclasses.replace(SEED, augment=True, augment_pad=2))
    X = np.arange(2 * 3 * 5 * 5, dtype=np.float32).reshape(2, 3, 5, 5)
    out = jax.jit(fn)(jax.random.key(0), X)
    assert out.shape == X.shape
    cut = train.make_augment(dataclasses.replace(SEED, augment=True, augment_pad=0, cutout=3))
    out = np.asarray(jax.jit(cut)(jax.random.key(0), X + 1.0))
    assert ((out == 0).sum(axis=(1, 2, 3)) > 0).all()  # a square of zeros in every image


def test_solver_kwargs_map_the_settings():
    cfg = dataclasses.replace(
        SEED, update_rule="adam", learning_rate=1e-3, lr_decay=0.9, batch_size=8, num_epochs=2,
        num_train_samples=100, num_val_samples=None, print_every=5, seed=3,
    )  # fmt: skip
    kw = train.solver_kwargs(cfg)
    assert kw["optim_config"] == {"learning_rate": 1e-3}
    assert kw["update_rule"] == "adam" and kw["lr_decay"] == 0.9 and kw["seed"] == 3
    assert kw["test_time_flip"] is False and kw["augment"] is None
    on = dataclasses.replace(cfg, test_time_flip=True)
    assert train.solver_kwargs(on)["test_time_flip"] is True
    assert kw["check_data"] is True  # --allow_data_change turns the data check off
    off = dataclasses.replace(cfg, allow_data_change=True)
    assert train.solver_kwargs(off)["check_data"] is False


def test_a_recipe_without_cs231n_optimiser_leaves_the_solver_its_defaults():
    kw = train.solver_kwargs(recipes.AIRBENCH94)  # its own optimiser comes from the app
    assert not {"update_rule", "optim_config", "lr_decay", "augment"} & set(kw)
    assert kw["batch_size"] == 1024 and kw["test_time_flip"] is True


def test_the_final_test_augments_only_the_images_less_sure_than_the_confidence():
    from experiments.report import accuracies_on_test
    from jcnn.models import ThreeLayerConvNet
    from jcnn.solver import Solver
    from tests.models.util import synthetic_data

    shape = (3, 8, 8)
    model = ThreeLayerConvNet(input_dim=shape, num_filters=4, filter_size=3, hidden_dim=8)
    data = synthetic_data(40, 10, shape=shape)
    data["X_test"], data["y_test"] = data["X_val"], data["y_val"]
    solver = Solver(model, data, verbose=False, test_time_flip=True, batch_size=10)
    every = accuracies_on_test(solver, data)
    assert every["test_time_augmented"] == 1.0
    assert every["test_acc"] == float(np.mean(solver.predict(data["X_test"]) == data["y_test"]))
    none = accuracies_on_test(solver, data, confidence=0.0)
    assert none["test_time_augmented"] == 0.0
    assert none["test_acc"] == none["test_acc_without_tta"] == every["test_acc_without_tta"]
    plain = Solver(model, data, verbose=False, batch_size=10)
    assert set(accuracies_on_test(plain, data)) == {"test_acc"}  # no augmentation to report
