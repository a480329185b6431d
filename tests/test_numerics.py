"""Guarded numerics: a non-finite step stops training naming its iteration, reports what it
saw, and never reaches a checkpoint; no extra host sync per step; jax_debug_nans."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jcnn.layers as L
from jcnn.checkpoint import load_checkpoint, verify_checkpoint
from jcnn.nonfinite import UPDATES_IN_FLIGHT, StepLog
from jcnn.solver import NonFiniteLossError, Solver

SHAPE = (3, 4, 4)
N, BATCH, EPOCHS, SEED = 30, 5, 3, 0  # 6 iterations per epoch, 18 in all
POISON = 1234.5  # an image whose first pixel is this poisons its minibatch


@dataclasses.dataclass(frozen=True)
class Poisonable:
    """Softmax regression on the flattened image; a minibatch holding a poisoned image gets
    a NaN loss (``mode='loss'``) or, with a finite loss, a NaN gradient (``mode='grad'``)."""

    input_dim: tuple = SHAPE
    num_classes: int = 10
    mode: str = "loss"

    def init(self, key):
        d = int(np.prod(self.input_dim))
        w = 0.01 * jax.random.normal(key, (d, self.num_classes), jnp.float32)
        return {"fc": {"w": w, "b": jnp.zeros(self.num_classes, jnp.float32)}}, {}

    def check_input(self, X, name="X"):
        if tuple(X.shape[1:]) != self.input_dim:
            raise ValueError(f"{name} has shape {X.shape}")

    def apply(self, params, state, X, *, train=False, key=None):
        return L.affine(X, params["fc"]["w"], params["fc"]["b"]), state

    def loss(self, params, state, X, y, *, key=None):
        scores, state = self.apply(params, state, X)
        loss = L.softmax_loss(scores, y)
        poisoned = jnp.any(X[:, 0, 0, 0] == POISON)
        if self.mode == "loss":
            return jnp.where(poisoned, jnp.nan, loss), state
        # sqrt at 0: value 0, gradient inf * 0 = NaN (the inner where keeps clean batches clean)
        u = jnp.where(poisoned, jnp.abs(params["fc"]["b"][0]) * 0.0, 1.0)
        return loss + jnp.where(poisoned, jnp.sqrt(u), 0.0), state


def batches(num_iterations=EPOCHS * N // BATCH):
    """The minibatches the Solver draws (no accuracy subsampling: nothing else draws)."""
    rng = np.random.default_rng(SEED)
    return [rng.choice(N, BATCH) for _ in range(num_iterations)]


def poisoned_data(first_hit_between=(7, 15)):
    """Data with one poisoned image, chosen so that it is first drawn in the given range of
    iterations (1-based); returns the data, its index and that iteration."""
    first = {}
    for t, idx in enumerate(batches(), start=1):
        for i in idx:
            first.setdefault(int(i), t)
    lo, hi = first_hit_between
    index = next(i for i, t in sorted(first.items()) if lo <= t <= hi)
    rng = np.random.default_rng(1)
    X = rng.normal(size=(N, *SHAPE)).astype(np.float32)
    X[index, 0, 0, 0] = POISON
    y = rng.integers(0, 10, N)
    data = {"X_train": X, "y_train": y, "X_val": X[:5] * 0, "y_val": y[:5]}
    return data, index, first[index]


def make(model, data, checkpoint_dir=None, **kw):
    args = dict(
        update_rule="sgd", optim_config={"learning_rate": 1e-2}, batch_size=BATCH,
        num_epochs=EPOCHS, num_train_samples=None, num_val_samples=None, print_every=1000,
        verbose=False, seed=SEED, checkpoint_dir=checkpoint_dir,
    )  # fmt: skip
    args.update(kw)
    return Solver(model, data, **args)


def test_nonfinite_loss_stops_naming_the_iteration_and_keeps_the_last_good_checkpoint(tmp_path):
    data, index, hit = poisoned_data()
    ckpt = tmp_path / "run" / "checkpoints"
    solver = make(Poisonable(mode="loss"), data, ckpt, checkpoint_every=2)
    with pytest.raises(NonFiniteLossError, match=rf"non-finite loss at iteration {hit} / 18 ") as e:
        solver.train()
    err = e.value
    assert isinstance(err, FloatingPointError)
    report = err.report
    assert report["iteration"] == hit and report["epoch"] == (hit - 1) // 6 + 1
    assert report["loss"] is None  # strict JSON: non-finite numbers are null
    assert (
        report["batch_indices"] == batches()[hit - 1].tolist() and index in report["batch_indices"]
    )
    assert report["batch_labels"] == data["y_train"][batches()[hit - 1]].tolist()
    assert report["learning_rate"] == pytest.approx(1e-2)
    assert report["detected_after_iteration"] in (hit, hit + 1)  # read back with the losses
    assert err.report_path == tmp_path / "run" / "nonfinite.json"
    assert json.loads(err.report_path.read_text()) == report
    assert str(err.report_path) in str(err)

    # The history ends at the bad step; everything before it is finite.
    assert len(solver.loss_history) == hit and np.isnan(solver.loss_history[-1])
    assert np.isfinite(solver.loss_history[:-1]).all()
    # Checkpoints: only from before the bad step, all finite; the newest is reported.
    last_good = 2 * ((hit - 1) // 2)
    iterations = sorted(verify_checkpoint(p)["iteration"] for p in ckpt.glob("*.npz"))
    assert iterations[-1] == last_good
    assert report["last_good_checkpoint"] == str(solver.last_checkpoint)
    tree, meta = load_checkpoint(solver.last_checkpoint, solver.checkpoint_tree())
    assert meta["iteration"] == last_good
    assert all(np.isfinite(x).all() for x in jax.tree_util.tree_leaves(tree["params"]))

    # Running it again resumes from that checkpoint and meets the same step.
    again = make(Poisonable(mode="loss"), data, ckpt, checkpoint_every=2)
    assert again.resumed_from["iteration"] == last_good
    with pytest.raises(NonFiniteLossError, match=rf"iteration {hit} / 18 "):
        again.train()


def test_an_update_that_poisons_the_parameters_is_named_exactly_when_verified_every_step():
    data, index, hit = poisoned_data()
    solver = make(Poisonable(mode="grad"), data, print_every=1)
    with pytest.raises(
        NonFiniteLossError, match=rf"parameters after the update.*iteration {hit} / 18 \("
    ) as e:
        solver.train()
    report = e.value.report
    assert isinstance(report["loss"], float) and np.isfinite(report["loss"])
    assert index in report["batch_indices"] and e.value.report_path is None
    assert report["params_verified_after_iteration"] == hit - 1
    assert np.isfinite(solver.loss_history).all() and len(solver.loss_history) == hit


def test_a_poisoning_update_between_verifications_is_caught_by_the_next_loss():
    # Verified only at iteration 1 and the epoch ends (6, 12): the NaN parameters after
    # the poisoned update show up as the next step's NaN loss, and the report lists the
    # minibatches since the last verification, the poisoned one among them.
    data, index, hit = poisoned_data()
    assert hit not in (1, 6, 12) and hit + 1 not in (6, 12)
    solver = make(Poisonable(mode="grad"), data)
    verified = max(v for v in (1, 6, 12) if v < hit)
    with pytest.raises(
        NonFiniteLossError,
        match=rf"non-finite loss at iteration {hit + 1} .*last verified finite after "
        rf"iteration {verified}:",
    ) as e:
        solver.train()
    report = e.value.report
    assert report["params_verified_after_iteration"] == verified
    unverified = report["unverified_batch_indices"]
    assert sorted(map(int, unverified)) == list(range(verified + 1, hit + 2))
    assert index in unverified[str(hit)]


def test_detection_reads_losses_back_only_when_it_already_did(monkeypatch):
    """No host sync per step: the finite flags are read with the losses, at the print,
    accuracy-check and checkpoint points (here: iteration 1 and the epoch ends)."""
    data, _, _ = poisoned_data()
    data["X_train"][:, 0, 0, 0] = 0.0  # clean
    reads = []
    flush = Solver._read_losses

    def counting(self):
        reads.append((self.iteration, len(self._log.pending)))
        flush(self)

    monkeypatch.setattr(Solver, "_read_losses", counting)
    make(Poisonable(mode="loss"), data, num_epochs=2).train()
    assert [r for r in reads if r[1]] == [(1, 1), (6, 5), (12, 6)]


def test_the_host_queues_at_most_two_updates_ahead_of_the_finished_ones():
    """JAX returns from a step before it runs: a loop that queued dozens of updates made a
    stop request wait for all of them (SIGTERM stopped 33 updates, 5.5 s, late). After
    queueing update t the log waits for update t - 2's loss (no read-back to the host)."""
    waited = []

    class Loss:
        def __init__(self, t):
            self.t = t

        def block_until_ready(self):
            waited.append(self.t)
            return self

    log = StepLog()
    for t in range(1, 7):
        log.add(Loss(t), True, t, np.arange(2))
    assert UPDATES_IN_FLIGHT == 2 and waited == [1, 2, 3, 4]
    assert len(log.pending) == 6  # the losses are read back later, all at once


