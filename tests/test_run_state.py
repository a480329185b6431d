"""jcnn.run_state: a run's changing state is one unit, checkpointed and restored whole, and
the Solver's cs231n attributes are views of it."""

import time

import jax
import numpy as np

from jcnn.checkpoint import load_checkpoint
from jcnn.models import VGGNet
from jcnn.run_state import RUN_FIELDS, RunState
from jcnn.solver import Solver
from tests.models.util import synthetic_data

SHAPE = (3, 8, 8)
MODEL = VGGNet(input_dim=SHAPE, num_filters=(4,), blocks=(1,), hidden_dims=(8,))


def _solver(**kw) -> Solver:
    data = synthetic_data(60, 20, shape=SHAPE)
    return Solver(MODEL, data, batch_size=20, num_epochs=2, verbose=False, **kw)


def test_the_solvers_cs231n_attributes_are_views_of_its_run_state():
    solver = _solver()
    for name in RUN_FIELDS:
        assert getattr(solver, name) is getattr(solver.run, name), name
    solver.epoch = 7
    assert solver.run.epoch == 7
    solver.loss_history.append(1.5)
    assert solver.run.loss_history == [1.5]
    assert set(RUN_FIELDS) == {
        f for f in RunState.__dataclass_fields__ if f != "host_rng" and not f.startswith("_")
    }


def test_a_checkpoint_restores_the_whole_run_state(tmp_path):
    solver = _solver()
    solver.train()
    path = solver.save_checkpoint(tmp_path / "run.npz")
    tree, meta = load_checkpoint(path, solver.checkpoint_tree())
    again = _solver().run.restored(tree, meta)
    assert again.progress() == solver.run.progress()
    assert again.host_rng.random() == solver.run.host_rng.random()  # the same draws follow
    for a, b in zip(
        jax.tree_util.tree_leaves(jax.device_get(again.checkpoint_tree())),
        jax.tree_util.tree_leaves(jax.device_get(solver.run.checkpoint_tree())),
        strict=True,
    ):
        assert np.array_equal(a, b)


def test_the_runs_clock_runs_in_train_only_and_counts_checks_outside_the_updates():
    solver = _solver(on_epoch_end=lambda solver, epoch: time.sleep(0.1))  # 3 checks
    solver.train()
    run = solver.run
    assert 0.3 <= run.outside_s < run.elapsed_s
    assert run.training_s() == run.elapsed_s - run.outside_s
    elapsed = run.elapsed_s
    time.sleep(0.05)
    assert run.tick() == elapsed  # stopped when train returned
    assert [r["seconds"] for r in solver.eval_history] == sorted(
        r["seconds"] for r in solver.eval_history
    )


def test_a_checkpoint_without_the_outside_time_restores_it_as_zero(tmp_path):
    solver = _solver()
    solver.train()
    path = solver.save_checkpoint(tmp_path / "run.npz")
    tree, meta = load_checkpoint(path, solver.checkpoint_tree())
    assert meta["outside_s"] == solver.run.outside_s > 0
    older = {k: v for k, v in meta.items() if k != "outside_s"}
    again = _solver().run.restored(tree, older)
    assert again.outside_s == 0.0 and again.elapsed_s == solver.run.elapsed_s
