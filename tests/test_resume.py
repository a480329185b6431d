"""Resumable training: a run stopped at any moment and started again ends bit for bit where
an uninterrupted run ends; what a checkpoint holds; corrupt and mismatched checkpoints."""

from __future__ import annotations

import json
import random
import re
import shutil
import subprocess
import time
import warnings
from pathlib import Path

import jax
import numpy as np
import optax
import pytest

from jcnn.checkpoint import (
    CorruptCheckpointWarning,
    load_checkpoint,
    prune_run_checkpoints,
    verify_checkpoint,
)
from jcnn.models import VGGNet
from jcnn.solver import CheckpointMismatchError, Solver, TrainingStopped
from tests.experiments.util import PYTHON, ROOT, subprocess_env
from tests.models.util import synthetic_data

SHAPE = (3, 8, 8)
N_TRAIN, N_VAL, BATCH = 40, 15, 10  # 4 iterations per epoch
EPOCHS = 3  # 12 iterations
MODEL = VGGNet(
    input_dim=SHAPE, num_filters=(4,), blocks=(1,), hidden_dims=(8,), dropout=0.3, reg=1e-3
)
DATA = synthetic_data(N_TRAIN, N_VAL, shape=SHAPE)


class Crash(Exception):
    """Stands for the process dying: whatever is on disk is all that survives."""


def make(checkpoint_dir=None, *, model=MODEL, data=DATA, crash_at=None, **overrides):
    def hook(solver, iteration, loss):
        if iteration == crash_at:
            raise Crash(iteration)

    kw = dict(
        update_rule="adam", optim_config={"learning_rate": 1e-2}, lr_decay=0.9,
        batch_size=BATCH, num_epochs=EPOCHS, num_train_samples=20, num_val_samples=10,
        print_every=100, verbose=False, seed=5, checkpoint_dir=checkpoint_dir,
        checkpoint_every=3, on_iteration=hook,
    )  # fmt: skip
    kw.update(overrides)
    return Solver(model, data, **kw)


def leaves(tree):
    return jax.tree_util.tree_leaves(jax.device_get(tree))