def test_checkpoints_never_hold_nonfinite_values(tmp_path):
    data, _, _ = poisoned_data()
    solver = make(Poisonable(mode="loss"), data, tmp_path)
    solver.params = {"fc": {"w": solver.params["fc"]["w"].at[0, 0].set(jnp.inf),
                            "b": solver.params["fc"]["b"]}}  # fmt: skip
    with pytest.raises(NonFiniteLossError, match=r"refusing to checkpoint.*params/fc/w"):
        solver.save_checkpoint()
    assert not list(tmp_path.iterdir())


@pytest.fixture
def debug_nans():
    jax.clear_caches()  # a step compiled earlier in this process must not be reused
    jax.config.update("jax_debug_nans", True)
    yield
    jax.config.update("jax_debug_nans", False)


def test_jax_debug_nans_errors_are_reported_the_same_way(debug_nans, tmp_path):
    data, index, hit = poisoned_data()
    solver = make(Poisonable(mode="loss"), data, tmp_path / "ckpt")
    with pytest.raises(NonFiniteLossError, match=rf"iteration {hit} / 18") as e:
        solver.train()
    report = json.loads((tmp_path / "nonfinite.json").read_text())
    assert report["jax_debug_nans"] is True and report["iteration"] == hit
    assert index in report["batch_indices"]
    # When JAX's own check fires first (it does when this test runs alone; after other tests in
    # the same process the Solver's finite flag sometimes sees the NaN first), its
    # FloatingPointError is the cause and is named in the report.
    if e.value.__cause__ is not None:
        assert isinstance(e.value.__cause__, FloatingPointError)
        assert report["cause"].startswith("FloatingPointError")
