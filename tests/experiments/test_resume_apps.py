"""The apps after a crash: the same command again resumes (metrics without duplicates, the
same results as an uninterrupted run); other flags, corrupt checkpoints, non-finite losses."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import jax
import numpy as np
import pytest
from absl import flags

from experiments import recipes, resume, rundir, settings, three_layer_cifar, train, train_flags
from experiments.errors import UsageFailure
from experiments.lock import WorkdirLock
from jcnn.checkpoint import CorruptCheckpointWarning
from jcnn.solver import Solver
from tests.experiments.test_apps import TINY, TINY_THREE, read_metrics, run_in_process
from tests.experiments.util import (
    PYTHON,
    ROOT,
    fatal_message,
    fatal_messages,
    subprocess_env,
    write_fake_cifar,
)

ARGS = (
    *TINY_THREE,
    "--num_epochs=2",
    "--checkpoint_every=3",
    "--noplots",
    "--num_test=5",
)  # fmt: skip  (5 iterations per epoch, 10 in all)
TIMING = {"wall_time_s", "data_time_s", "train_time_s", "eval_time_s", "images_per_s",
          "resumed_from_iteration", "workdir", "flags"}  # fmt: skip


class Crash(Exception):
    pass


def run(workdir: Path, data_dir: Path, *args: str) -> dict:
    return run_in_process(three_layer_cifar, workdir, data_dir, *ARGS, *args)


def crash_before(monkeypatch, iteration: int) -> None:
    """The process dies just before update ``iteration`` (1-based)."""
    step = Solver._step

    def dying(self):
        if self.iteration + 1 == iteration:
            raise Crash(iteration)
        return step(self)

    monkeypatch.setattr(Solver, "_step", dying)


def without(record: dict, keys) -> dict:
    return {k: v for k, v in record.items() if k not in keys}


def arrays(path: Path) -> dict:
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, fake_cifar_dir):
    workdir = tmp_path_factory.mktemp("uninterrupted") / "run"
    return workdir, run(workdir, fake_cifar_dir)


@pytest.fixture(scope="module")
def crashed(tmp_path_factory, fake_cifar_dir):
    """A workdir whose run died before iteration 8 (last checkpoint: step 6)."""
    workdir = tmp_path_factory.mktemp("crashed") / "run"
    with pytest.MonkeyPatch.context() as mp:
        crash_before(mp, 8)
        with pytest.raises(Crash):
            run(workdir, fake_cifar_dir)
    return workdir


def copy(workdir: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "run"
    shutil.copytree(workdir, dest)
    return dest


def test_the_same_command_resumes_and_ends_as_if_never_interrupted(
    uninterrupted, crashed, tmp_path, fake_cifar_dir, capsys
):
    ref_dir, ref = uninterrupted
    workdir = copy(crashed, tmp_path)
    assert not (workdir / "summary.json").exists()
    summary = run(workdir, fake_cifar_dir)
    out = capsys.readouterr().out
    assert (
        f"resuming the run in {workdir} from {workdir / 'checkpoints' / 'step_00000006.npz'}" in out
    )
    assert summary["resumed_from_iteration"] == 6 and summary["images_per_s"] > 0
    assert without(summary, TIMING) == without(ref, TIMING)
    # metrics.jsonl: every line once, the same lines as the uninterrupted run's.
    for got, want in zip(read_metrics(workdir), read_metrics(ref_dir), strict=True):
        assert [without(r, {"elapsed_s"}) for r in got] == [without(r, {"elapsed_s"}) for r in want]
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == len(set(lines))
    best, ref_best = (
        arrays(workdir / "checkpoints/best.npz"),
        arrays(ref_dir / "checkpoints/best.npz"),
    )
    assert best.keys() == ref_best.keys()
    assert all(np.array_equal(best[k], ref_best[k]) for k in best)
    config = json.loads((workdir / "config.json").read_text())
    assert config["resumed_from"]["iteration"] == 6


def test_resume_with_other_flags_stops_naming_them(crashed, tmp_path, fake_cifar_dir):
    workdir = copy(crashed, tmp_path)
    with pytest.raises(SystemExit) as info:
        run(workdir, fake_cifar_dir, "--num_filters=6", "--learning_rate=0.01")
    message = fatal_message(str(info.value.code))
    assert "--learning_rate=0.001 there, --learning_rate=0.01 now" in message
    assert "--num_filters=4 there, --num_filters=6 now" in message
    assert f"--flagfile={workdir / 'flags.cfg'}" in message and "--overwrite" in message
    assert (workdir / "checkpoints" / "step_00000006.npz").is_file()  # nothing touched
    (workdir / "flags.cfg").unlink()  # then the message does not point at it
    with pytest.raises(SystemExit) as info:
        run(workdir, fake_cifar_dir, "--num_filters=6")
    message = fatal_message(str(info.value.code))
    assert (
        "--num_filters=4 there, --num_filters=6 now" in message and "flags.cfg is gone" in message
    )
    assert "--flagfile" not in message


def _resumable(tmp_path, monkeypatch, saved, now) -> Path | None:
    """check_resumable of ``now`` against a checkpoint that recorded ``saved``."""
    import jcnn.checkpoint

    path = tmp_path / "checkpoints" / "step_00000100.npz"
    monkeypatch.setattr(
        jcnn.checkpoint, "latest_run_checkpoint", lambda *a: (path, {"run_config": saved})
    )
    return resume.check_resumable(rundir.RunWriter(tmp_path), now)


def test_a_checkpoint_from_before_a_setting_existed_resumes_with_the_value_it_stood_for(
    tmp_path, monkeypatch
):
    now = dataclasses.replace(recipes.VGG_SEED, workdir=str(tmp_path))
    added = settings.before_added(recipes.VGGRecipe)
    assert {"lr_schedule", "warmup_epochs", "test_time_flip", "cutout"} <= set(added)
    saved = {k: v for k, v in settings.flag_values(now).items() if k not in added}
    assert _resumable(tmp_path, monkeypatch, saved, now) is not None
    cosine = dataclasses.replace(now, lr_schedule="cosine", lr_decay=1.0)
    with pytest.raises(UsageFailure, match="--lr_schedule=exponential there, "
                       "--lr_schedule=cosine now"):  # fmt: skip
        _resumable(tmp_path, monkeypatch, saved, cosine)
    with pytest.raises(UsageFailure, match="--test_time_flip=false there, "
                       "--test_time_flip=true now"):  # fmt: skip
        _resumable(tmp_path, monkeypatch, saved, dataclasses.replace(now, test_time_flip=True))


def test_an_airbench_checkpoint_with_the_flags_the_app_no_longer_has_resumes(tmp_path, monkeypatch):
    """The airbench app once recorded the cs231n flags it ignored (--update_rule, --reg,
    ...); its recipe has none of them now, so they cannot differ."""
    now = dataclasses.replace(recipes.AIRBENCH94, workdir=str(tmp_path))
    gone = {"update_rule": "sgd_momentum", "reg": 0.0, "weight_scale": 0.01, "conv_impl": "xla",
            "augment": False, "lr_decay": 1.0}  # fmt: skip
    saved = {**settings.flag_values(now), **gone}
    assert _resumable(tmp_path, monkeypatch, saved, now) is not None
    with pytest.raises(UsageFailure, match="--momentum=0.85 there, --momentum=0.9 now"):
        _resumable(tmp_path, monkeypatch, saved, dataclasses.replace(now, momentum=0.9))


def test_a_corrupt_newest_checkpoint_falls_back_to_the_previous(
    uninterrupted, crashed, tmp_path, fake_cifar_dir, capsys
):
    workdir = copy(crashed, tmp_path)
    newest = workdir / "checkpoints" / "step_00000006.npz"
    newest.write_bytes(newest.read_bytes()[:1000])
    with pytest.warns(CorruptCheckpointWarning, match="step_00000006.npz fails its checksum"):
        summary = run(workdir, fake_cifar_dir, "--print_every=3")  # may differ
    assert "from " + str(workdir / "checkpoints" / "epoch_001.npz") in capsys.readouterr().out
    assert summary["resumed_from_iteration"] == 5
    assert without(summary, TIMING) == without(uninterrupted[1], TIMING)
    iters, _ = read_metrics(workdir)
    assert [r["iteration"] for r in iters] == [1, 4, 7, 10]  # the new --print_every throughout


def test_a_finished_run_is_not_run_again(uninterrupted, tmp_path, fake_cifar_dir, capsys):
    workdir = copy(uninterrupted[0], tmp_path)
    before = (workdir / "metrics.jsonl").read_text()
    assert run(workdir, fake_cifar_dir) == uninterrupted[1]
    assert "is complete; see summary.json" in capsys.readouterr().out
    assert (workdir / "metrics.jsonl").read_text() == before


@pytest.mark.parametrize("damage", ["missing", "damaged"])
def test_rerunning_a_finished_run_writes_a_lost_best_npz_again(
    uninterrupted, tmp_path, fake_cifar_dir, capsys, damage
):
    """A finished run without best.npz (or with an unreadable best.json) said it was complete
    and wrote nothing, while evaluate told the user to rerun it, and predict used the last
    epoch's parameters as a run "still training". The rerun writes it from the last
    checkpoint's best parameters: the same arrays."""
    workdir = copy(uninterrupted[0], tmp_path)
    best = workdir / "checkpoints" / "best.npz"
    if damage == "missing":
        best.unlink()
        best.with_suffix(".json").unlink()
    else:
        best.with_suffix(".json").write_text("{garbage")
    assert run(workdir, fake_cifar_dir) == uninterrupted[1]
    assert f"summary.json ({best} was {damage}: written again from the run's last checkpoint)" in (
        capsys.readouterr().out
    )
    original = arrays(uninterrupted[0] / "checkpoints" / "best.npz")
    assert original.keys() == arrays(best).keys()
    assert all(np.array_equal(v, arrays(best)[k]) for k, v in original.items())
    run(workdir, fake_cifar_dir)  # intact now: nothing to say
    assert "written again" not in capsys.readouterr().out


