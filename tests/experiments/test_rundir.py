"""The run directory's pieces (experiments.rundir): metrics records, the writer, plots."""

from __future__ import annotations

import json
import os
import signal
import subprocess

import numpy as np
import pytest

from experiments import rundir
from experiments.lock import WorkdirLock
from tests.experiments.util import PYTHON, ROOT, fatal_message, subprocess_env


def test_iteration_records_follow_the_solver_print_lines():
    loss = [float(i) for i in range(1, 13)]  # 12 iterations, 4 per epoch
    recs = rundir.iteration_records(loss, 0, 5, 4)
    assert recs == [
        {"iteration": 1, "epoch": 1, "loss": 1.0},
        {"iteration": 6, "epoch": 2, "loss": 6.0},
        {"iteration": 11, "epoch": 3, "loss": 11.0},
    ]
    # Resuming from what was already logged gives the rest, never twice.
    assert (
        rundir.iteration_records(loss[:6], 0, 5, 4) + rundir.iteration_records(loss, 6, 5, 4)
        == recs
    )


def test_epoch_record():
    check = {"epoch": 2, "iteration": 40, "loss": 1.2, "train_acc": 0.5, "val_acc": 0.25,
             "lr": np.float32(5e-4).item(), "seconds": 12.34567}  # fmt: skip
    rec = rundir.epoch_record(check)
    assert rec["epoch"] == 2 and rec["train_acc"] == 0.5 and rec["val_acc"] == 0.25
    assert rec["lr"] == 5e-4  # float32 noise rounded away
    assert rec["at_iteration"] == 40 and rec["elapsed_s"] == 12.346


def test_writer_files(tmp_path):
    w = rundir.RunWriter(tmp_path / "run", enabled=True)
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
    (tmp_path / "run" / "notes.txt").write_text("mine")
    w.clear()
    assert not w.holds_run() and not list(ckpt.iterdir())
    assert (tmp_path / "run" / "notes.txt").exists()  # only the run's own files go


def test_first_conv_weights():
    w = np.ones((4, 3, 3, 3))
    assert rundir.first_conv_weights({"conv1": {"w": w}, "fc1": {"w": np.ones((2, 2))}}) is not None
    assert rundir.first_conv_weights({"conv1_1": {"w": w}}).shape == (4, 3, 3, 3)
    assert rundir.first_conv_weights({"fc1": {"w": np.ones((2, 2))}}) is None


def test_history_records_are_the_lines_a_run_writes_in_order():
    from types import SimpleNamespace

    checks = [{"epoch": e, "iteration": i, "train_acc": 0.5, "val_acc": 0.5, "lr": 1e-3,
               "seconds": 1.0} for e, i in ((0, 1), (1, 4), (2, 8))]  # fmt: skip
    solver = SimpleNamespace(
        loss_history=[float(i) for i in range(1, 11)], eval_history=checks, iterations_per_epoch=4
    )
    recs = rundir.history_records(solver, 3)
    assert [(r.get("iteration"), r.get("train_acc") and r["epoch"]) for r in recs] == [
        (1, None), (None, 0), (4, None), (None, 1), (7, None), (None, 2), (10, None),
    ]  # fmt: skip


def test_writer_sees_a_run_that_only_has_checkpoints(tmp_path):
    w = rundir.RunWriter(tmp_path, enabled=True)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "step_00000003.json").write_text("{}")
    (tmp_path / "checkpoints" / "step_00000004.npz.corrupt").write_bytes(b"x")
    (tmp_path / "nonfinite.json").write_text("{}")
    assert w.holds_run()
    w.clear()
    assert not w.holds_run() and not list(tmp_path.rglob("*.*"))


def test_a_workdir_with_only_corrupt_checkpoints_holds_a_run(tmp_path):
    w = rundir.RunWriter(tmp_path, enabled=True)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "step_00000004.npz.corrupt").write_bytes(b"x")
    assert w.holds_run()


def test_default_workdirs_never_collide(tmp_path, monkeypatch):
    from pathlib import Path

    monkeypatch.setattr(rundir, "default_workdir", lambda app: Path("runs") / "app-20240506-070809")
    a = rundir.create_workdir("app", root=tmp_path)
    b = rundir.create_workdir("app", root=tmp_path)  # same second, same process
    assert a != b and a.is_dir() and b.is_dir() and not list(a.iterdir())
    assert a.name == f"app-20240506-070809-{os.getpid()}"
    assert b.name.startswith(a.name + "-")


def test_the_workdir_lock_is_exclusive_and_names_the_holder(tmp_path):
    workdir = tmp_path / "run"
    with WorkdirLock(workdir) as held:
        assert held.held and (workdir / ".lock").read_text() == f"{os.getpid()}\n"
        with pytest.raises(SystemExit) as info:
            WorkdirLock(workdir).acquire()  # another open file: refused, even in-process
        message = fatal_message(str(info.value.code))
        assert f"--workdir={workdir} is in use by another run (pid {os.getpid()}" in message
    with WorkdirLock(workdir):  # released on leaving the block
        pass


def test_a_fifo_at_the_lock_s_name_is_one_line_not_a_traceback(tmp_path):
    """ftruncate on a FIFO at <workdir>/.lock raised OSError (EINVAL) from inside the lock."""
    workdir = tmp_path / "run"
    workdir.mkdir()
    os.mkfifo(workdir / ".lock")
    with pytest.raises(SystemExit) as info:
        WorkdirLock(workdir).acquire()
    message = fatal_message(str(info.value.code))
    assert message.endswith("is not a regular file (a FIFO, device or socket): remove it; a "
                            "run keeps its lock file there"), message  # fmt: skip


@pytest.mark.parametrize("target", ["a file", "a dangling name"])
def test_a_link_at_the_lock_s_name_is_refused_and_its_target_left_alone(tmp_path, target):
    """Opening <workdir>/.lock followed a symbolic link and truncated the file it named."""
    workdir, victim = tmp_path / "run", tmp_path / "victim.txt"
    workdir.mkdir()
    if target == "a file":
        victim.write_text("someone's data\n")
    os.symlink(victim, workdir / ".lock")
    with pytest.raises(SystemExit) as info:
        WorkdirLock(workdir).acquire()
    assert fatal_message(str(info.value.code)).endswith("is a symbolic link: remove it (a run "
        "keeps its own lock file there and never writes through a link)")  # fmt: skip
    if target == "a file":
        assert victim.read_text() == "someone's data\n"
    else:
        assert not victim.exists()


def test_a_killed_holder_never_blocks_its_workdir(tmp_path):
    """The OS drops a flock when its process dies, SIGKILL included."""
    workdir = tmp_path / "run"
    code = (
        "import sys, time; from experiments.lock import WorkdirLock; "
        "WorkdirLock(sys.argv[1]).acquire(); print('locked', flush=True); time.sleep(120)"
    )
    proc = subprocess.Popen(
        [PYTHON, "-c", code, str(workdir)], stdout=subprocess.PIPE, text=True, cwd=ROOT,
        env=subprocess_env(),
    )  # fmt: skip
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(SystemExit, match=f"pid {proc.pid}"):
            WorkdirLock(workdir).acquire()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stdout.close()
    with WorkdirLock(workdir) as lock:
        assert lock.held
