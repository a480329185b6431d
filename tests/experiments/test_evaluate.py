"""experiments.evaluate: a finished run's best parameters measured again, plain and flipped."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import jax
import numpy as np
import pytest
from absl import flags

from experiments import evaluate, train, vgg_cifar
from experiments.errors import UsageFailure
from jcnn.checkpoint import load_checkpoint
from jcnn.data import get_cifar10_data
from tests.experiments.test_apps import TINY_VGG, run_in_process
from tests.experiments.util import PYTHON, ROOT, subprocess_env


def run_evaluate(*args: str) -> dict:
    fv = flags.FlagValues()
    evaluate.define_flags(fv)
    fv(["prog", *args])
    return evaluate.run(fv)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, fake_cifar_dir) -> tuple[Path, dict]:
    workdir = tmp_path_factory.mktemp("run") / "vgg"
    summary = run_in_process(
        vgg_cifar, workdir, fake_cifar_dir, *TINY_VGG, "--num_epochs=2", "--noplots"
    )
    return workdir, summary


def _scores(workdir: Path, data_dir: Path, X: np.ndarray) -> np.ndarray:
    config = json.loads((workdir / "config.json").read_text())["flags"]
    model = train.build_model(vgg_cifar.RECIPE_CLASS, config)
    like = dict(zip(("params", "state"), model.init(jax.random.key(0)), strict=True))
    like["mean_image"] = np.zeros(model.input_shape, np.float32)  # recorded beside them
    tree, _ = load_checkpoint(workdir / "checkpoints" / "best.npz", like)
    return np.asarray(model.apply(tree["params"], tree["state"], X)[0])


def test_plain_accuracies_are_the_runs_and_flipped_ones_sum_mirrored_scores(
    finished, fake_cifar_dir
):
    workdir, summary = finished
    result = run_evaluate(f"--workdir={workdir}", f"--data_dir={fake_cifar_dir}")
    assert result["test_acc"] == summary["test_acc"]  # the same parameters, the same split
    assert result["val_acc"] == summary["best_val_acc"]
    assert result["epoch"] == summary["best_epoch"]
    data = get_cifar10_data(fake_cifar_dir, num_training=40, num_validation=10, num_test=10)
    for split in ("val", "test"):
        X, y = data[f"X_{split}"], data[f"y_{split}"]
        flipped = _scores(workdir, fake_cifar_dir, X) + _scores(
            workdir, fake_cifar_dir, X[..., ::-1]
        )
        assert result[f"{split}_acc_flip"] == pytest.approx(np.mean(flipped.argmax(1) == y))
    assert json.loads((workdir / "evaluation.json").read_text()) == [json.loads(json.dumps(result))]


def test_more_test_images_add_a_record_and_a_rerun_replaces_its_own(finished, fake_cifar_dir):
    workdir, _ = finished
    run_evaluate(f"--workdir={workdir}", f"--data_dir={fake_cifar_dir}")
    more = run_evaluate(f"--workdir={workdir}", f"--data_dir={fake_cifar_dir}", "--num_test=20")
    assert more["num_test"] == 20
    run_evaluate(f"--workdir={workdir}", f"--data_dir={fake_cifar_dir}", "--num_test=20")
    records = json.loads((workdir / "evaluation.json").read_text())
    assert sorted(r["num_test"] for r in records) == [10, 20]


def test_a_workdir_without_a_finished_run_stops_with_one_line(finished, tmp_path, fake_cifar_dir):
    with pytest.raises(UsageFailure, match="holds no config.json"):
        run_evaluate(f"--workdir={tmp_path}")
    workdir, _ = finished
    unfinished = tmp_path / "unfinished"
    (unfinished / "checkpoints").mkdir(parents=True)
    (unfinished / "config.json").write_bytes((workdir / "config.json").read_bytes())
    with pytest.raises(UsageFailure, match="holds no checkpoints/best.npz"):
        run_evaluate(f"--workdir={unfinished}", f"--data_dir={fake_cifar_dir}")
    (unfinished / "config.json").write_text(json.dumps({"app": "benchmark", "flags": {}}))
    with pytest.raises(UsageFailure, match="from app 'benchmark'"):
        run_evaluate(f"--workdir={unfinished}")
    with pytest.raises(flags.IllegalFlagValueError):
        run_evaluate(f"--workdir={workdir}", "--num_test=0")


def test_the_command_line_prints_the_table(finished, fake_cifar_dir):
    workdir, summary = finished
    proc = subprocess.run(
        [PYTHON, "-m", "experiments.evaluate", f"--workdir={workdir}",
         f"--data_dir={fake_cifar_dir}"],
        capture_output=True, text=True, timeout=240, cwd=ROOT, env=subprocess_env(),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"| plain | {summary['best_val_acc']:.4f} | {summary['test_acc']:.4f} |" in proc.stdout
    assert "| test-time flip |" in proc.stdout
    missing = subprocess.run(
        [PYTHON, "-m", "experiments.evaluate"], capture_output=True, text=True, timeout=240,
        cwd=ROOT, env=subprocess_env(),
    )  # fmt: skip
    assert missing.returncode != 0 and "workdir" in missing.stderr


def test_a_data_dir_that_is_a_file_is_named_as_the_flag(finished, tmp_path):
    """--data_dir=<a file> said only 'File exists (...)'."""
    a_file = tmp_path / "not_a_folder"
    a_file.write_text("x")
    with pytest.raises(UsageFailure) as info:
        run_evaluate(f"--workdir={finished[0]}", f"--data_dir={a_file}")
    assert f"--data_dir={a_file} is a file, not a folder" in str(info.value.code)