def test_an_extended_run_killed_after_its_last_checkpoint_writes_its_results_when_rerun(
    uninterrupted, tmp_path, fake_cifar_dir, monkeypatch, capsys
):
    """A finished 2-epoch run extended to 3 and killed between its last checkpoint and its
    summary: the rerun called the run complete and kept the 2-epoch summary. It finishes
    the 3-epoch run's results instead, as an uninterrupted 3-epoch run's."""
    import experiments.train

    workdir = copy(uninterrupted[0], tmp_path)
    with monkeypatch.context() as mp:
        mp.setattr(experiments.train, "finish_run", lambda *a, **k: (_ for _ in ()).throw(Crash()))
        with pytest.raises(Crash):
            run(workdir, fake_cifar_dir, "--num_epochs=3")
    assert json.loads((workdir / "summary.json").read_text())["iterations"] == 10  # stale
    capsys.readouterr()
    summary = run(workdir, fake_cifar_dir, "--num_epochs=3")
    out = capsys.readouterr().out
    assert "is complete" not in out and "no updates left to train" in out, out
    assert summary["iterations"] == 15 and summary["epochs"] == 3
    extended = copy(uninterrupted[0], tmp_path / "other")
    want = run(extended, fake_cifar_dir, "--num_epochs=3")
    assert without(summary, TIMING) == without(want, TIMING)