def assert_same_run(a: Solver, b: Solver) -> None:
    """Bit for bit: every array, counter, history and the host generator's state."""
    ta, tb = a.checkpoint_tree(), b.checkpoint_tree()
    assert jax.tree_util.tree_structure(ta) == jax.tree_util.tree_structure(tb)
    for x, y in zip(leaves(ta), leaves(tb), strict=True):
        assert x.dtype == y.dtype and np.array_equal(x, y)
    for x, y in zip(leaves((a.params, a.state)), leaves((b.params, b.state)), strict=True):
        assert np.array_equal(x, y)
    assert (a.iteration, a.epoch) == (b.iteration, b.epoch)
    assert a.loss_history == b.loss_history
    assert a.train_acc_history == b.train_acc_history
    assert a.val_acc_history == b.val_acc_history
    assert a.lr_history == b.lr_history
    no_time = [[{k: v for k, v in r.items() if k != "seconds"} for r in s.eval_history]
               for s in (a, b)]  # fmt: skip
    assert no_time[0] == no_time[1]
    assert (a.best_val_acc, a.best_epoch) == (b.best_val_acc, b.best_epoch)
    assert a.run.host_rng.bit_generator.state == b.run.host_rng.bit_generator.state


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run, checkpointing as the others do."""
    ckpt = tmp_path_factory.mktemp("reference")
    solver = make(ckpt)
    solver.train()
    return solver, ckpt


@pytest.fixture(scope="module")
def crashed(tmp_path_factory):
    """A run that died just after iteration 10 (its last checkpoint: iteration 9)."""
    ckpt = tmp_path_factory.mktemp("crashed")
    with pytest.raises(Crash):
        make(ckpt, crash_at=10).train()
    return ckpt


def test_checkpoints_kept_and_pruned(reference, crashed):
    # Every 3 iterations and every epoch end (4): steps 3, 6, 9 and epochs 1, 2, 3. Epoch
    # checkpoints are all kept (keep_checkpoints=0); a step one only while among the newest 2.
    assert names(crashed) == [
        "epoch_001.json", "epoch_001.npz", "epoch_002.json", "epoch_002.npz",
        "step_00000009.json", "step_00000009.npz",
    ]  # fmt: skip
    _, ckpt = reference
    assert [p for p in names(ckpt) if p.endswith(".npz")] == [
        "epoch_001.npz",
        "epoch_002.npz",
        "epoch_003.npz",
    ]
    assert not list(ckpt.glob(".*tmp"))


@pytest.mark.parametrize(
    "keep, files, kept",
    [
        (0, ["epoch_001", "epoch_002", "step_00000009", "step_00000010"],
         ["epoch_001", "epoch_002", "step_00000010"]),
        (1, ["epoch_001", "epoch_002", "step_00000009", "step_00000010"],
         ["epoch_002", "step_00000010"]),
        (1, ["epoch_001", "epoch_002"], ["epoch_001", "epoch_002"]),  # the previous one stays
        (2, ["epoch_001", "epoch_002", "epoch_003", "step_00000013"],
         ["epoch_002", "epoch_003", "step_00000013"]),
        (1, ["epoch_002", "step_00000005", "step_00000009"], ["epoch_002", "step_00000009"]),
    ],
)  # fmt: skip
def test_keep_checkpoints_keeps_the_last_epochs_and_always_the_newest_two(
    tmp_path, keep, files, kept
):
    ipe = make(None).iterations_per_epoch  # 4 iterations per epoch
    for name in files:
        (tmp_path / f"{name}.npz").write_bytes(b"")
        (tmp_path / f"{name}.json").write_text("{}")
    # No sidecar and newer than every complete one: incomplete, not counted, left alone
    # (older ones are orphans and deleted: tests/test_checkpoint.py).
    (tmp_path / "step_00000099.npz").write_bytes(b"")
    prune_run_checkpoints(tmp_path, iterations_per_epoch=ipe, keep_epochs=keep)
    assert names(tmp_path) == sorted(
        [f"{n}.{e}" for n in kept for e in ("json", "npz")] + ["step_00000099.npz"]
    )


def test_a_checkpoint_holds_everything_to_continue(crashed):
    path = crashed / "step_00000009.npz"
    meta = verify_checkpoint(path)
    assert meta["format"] == 2 and meta["iteration"] == 9 and meta["epoch"] == 2
    assert len(meta["loss_history"]) == 9 and len(meta["eval_history"]) == 3
    assert meta["host_rng"]["bit_generator"] == "PCG64"
    assert isinstance(meta["host_rng"]["state"]["state"], int)
    assert len(meta["npz_sha256"]) == 64 and meta["has_best"] is True
    assert meta["model"]["num_filters"] == [4] and meta["solver"]["seed"] == 5
    fingerprint = make(None).data_fingerprint
    assert meta["data"] == {"num_train": 40, "num_val": 15, "image_shape": [3, 8, 8],
                            "dtype": "float32", "fingerprint": fingerprint}  # fmt: skip
    assert meta["data"]["fingerprint"].startswith("sha256:")
    like = make(None).checkpoint_tree()
    tree, _ = load_checkpoint(path, like)
    assert set(tree) == {"params", "state", "opt_state", "best_params", "best_state", "rng"}
    key = jax.random.key_data(jax.random.split(jax.random.key(5))[1])
    np.testing.assert_array_equal(tree["rng"]["dropout_key"], key)


def test_killed_run_resumes_bit_for_bit(reference, crashed, tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(crashed, ckpt)
    solver = make(ckpt)  # the same arguments again
    assert solver.resumed_from["iteration"] == 9 and solver.iteration == 9
    assert solver.resumed_from["path"].endswith("step_00000009.npz")
    assert len(solver.loss_history) == 9
    solver.train()
    assert_same_run(solver, reference[0])
    assert names(ckpt) == names(reference[1])  # the same files in the end, too
    assert solver.eval_history[-1]["seconds"] >= solver.resumed_from["elapsed_s"]


def test_resume_prints_where_it_continues(crashed, tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(crashed, ckpt)
    make(ckpt, verbose=True)
    assert f"(Resuming from {ckpt / 'step_00000009.npz'}: iteration 9 / 12, epoch 2 / 3)" in (
        capsys.readouterr().out
    )


def test_a_corrupt_checkpoint_is_set_aside_and_the_previous_one_used(reference, crashed, tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(crashed, ckpt)
    newest = ckpt / "step_00000009.npz"
    newest.write_bytes(newest.read_bytes()[:-100])  # truncated
    (ckpt / ".step_00000012.npz.abc123.tmp").write_bytes(b"half a write")  # a killed writer
    with pytest.warns(CorruptCheckpointWarning, match="step_00000009.npz fails its checksum"):
        solver = make(ckpt)
    assert solver.resumed_from["iteration"] == 8  # epoch_002
    assert (ckpt / "step_00000009.npz.corrupt").is_file()
    assert not (ckpt / "step_00000009.json").exists()
    assert not list(ckpt.glob(".*.tmp"))
    solver.train()
    assert_same_run(solver, reference[0])


def test_a_corrupt_sidecar_is_detected_too(crashed, tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(crashed, ckpt)
    side = ckpt / "step_00000009.json"
    meta = json.loads(side.read_text())
    meta["iteration"] = 10  # valid JSON, wrong content
    side.write_text(json.dumps(meta))
    with pytest.warns(CorruptCheckpointWarning, match="fails its checksum"):
        solver = make(ckpt)
    assert solver.resumed_from["iteration"] == 8


def _unsigned(meta: dict) -> dict:
    """A sidecar without its checksums: the path kept for checkpoints written before them."""
    return {k: v for k, v in meta.items() if k not in ("sidecar_sha256", "npz_sha256")}


def _tamper(meta: dict, how: str) -> None:
    """One value changed to another a run writes, so that it disagrees with the rest."""
    if how == "@3":  # one accuracy in the history but not in its check (a 0.9 kept)
        meta["val_acc_history"][1] = 0.9 if meta["val_acc_history"][1] != 0.9 else 0.8
    elif how == "@drop":  # the last check dropped from every history
        for name in ("eval_history", "val_acc_history", "train_acc_history", "lr_history"):
            meta[name].pop()
        meta["best_epoch"] = meta["eval_history"][-1]["epoch"]
        meta["best_val_acc"] = meta["eval_history"][-1]["val_acc"]
    elif how == "@uint32":  # NumPy accepts 5 and then draws other numbers
        meta["host_rng"]["has_uint32"] = 5
    elif how == "@loss":
        meta["eval_history"][-1]["loss"] = 9.0
    elif how == "@outside":  # the time outside the updates is a part of the run's time
        meta["outside_s"] = meta["elapsed_s"] + 1.0
    elif how == "@noloss":  # a check without its update's loss
        del meta["eval_history"][1]["loss"]
    elif how == "@valnull":  # no validation accuracy, in a run with a validation split
        meta["eval_history"][1]["val_acc"] = meta["val_acc_history"][1] = None
    elif how == "@inc":  # PCG64's increment is odd; NumPy takes an even one, and draws otherwise
        meta["host_rng"]["state"]["inc"] += 1
    elif how == "@inc_true":  # NumPy takes True for 1 (and json.loads reads true as True)
        meta["host_rng"]["state"]["inc"] = True
    elif how == "@uint32_true":
        meta["host_rng"]["has_uint32"] = True


@pytest.mark.parametrize(
    "field, value, why",
    [
        ("best_val_acc", "Infinity", "unreadable: the non-finite number Infinity"),
        ("iteration", '"10; rm -rf"', "has iteration='10; rm -rf'"),
        ("host_rng", '"PCG64"', "host_rng='PCG64'"),
        ("host_rng", "@uint32", "host_rng={'bit_generator': 'PCG64'"),
        ("lr_history", "[0.1, -0.5, 0.1]", "lr_history=[0.1, -0.5, 0.1]"),
        ("best_val_acc", "1.5", "best_val_acc=1.5"),
        ("loss_history", "[1, null]", "loss_history=[1, None]"),
        ("epoch", "7", "claims epoch 7 and 9 losses after 9 iterations of 4 per epoch"),
        ("outside_s", "-1", "outside_s=-1"),
        ("elapsed_s", "1e300", "elapsed_s=1e+300 in its sidecar, which must be seconds in [0,"),
        ("outside_s", "@outside", "more than the run's elapsed_s="),
        ("eval_history", "@noloss", "has eval_history=[{"),
        ("eval_history", "@valnull", "an accuracy check with train_acc="),
        ("host_rng", "@inc", "has host_rng={"),
        ("host_rng", "@inc_true", "has host_rng={"),
        ("host_rng", "@uint32_true", "has host_rng={"),
        ("eval_history", "[]", "histories of [3] entries for 0 accuracy checks"),
        ("eval_history", '[{"x": 1}]', "eval_history=[{'x': 1}]"),
        ("lr_history", "[0.1]", "histories of [1, 3] entries for 3 accuracy checks"),
        ("best_epoch", "9", "best_epoch=9 with best_val_acc="),
        ("best_epoch", "null", "best_epoch=None after 3 accuracy checks"),
        ("best_val_acc", "0.999", "best_val_acc=0.999, where its checks make epoch"),
        ("has_best", "false", "has_best=False after 3 accuracy checks with select_best=True"),
        ("val_acc_history", "@3", "a val_acc_history that differs from its accuracy checks'"),
        ("best_epoch", "0", "best_epoch=0 with best_val_acc="),
        ("eval_history", "@drop", "accuracy checks at iterations [1, 4], where a run at"),
        ("eval_history", "@loss", "an accuracy check's loss 9.0 that is not iteration 8's"),
    ],
)
def test_a_crafted_unsigned_sidecar_is_set_aside_and_the_previous_one_used(
    crashed, tmp_path, field, value, why
):
    """Checksums absent used to turn every check off: Infinity became the best accuracy (so
    no later epoch was ever taken as best), bad types gave tracebacks, and has_best=false
    dropped the best parameters (the next check became best, however poor). Every sidecar
    now meets the run's schema, signed or not, and its best check agrees with its history."""
    ckpt = tmp_path / "ckpt"
    shutil.copytree(crashed, ckpt)
    side = ckpt / "step_00000009.json"
    meta = _unsigned(json.loads(side.read_text()))
    if value.startswith("@"):  # values a run could write, inconsistent with the rest
        _tamper(meta, value)
        side.write_text(json.dumps(meta))
    else:
        side.write_text(json.dumps({**meta, field: "@"}).replace('"@"', value))
    with pytest.warns(CorruptCheckpointWarning, match=re.escape(why)):
        solver = make(ckpt)
    assert solver.resumed_from["iteration"] == 8  # epoch_002
    assert (ckpt / "step_00000009.npz.corrupt").is_file()


