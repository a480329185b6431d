"""jcnn.run_state: a run's changing state is one unit, checkpointed and restored whole, and
the Solver's cs231n attributes are views of it."""

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
    assert set(RUN_FIELDS) == {f for f in RunState.__dataclass_fields__ if f != "host_rng"}


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