def test_a_nonfinite_loss_stops_the_app_with_one_line(tmp_path, fake_cifar_dir):
    """In process: one line, a report, and --debug_nans switched back off afterwards."""
    workdir = tmp_path / "run"
    with pytest.raises(SystemExit) as info:
        run(workdir, fake_cifar_dir, "--learning_rate=1e30", "--update_rule=sgd", "--debug_nans")
    message = fatal_message(str(info.value.code))
    assert message.startswith("FATAL non-finite")
    report = json.loads((workdir / "nonfinite.json").read_text())
    assert f"at iteration {report['iteration']} / 10" in message
    assert len(report["batch_indices"]) == 8 and report["learning_rate"] == pytest.approx(1e30)
    assert report["jax_debug_nans"] is True
    assert "--overwrite" in message and "learning_rate" in message
    kept = report["last_good_checkpoint"]  # the rerun's advice says what a rerun does
    assert ("resumes from" in message) == (kept is not None)
    assert ("No checkpoint was written" in message) == (kept is None)
    assert jax.config.jax_debug_nans is False  # restored


def test_debug_nans_reports_jax_naming_the_primitive(tmp_path, fake_cifar_dir):
    """With --debug_nans, JAX's own check finds the NaN and the report keeps its message (the
    Solver's finite flags are tested in tests/test_numerics.py). In a fresh interpreter:
    after some other jitted work in the same process, JAX 0.10 can skip its check and leave
    the NaN to the Solver's flags."""
    workdir = tmp_path / "run"
    proc = subprocess.run(
        [PYTHON, "-m", "experiments.three_layer_cifar", f"--data_dir={fake_cifar_dir}",
         f"--workdir={workdir}", *ARGS, *TINY, "--learning_rate=1e30", "--update_rule=sgd",
         "--debug_nans"],
        capture_output=True, text=True, timeout=240, cwd=ROOT, env=subprocess_env(),
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "FATAL non-finite" in proc.stderr
    report = json.loads((workdir / "nonfinite.json").read_text())
    assert report["jax_debug_nans"] is True and report["cause"].startswith("FloatingPointError")


def test_the_new_flags():
    fv = flags.FlagValues()
    three_layer_cifar.define_flags(fv)
    fv(["prog", "--checkpoint_every=7", "--debug_nans"])
    recipe = train_flags.recipe_from_flags(fv, recipes.ThreeLayerRecipe)
    assert recipe.checkpoint_every == 7 and recipe.debug_nans is True
    kw = train.solver_kwargs(recipe)
    assert kw["checkpoint_every"] == 7 and kw["keep_checkpoints"] == 3
    with pytest.raises(flags.Error, match="checkpoint_every"):
        fv(["prog", "--checkpoint_every=0"])
    assert TINY  # the shared tiny split


def one_line(info) -> str:
    return fatal_message(str(info.value.code))


def test_a_second_run_on_a_locked_workdir_stops_naming_the_holder(crashed, tmp_path):
    """Another process holds the workdir's lock: the app stops with one line naming it and
    touches nothing (the lock is taken before the workdir is read)."""
    workdir = copy(crashed, tmp_path)
    before = sorted(p.name for p in workdir.rglob("*"))
    with WorkdirLock(workdir):  # this test process stands for the run already going
        proc = subprocess.run(
            [PYTHON, "-m", "experiments.three_layer_cifar", f"--workdir={workdir}",
             "--data_dir=/nonexistent", *ARGS, *TINY],
            capture_output=True, text=True, timeout=240, cwd=ROOT, env=subprocess_env(),
        )  # fmt: skip
    assert proc.returncode == 1, proc.stderr[-3000:]
    errors = fatal_messages(proc.stderr)
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert f"--workdir={workdir} is in use by another run (pid {os.getpid()}" in errors[0]
    assert sorted(p.name for p in workdir.rglob("*")) == before


def test_every_checkpoint_corrupt_stops_with_one_line_and_keeps_the_files(crashed, tmp_path):
    workdir = copy(crashed, tmp_path)
    for npz in (workdir / "checkpoints").glob("*.npz"):
        npz.write_bytes(b"garbage")
    with pytest.warns(CorruptCheckpointWarning), pytest.raises(SystemExit) as info:
        run(workdir, tmp_path / "no-data-needed")
    message = one_line(info)
    assert "holds a run but no good checkpoint" in message and "--overwrite" in message
    assert "metrics.jsonl" in message and "step_00000006.npz.corrupt" in message
    kept = sorted(p.name for p in (workdir / "checkpoints").iterdir())
    assert kept and all(name.endswith(".corrupt") for name in kept)
    assert (workdir / "metrics.jsonl").is_file()
    with pytest.raises(SystemExit, match="no good checkpoint"):  # the same, run after run
        run(workdir, tmp_path / "no-data-needed")


def test_resume_on_other_data_stops_naming_it_unless_allowed(crashed, tmp_path, fake_cifar_dir):
    workdir = copy(crashed, tmp_path)
    other = write_fake_cifar(tmp_path / "other", seed=1)  # same shapes, other images
    with pytest.raises(SystemExit) as info:
        run(workdir, other)
    message = one_line(info)
    assert "data differ from the data the run was trained on" in message
    assert "--allow_data_change" in message and f"--data_dir={other}" in message
    summary = run(workdir, other, "--allow_data_change")
    assert summary["resumed_from_iteration"] == 6


def test_num_epochs_below_what_the_run_has_done_stops_with_one_line(crashed, tmp_path):
    workdir = copy(crashed, tmp_path)  # at iteration 6 of 5 per epoch
    with pytest.raises(SystemExit) as info:
        run(workdir, tmp_path / "no-data-needed", "--num_epochs=1")
    message = one_line(info)
    assert "--num_epochs=1 is below what the run" in message and "--num_epochs=2 or more" in message
    assert not (workdir / "summary.json").exists()


@pytest.mark.parametrize("name, status", [("SIGINT", 130), ("SIGTERM", 143), ("SIGHUP", 129)])
def test_ctrl_c_checkpoints_where_it_stopped_and_the_same_command_resumes(
    uninterrupted, tmp_path, fake_cifar_dir, monkeypatch, capsys, name, status
):
    """The signal lands during update 4 (mid-epoch, no checkpoint due): the run saves
    step 4, says so in one line, exits 130 (143 for SIGTERM); the rerun ends as if never
    stopped."""
    step = Solver._step

    def signalled(self):
        if self.iteration + 1 == 4:
            signal.raise_signal(getattr(signal, name))
        return step(self)

    workdir = tmp_path / "run"
    inherited = signal.getsignal(getattr(signal, name))
    default = signal.default_int_handler if name == "SIGINT" else signal.SIG_DFL
    signal.signal(getattr(signal, name), default)  # a background job inherits SIGINT ignored
    try:
        with monkeypatch.context() as mp:
            mp.setattr(Solver, "_step", signalled)
            with pytest.raises(SystemExit) as info:
                run(workdir, fake_cifar_dir)
        assert signal.getsignal(getattr(signal, name)) is default  # handlers restored
    finally:
        signal.signal(getattr(signal, name), inherited)
    assert info.value.code == status
    err = capsys.readouterr().err.strip().splitlines()
    saved = workdir / "checkpoints" / "step_00000004.npz"
    assert err[-1] == (
        f"stopped ({name}) after iteration 4; saved {saved}: the same command resumes from "
        f"there (--workdir={workdir})"
    )
    summary = run(workdir, fake_cifar_dir)
    assert summary["resumed_from_iteration"] == 4
    assert without(summary, TIMING) == without(uninterrupted[1], TIMING)