@pytest.mark.parametrize("newest", [True, False], ids=["the newest", "an older one"])
@pytest.mark.parametrize("text", ['{"a": "x"}', "{}", '{"format": "2", "iteration": 9}'])
def test_a_sidecar_without_a_format_is_set_aside_not_skipped_and_overwritten(
    reference, crashed, tmp_path, newest, text
):
    """A sidecar naming no checkpoint format was passed over in silence (ordered by the
    number in its file name) and its checkpoint overwritten when the run got there again;
    now it is moved aside like any corrupt one, and the run ends as the uninterrupted one."""
    ckpt = tmp_path / "ckpt"
    shutil.copytree(crashed, ckpt)
    name = "step_00000009" if newest else "epoch_002"
    (ckpt / f"{name}.json").write_text(text)
    with pytest.warns(CorruptCheckpointWarning, match="has no checkpoint format"):
        solver = make(ckpt)
    assert solver.resumed_from["iteration"] == (8 if newest else 9)
    assert (ckpt / f"{name}.npz.corrupt").is_file()
    solver.train()
    assert_same_run(solver, reference[0])
    assert (ckpt / f"{name}.npz.corrupt").is_file()  # kept, not overwritten


@pytest.mark.parametrize(
    "damage",
    ["a wrong shape", "a missing array", "an extra array", "a NaN weight", "an inf in Adam's mu",
     "a negative variance", "a negative second moment", "a count beyond the iteration"],
)  # fmt: skip
def test_damaged_arrays_of_an_unsigned_checkpoint_are_set_aside_not_blamed_on_the_settings(
    reference, crashed, tmp_path, damage
):
    """A checkpoint without checksums whose arrays do not fit the run its sidecar names, or
    hold values no run writes (NaN parameters or optimiser moments resumed and were then
    called the last good checkpoint; a negative running variance gave val_acc 0.0), is
    damaged, not made by other settings: moved aside, the one before it used."""
    ckpt = tmp_path / "ckpt"
    shutil.copytree(crashed, ckpt)
    side, npz = ckpt / "step_00000009.json", ckpt / "step_00000009.npz"
    side.write_text(json.dumps(_unsigned(json.loads(side.read_text()))))
    with np.load(npz) as f:
        arrays = {k: f[k] for k in f.files}
    first = sorted(arrays)[0]
    if damage == "a wrong shape":
        arrays[first] = arrays[first].reshape(-1)[:-1]
    elif damage == "a missing array":
        del arrays[first]
    elif damage == "an extra array":
        arrays["surprise"] = np.zeros(3)
    elif damage == "a count beyond the iteration":  # Adam's bias correction at 2**31 - 1
        key = next(k for k in sorted(arrays) if re.search(r"^opt_state/.*count$", k))
        arrays[key] = np.asarray(2**31 - 1, arrays[key].dtype)
    else:
        where, value = {
            "a NaN weight": (r"^params/.*/w$", np.nan),
            "an inf in Adam's mu": (r"/mu/.*/w$", np.inf),
            "a negative variance": (r"^state/.*/running_var$", -0.5),
            "a negative second moment": (r"/nu/.*/w$", -1e-6),
        }[damage]
        key = next(k for k in sorted(arrays) if re.search(where, k))
        arrays[key] = arrays[key].copy()
        arrays[key].flat[1] = value
    with open(npz, "wb") as f:
        np.savez(f, **arrays)
    with pytest.warns(CorruptCheckpointWarning, match="using the one before it"):
        solver = make(ckpt)
    assert solver.resumed_from["iteration"] == 8  # epoch_002
    assert (ckpt / "step_00000009.npz.corrupt").is_file()
    solver.train()
    assert_same_run(solver, reference[0])


