"""Solver options for recipes like airbench's: a given optax optimiser, epoch sampling,
no validation split (the final weights are the result), lookahead resumed bit for bit,
test-time augmentation with and without."""

import contextlib
import functools
import io

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jcnn.augment import alternating_flip_crop
from jcnn.models import VGGNet
from jcnn.sampling import Minibatches
from jcnn.solver import Solver
from jcnn.train import Lookahead
from tests.models.util import synthetic_data

SHAPE = (3, 8, 8)
MODEL = VGGNet(input_dim=SHAPE, num_filters=(4,), blocks=(1,), hidden_dims=(8,), reg=1e-3)
N, BATCH, EPOCHS = 50, 16, 3  # 3 updates per epoch, 2 images left out of each


def _solver(tmp=None, **kw):
    data = synthetic_data(N, 1, shape=SHAPE)
    data["X_val"], data["y_val"] = data["X_val"][:0], data["y_val"][:0]  # no validation split
    per_epoch = N // BATCH
    args = dict(
        optimizer=optax.sgd(0.05, momentum=0.9, nesterov=True),
        schedule=lambda t: 0.05,
        sampling="epoch",
        select_best=False,
        lookahead=Lookahead(2, per_epoch * EPOCHS),
        augment=functools.partial(alternating_flip_crop, steps_per_epoch=per_epoch, pad=1),
        test_time_flip=True,
        test_time_translate=1,
        batch_size=BATCH,
        num_epochs=EPOCHS,
        num_train_samples=20,
        print_every=100,
        checkpoint_dir=tmp,
        verbose=False,
    )
    args.update(kw)
    return Solver(MODEL, data, **args), data


def test_epoch_sampling_visits_each_image_at_most_once_per_epoch():
    solver, _ = _solver(lookahead=None)
    batches = solver._batches  # the run's sampler (jcnn.sampling.Minibatches)
    assert (batches.sampling, batches.per_epoch) == ("epoch", N // BATCH)
    seen = [batches.rows(t, solver.run.host_rng) for t in range(2 * batches.per_epoch)]
    for epoch in range(2):
        rows = np.concatenate(seen[3 * epoch : 3 * epoch + 3])
        assert len(rows) == 48 and len(set(rows.tolist())) == 48
    assert not np.array_equal(seen[0], seen[3])  # a new permutation each epoch
    # in the middle of an epoch, a new sampler (a resumed run) continues it exactly
    fresh = Minibatches(N, BATCH, "epoch", seed=solver.seed)
    np.testing.assert_array_equal(fresh.rows(4, np.random.default_rng(9)), seen[4])


def test_without_a_validation_split_the_final_weights_are_the_result():
    solver, data = _solver()
    solver.train()
    assert np.isnan(solver.best_val_acc) and solver.best_params is None
    assert all(np.isnan(v) for v in solver.val_acc_history)
    assert solver.lr_history[-1] == 0.05
    # the trained weights are the lookahead's slow copy after the last update
    same = jax.tree_util.tree_map(
        lambda a, b: bool(jnp.all(a == b)), solver.params, solver.train_state.slow["params"]
    )
    assert all(jax.tree_util.tree_leaves(same))
    plain = solver.check_accuracy(data["X_train"], data["y_train"], augment=False)
    tta = solver.check_accuracy(data["X_train"], data["y_train"])
    assert 0.0 <= plain <= 1.0 and 0.0 <= tta <= 1.0


def test_an_empty_validation_split_needs_select_best_off():
    with pytest.raises(ValueError, match="X_val is empty"):
        _solver(select_best=True)


def test_bad_recipe_options_raise_naming_them():
    with pytest.raises(ValueError, match="sampling"):
        _solver(sampling="shuffle")
    with pytest.raises(ValueError, match="optimizer"):
        _solver(optimizer="nesterov")
    with pytest.raises(ValueError, match="select_best"):
        _solver(select_best="no")


def test_a_run_with_lookahead_resumes_bit_for_bit_from_the_middle_of_an_epoch(tmp_path):
    whole, _ = _solver(tmp_path / "a")
    whole.train()
    first, _ = _solver(tmp_path / "b", checkpoint_every=2)
    # stop after update 4 (its checkpoint; epoch 2 is one update in), as a crash would
    first.num_iterations = 4
    with contextlib.redirect_stdout(io.StringIO()):
        first.train()
    resumed, _ = _solver(tmp_path / "b", checkpoint_every=2)
    assert resumed.iteration == 4
    resumed.train()
    assert resumed.loss_history == whole.loss_history
    same = jax.tree_util.tree_map(lambda a, b: bool(jnp.all(a == b)), resumed.params, whole.params)
    assert all(jax.tree_util.tree_leaves(same))
