"""The small pieces of experiments.train: metrics records, the writer, helpers."""

from __future__ import annotations

import json

import jax
import numpy as np

from experiments import train


def test_iteration_records_follow_the_solver_print_lines():
    loss = [float(i) for i in range(1, 13)]  # 12 iterations, 4 per epoch
    recs = train.iteration_records(loss, 0, 5, 4)
    assert recs == [
        {"iteration": 1, "epoch": 1, "loss": 1.0},
        {"iteration": 6, "epoch": 2, "loss": 6.0},
        {"iteration": 11, "epoch": 3, "loss": 11.0},
    ]
    # Resuming from what was already logged gives the rest, never twice.
    assert (
        train.iteration_records(loss[:6], 0, 5, 4) + train.iteration_records(loss, 6, 5, 4) == recs
    )


def test_epoch_record():
    check = {"epoch": 2, "iteration": 40, "loss": 1.2, "train_acc": 0.5, "val_acc": 0.25,
             "lr": np.float32(5e-4).item(), "seconds": 12.34567}  # fmt: skip
    rec = train.epoch_record(check)
    assert rec["epoch"] == 2 and rec["train_acc"] == 0.5 and rec["val_acc"] == 0.25
    assert rec["lr"] == 5e-4  # float32 noise rounded away
    assert rec["at_iteration"] == 40 and rec["elapsed_s"] == 12.346


def test_writer_files(tmp_path):
    w = train.RunWriter(tmp_path / "run", enabled=True)
    assert not w.holds_run()
    w.write_json("summary.json", {"a": np.float32(0.5), "b": float("nan"), "d": np.dtype("f4")})
    assert json.loads((tmp_path / "run" / "summary.json").read_text()) == {
        "a": 0.5, "b": None, "d": "float32",
    }  # fmt: skip
    w.append_jsonl("metrics.jsonl", [{"i": 1}, {"loss": float("inf")}])
    w.append_jsonl("metrics.jsonl", [{"i": 2}])
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(s) for s in lines] == [{"i": 1}, {"loss": None}, {"i": 2}]
    assert w.holds_run()
    assert not list((tmp_path / "run").glob(".*tmp"))  # no temporary files left behind

    ckpt = tmp_path / "run" / "checkpoints"
    ckpt.mkdir()
    for e in range(1, 6):
        (ckpt / f"epoch_{e:03d}.npz").write_bytes(b"x")
        (ckpt / f"epoch_{e:03d}.json").write_text("{}")
    (ckpt / "best.npz").write_bytes(b"x")
    w.prune_checkpoints(2)
    assert sorted(p.name for p in ckpt.iterdir()) == [
        "best.npz", "epoch_004.json", "epoch_004.npz", "epoch_005.json", "epoch_005.npz",
    ]  # fmt: skip
    w.prune_checkpoints(0)  # 0 keeps all
    assert len(list(ckpt.iterdir())) == 5
    (tmp_path / "run" / "notes.txt").write_text("mine")
    w.clear()
    assert not w.holds_run() and not list(ckpt.iterdir())
    assert (tmp_path / "run" / "notes.txt").exists()  # only the run's own files go


def test_first_conv_weights():
    w = np.ones((4, 3, 3, 3))
    assert train.first_conv_weights({"conv1": {"w": w}, "fc1": {"w": np.ones((2, 2))}}) is not None
    assert train.first_conv_weights({"conv1_1": {"w": w}}).shape == (4, 3, 3, 3)
    assert train.first_conv_weights({"fc1": {"w": np.ones((2, 2))}}) is None


def test_make_augment():
    assert train.make_augment({"augment": False, "augment_pad": 4}) is None
    fn = train.make_augment({"augment": True, "augment_pad": 2})
    X = np.arange(2 * 3 * 5 * 5, dtype=np.float32).reshape(2, 3, 5, 5)
    out = jax.jit(fn)(jax.random.key(0), X)
    assert out.shape == X.shape
    cut = train.make_augment({"augment": True, "augment_pad": 0, "cutout": 3})
    out = np.asarray(jax.jit(cut)(jax.random.key(0), X + 1.0))
    assert ((out == 0).sum(axis=(1, 2, 3)) > 0).all()  # a square of zeros in every image


def test_solver_kwargs_map_the_flags():
    cfg = {"update_rule": "adam", "learning_rate": 1e-3, "lr_decay": 0.9, "batch_size": 8,
           "num_epochs": 2, "num_train_samples": 100, "num_val_samples": None, "print_every": 5,
           "seed": 3}  # fmt: skip
    kw = train.solver_kwargs(cfg)
    assert kw["optim_config"] == {"learning_rate": 1e-3}
    assert kw["update_rule"] == "adam" and kw["lr_decay"] == 0.9 and kw["seed"] == 3
    assert kw["test_time_flip"] is False  # a config from before the flag
    assert train.solver_kwargs({**cfg, "test_time_flip": True})["test_time_flip"] is True


def test_history_records_are_the_lines_a_run_writes_in_order():
    from types import SimpleNamespace

    checks = [{"epoch": e, "iteration": i, "train_acc": 0.5, "val_acc": 0.5, "lr": 1e-3,
               "seconds": 1.0} for e, i in ((0, 1), (1, 4), (2, 8))]  # fmt: skip
    solver = SimpleNamespace(
        loss_history=[float(i) for i in range(1, 11)], eval_history=checks, iterations_per_epoch=4
    )
    recs = train.history_records(solver, 3)
    assert [(r.get("iteration"), r.get("train_acc") and r["epoch"]) for r in recs] == [
        (1, None), (None, 0), (4, None), (None, 1), (7, None), (None, 2), (10, None),
    ]  # fmt: skip


def test_writer_sees_a_run_that_only_has_checkpoints(tmp_path):
    w = train.RunWriter(tmp_path, enabled=True)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "step_00000003.json").write_text("{}")
    (tmp_path / "checkpoints" / "step_00000004.npz.corrupt").write_bytes(b"x")
    (tmp_path / "nonfinite.json").write_text("{}")
    assert w.holds_run()
    w.clear()
    assert not w.holds_run() and not list(tmp_path.rglob("*.*"))