def test_a_deeply_nested_or_huge_sidecar_is_refused_without_a_traceback(crashed, tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(crashed, ckpt)
    (ckpt / "step_00000009.json").write_text("[" * 200_000 + "]" * 200_000)
    with pytest.warns(CorruptCheckpointWarning, match="nested too deeply"):
        solver = make(ckpt)
    assert solver.resumed_from["iteration"] == 8
    side = ckpt / "epoch_002.json"
    meta = _unsigned(json.loads(side.read_text()))
    nested: list = []
    for _ in range(40):
        nested = [nested]
    meta["eval_history"] = nested
    side.write_text(json.dumps(meta))
    with pytest.warns(CorruptCheckpointWarning, match="nests deeper than 32 levels"):
        solver = make(ckpt)
    assert solver.resumed_from["iteration"] == 4  # epoch_001


@pytest.mark.parametrize("stop_at", [2, 4, 6])  # mid-epoch, an epoch's end, a step save
def test_a_requested_stop_checkpoints_and_resumes_bit_for_bit(reference, tmp_path, stop_at):
    """What Ctrl-C does in the apps: request_stop from a hook (a signal handler), then the
    same Solver again."""
    ckpt = tmp_path / "ckpt"

    def stop(solver, iteration, loss):
        if iteration == stop_at:
            solver.request_stop("SIGINT")

    with pytest.raises(TrainingStopped, match=f"stopped \\(SIGINT\\) after iteration {stop_at}"):
        make(ckpt, on_iteration=stop).train()
    again = make(ckpt)
    assert again.resumed_from["iteration"] == stop_at
    again.train()
    assert_same_run(again, reference[0])


def test_timed_checkpoints_lose_at_most_the_interval_and_resume_bit_for_bit(reference, tmp_path):
    """checkpoint_every_s: here every update is past the interval, so a crash in update 7
    resumes from update 6, not from the epoch's start (4)."""
    ckpt = tmp_path / "ckpt"
    with pytest.raises(Crash):
        make(ckpt, checkpoint_every=None, checkpoint_every_s=1e-9, crash_at=7).train()
    again = make(ckpt, checkpoint_every=None, checkpoint_every_s=1e-9)
    assert again.resumed_from["iteration"] == 6
    again.train()
    assert_same_run(again, reference[0])
    with pytest.raises(ValueError, match="checkpoint_every_s"):
        make(ckpt, checkpoint_every_s=0.0)


def test_more_epochs_extend_a_finished_run(reference, crashed, tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(crashed, ckpt)
    for f in ckpt.glob("step_00000009.*"):
        f.unlink()
    finished = make(ckpt, num_epochs=2)  # epoch_002 ends a 2-epoch run
    assert finished.iteration == finished.num_iterations == 8
    finished.train()  # nothing to do
    assert finished.trace_counts["train_step"] == 0
    solver = make(ckpt)  # num_epochs=3 now: may differ, the run continues
    assert solver.resumed_from["iteration"] == 8
    solver.train()
    assert_same_run(solver, reference[0])


def test_a_finished_run_resumes_to_its_end(reference):
    solver, ckpt = reference
    again = make(ckpt)
    assert again.iteration == again.num_iterations
    again.train()  # nothing left to do
    assert_same_run(again, solver)
    assert again.trace_counts["train_step"] == 0


def test_a_differently_configured_run_is_refused_naming_the_difference(crashed):
    other = VGGNet(
        input_dim=SHAPE, num_filters=(6,), blocks=(1,), hidden_dims=(8,), dropout=0.3, reg=1e-3
    )
    with pytest.raises(CheckpointMismatchError, match=r"model\.num_filters: \[4\] in the chec"):
        make(crashed, model=other)
    with pytest.raises(CheckpointMismatchError) as info:
        make(crashed, seed=6, batch_size=5)
    assert info.value.differences == {"solver.batch_size": (10, 5), "solver.seed": (5, 6)}
    assert isinstance(info.value, ValueError)


def test_a_run_resumes_on_another_implementation_of_the_same_model(reference, crashed, tmp_path):
    """The impl fields choose the code, not the function: a run checkpointed with the
    defaults (oneDNN or XLA, channels-last) goes on with im2col, naive pooling and the
    autodiff twins, and ends where the uninterrupted run did, to round-off."""
    shutil.copytree(crashed, tmp_path / "ckpt")
    other = VGGNet(
        input_dim=SHAPE, num_filters=(4,), blocks=(1,), hidden_dims=(8,), dropout=0.3, reg=1e-3,
        conv_impl="im2col", pool_impl="naive", layers="reference",
    )  # fmt: skip
    assert (other.layout, MODEL.layout) == ("NCHW", "NHWC")
    solver = make(tmp_path / "ckpt", model=other)
    assert solver.iteration == 9
    solver.train()
    for got, want in zip(leaves(solver.params), leaves(reference[0].params), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_the_learning_rate_schedule_must_match_to_resume(crashed, tmp_path):
    with pytest.raises(CheckpointMismatchError) as info:
        make(crashed, lr_decay=1.0, lr_schedule="cosine", warmup_epochs=1)
    assert info.value.differences == {
        "solver.lr_decay": (0.9, 1.0),
        "solver.lr_schedule": ("exponential", "cosine"),
        "solver.warmup_epochs": (0.0, 1.0),
    }
    cosine = make(tmp_path, lr_decay=1.0, lr_schedule="cosine", crash_at=4)
    with pytest.raises(Crash):
        cosine.train()
    assert make(tmp_path, lr_decay=1.0, lr_schedule="cosine").iteration == 3
    with pytest.raises(CheckpointMismatchError, match="lr_schedule"):
        make(tmp_path, lr_decay=1.0)


def test_resuming_on_other_data_is_refused_naming_the_data_unless_check_data_is_off(crashed):
    other = {**DATA, "X_val": DATA["X_val"] + 1.0}  # same shapes, other values
    solver = Solver(MODEL, other, num_epochs=1)
    assert solver.data_fingerprint != make(None).data_fingerprint
    with pytest.raises(CheckpointMismatchError, match="data.fingerprint.*check_data=False") as e:
        make(crashed, data=other)
    assert set(e.value.differences) == {"data.fingerprint"}
    assert make(crashed, data=other, check_data=False).iteration == 9


def test_a_checkpoint_from_before_data_fingerprints_resumes(crashed):
    from jcnn.checkpoint import check_resumable

    path = crashed / "step_00000009.npz"
    meta = verify_checkpoint(path)
    del meta["data"]["fingerprint"]  # what older checkpoints hold
    check_resumable(path, meta, make(None)._identity())  # no difference: accepted


def test_num_epochs_below_what_the_checkpoint_has_done_is_refused(crashed):
    with pytest.raises(ValueError, match=r"num_epochs=2 \(8 iterations\) is below .*\(9 "
                       "iterations.*num_epochs=3 or more"):  # fmt: skip
        make(crashed, num_epochs=2)


def test_resume_modes(crashed, tmp_path):
    with pytest.raises(ValueError, match="resume must be True, False or 'auto'"):
        make(tmp_path, resume="yes")
    with pytest.raises(ValueError, match="resume=True needs a checkpoint_dir"):
        make(None, resume=True)
    with pytest.raises(FileNotFoundError, match="holds no complete checkpoint"):
        make(tmp_path / "empty", resume=True)
    with pytest.raises(ValueError, match="already holds checkpoints"):
        make(crashed, resume=False)
    assert make(crashed, resume=True).iteration == 9
    fresh = make(tmp_path / "new", resume=False)
    assert fresh.iteration == 0 and fresh.resumed_from is None
    with pytest.raises(ValueError, match="checkpoint_every"):
        make(tmp_path, checkpoint_every=0)
    with pytest.raises(ValueError, match="keep_checkpoints"):
        make(tmp_path, keep_checkpoints=-1)


def test_restore_by_hand(reference, crashed):
    solver = make(None)
    solver.restore(crashed / "epoch_001")
    assert solver.iteration == 4 and solver.epoch == 1 and len(solver.eval_history) == 2
    assert solver.last_checkpoint == crashed / "epoch_001.npz"


# ------------------------------------------------------------------------ SIGKILL


def _worker(ckpt: Path, result: Path, delay: float) -> list[str]:
    return [PYTHON, str(ROOT / "tests" / "resume_worker.py"), str(ckpt), str(result), str(delay)]


def test_sigkill_at_a_random_moment_then_the_same_command_again(tmp_path):
    """A subprocess is killed (SIGKILL) at a random moment after its first checkpoint; the
    same command run again resumes and ends with exactly the arrays and histories of an
    uninterrupted run of the same command."""
    env = subprocess_env()
    opts = dict(cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ckpt = tmp_path / "ckpt"
    delay = 0.1  # per iteration: 18 iterations, the first checkpoint after 2
    reference = subprocess.Popen(_worker(tmp_path / "ref_ckpt", tmp_path / "ref", 0.0), **opts)
    victim = subprocess.Popen(_worker(ckpt, tmp_path / "run", delay), **opts)
    deadline = time.monotonic() + 240
    while not list(ckpt.glob("*.json")):
        assert victim.poll() is None, victim.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.01)
    pause = random.uniform(0.0, 0.6)
    time.sleep(pause)
    victim.kill()  # SIGKILL
    out, _ = victim.communicate()
    assert victim.returncode == -9, f"the run ended before the kill ({pause=:.2f} s)"
    assert not (tmp_path / "run.json").exists()
    killed_at = max(int(line.split()[1]) for line in out.splitlines() if line.startswith("(It"))

    again = subprocess.run(_worker(ckpt, tmp_path / "run", delay), timeout=240, **opts)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "(Resuming from" in again.stdout, again.stdout
    ref_out, ref_err = reference.communicate(timeout=240)
    assert reference.returncode == 0, ref_err[-3000:]

    got = json.loads((tmp_path / "run.json").read_text())
    want = json.loads((tmp_path / "ref.json").read_text())
    resumed = got.pop("resumed_from")
    assert want.pop("resumed_from") is None
    assert 2 <= resumed["iteration"] <= killed_at < 18, (resumed, killed_at, pause)
    assert got == want
    with np.load(tmp_path / "run.npz") as a, np.load(tmp_path / "ref.npz") as b:
        assert sorted(a.files) == sorted(b.files)
        for k in a.files:
            assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing corrupt: the kill never tears a checkpoint
        for npz in ckpt.glob("*.npz"):
            verify_checkpoint(npz)


def test_only_moments_that_are_squares_must_not_be_negative():
    """Adam's and RMSProp's second moments are averages of squares; other optimisers keep
    signed values under the same name (optax's SM3 a momentum, Sophia a Hessian estimate):
    their checkpoints are good."""
    from jcnn.checkpoint import CorruptCheckpointError
    from jcnn.solver_checkpoints import check_values

    params = {"w": np.ones(3, np.float32)}
    negative = {"w": -np.ones(3, np.float32)}
    host = lambda state: jax.tree_util.tree_map(np.asarray, state)  # noqa: E731
    sm3 = host(optax.sm3(1e-2).init(params))
    check_values({"params": params, "opt_state": (sm3[0]._replace(nu=negative), *sm3[1:])})
    for make_optimizer in (optax.adam, optax.rmsprop):
        state = host(make_optimizer(1e-3).init(params))
        damaged = (state[0]._replace(nu=negative), *state[1:])
        with pytest.raises(CorruptCheckpointError, match="opt_state/0/nu/w holds a negative"):
            check_values({"params": params, "opt_state": damaged})
