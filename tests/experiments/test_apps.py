"""The CIFAR-10 apps end to end on a tiny fake CIFAR-10: every file of the workdir."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import jax
import numpy as np
from absl import flags

from experiments import rundir, three_layer_cifar, train, train_flags, vgg_cifar
from jcnn.checkpoint import load_checkpoint
from jcnn.data import get_cifar10_data
from tests.experiments.util import PYTHON, ROOT, subprocess_env

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TINY = ["--num_train=40", "--num_val=10", "--num_test=10", "--batch_size=8", "--print_every=2"]
TINY_VGG = ["--num_filters=4,8", "--blocks=1,1", "--hidden_dims=8", "--dropout=0.1"]
TINY_THREE = ["--num_filters=4", "--filter_size=3", "--hidden_dim=8"]
SUMMARY_KEYS = {
    "final_train_acc", "final_val_acc", "best_val_acc", "best_epoch", "test_acc", "final_loss",
    "wall_time_s", "train_time_s", "images_per_s", "flags", "jax_version", "device", "model",
    "iterations", "iterations_per_epoch", "num_params",
}  # fmt: skip


def run_in_process(app, workdir: Path, data_dir: Path, *args: str) -> dict:
    fv = flags.FlagValues()
    app.define_flags(fv)
    argv = fv(["prog", f"--workdir={workdir}", f"--data_dir={data_dir}", *TINY, *args])
    return train.main(argv, recipe_class=app.RECIPE_CLASS, fv=fv)


def read_metrics(workdir: Path) -> tuple[list[dict], list[dict]]:
    lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    iters = [r for r in lines if "iteration" in r]
    epochs = [r for r in lines if "train_acc" in r]
    assert len(iters) + len(epochs) == len(lines)
    return iters, epochs


def check_workdir(
    workdir: Path, summary: dict, *, epochs: int, iterations_per_epoch: int, plots: bool = True
):
    iters, checks = read_metrics(workdir)
    total = epochs * iterations_per_epoch
    assert [r["iteration"] for r in iters] == list(range(1, total + 1, 2))  # print_every=2
    for r in iters:
        assert set(r) == {"iteration", "epoch", "loss"}
        assert r["epoch"] == (r["iteration"] - 1) // iterations_per_epoch + 1
        assert np.isfinite(r["loss"])
    assert [r["epoch"] for r in checks] == list(range(0, epochs + 1))  # epoch 0: first step
    for r in checks:
        assert {"epoch", "train_acc", "val_acc", "lr"} <= set(r)
        assert 0.0 <= r["train_acc"] <= 1.0 and 0.0 <= r["val_acc"] <= 1.0 and r["lr"] > 0

    on_disk = json.loads((workdir / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    assert SUMMARY_KEYS <= set(on_disk)
    assert on_disk["best_val_acc"] == max(r["val_acc"] for r in checks)
    assert on_disk["final_val_acc"] == checks[-1]["val_acc"]
    assert on_disk["final_train_acc"] == checks[-1]["train_acc"]
    assert on_disk["iterations"] == total
    assert on_disk["images_per_s"] > 0 and on_disk["wall_time_s"] >= on_disk["train_time_s"] > 0
    assert 0.0 <= on_disk["test_acc"] <= 1.0
    assert on_disk["jax_version"] == jax.__version__
    assert on_disk["device"]["platform"] == jax.devices()[0].platform
    assert on_disk["flags"]["workdir"] == str(workdir)

    for png in ("loss.png", "accuracy.png", "filters.png"):
        if plots:
            assert (workdir / png).read_bytes()[:8] == PNG_MAGIC, png
        else:
            assert not (workdir / png).exists(), png
    ckpts = sorted(p.name for p in (workdir / "checkpoints").glob("epoch_*.npz"))
    assert ckpts == [f"epoch_{e:03d}.npz" for e in range(1, epochs + 1)][-3:]  # keep 3
    assert (workdir / "checkpoints" / "best.json").is_file()
    assert (workdir / "flags.cfg").is_file() and (workdir / "config.json").is_file()
    return on_disk


def best_test_accuracy(app, workdir: Path, data_dir: Path, summary: dict) -> float:
    """Accuracy of checkpoints/best.npz on the test split, recomputed from the files."""
    model = train.build_model(app.RECIPE_CLASS, summary["flags"])
    like = dict(zip(("params", "state"), model.init(jax.random.key(0)), strict=True))
    like["mean_image"] = np.zeros(model.input_shape, np.float32)  # the run's preprocessing
    tree, meta = load_checkpoint(workdir / "checkpoints" / "best.npz", like)
    assert meta["best_epoch"] == summary["best_epoch"]
    data = get_cifar10_data(data_dir, num_training=40, num_validation=10, num_test=10)
    np.testing.assert_array_equal(tree["mean_image"], data["mean_image"])
    assert meta["classifier"]["classes"] == list(data["label_names"])
    scores, _ = model.apply(tree["params"], tree["state"], data["X_test"], train=False)
    return float(np.mean(np.argmax(np.asarray(scores), axis=1) == data["y_test"]))


def test_vgg_cifar_end_to_end(tmp_path, fake_cifar_dir):
    workdir = tmp_path / "run"
    summary = run_in_process(
        vgg_cifar, workdir, fake_cifar_dir, *TINY_VGG, "--num_epochs=2", "--noplot_every_epoch"
    )
    check_workdir(workdir, summary, epochs=2, iterations_per_epoch=5)
    assert summary["model"]["class"] == "VGGNet" and summary["model"]["num_filters"] == [4, 8]
    assert best_test_accuracy(vgg_cifar, workdir, fake_cifar_dir, summary) == summary["test_acc"]


def test_three_layer_cifar_end_to_end_keeps_the_last_checkpoints_and_noplots_draws_none(
    tmp_path, fake_cifar_dir
):
    workdir = tmp_path / "run"
    summary = run_in_process(
        three_layer_cifar, workdir, fake_cifar_dir, *TINY_THREE, "--num_epochs=4",
        "--noplots", "--layers=reference",
    )  # fmt: skip
    check_workdir(workdir, summary, epochs=4, iterations_per_epoch=5, plots=False)
    assert summary["model"]["class"] == "ThreeLayerConvNet"
    assert summary["model"]["layers"] == "reference"
    got = best_test_accuracy(three_layer_cifar, workdir, fake_cifar_dir, summary)
    assert got == summary["test_acc"]


def test_vgg_cifar_cli_with_a_flagfile(tmp_path, fake_cifar_dir):
    """The real command line, in a fresh interpreter: flagfile + overrides + --overwrite."""
    flagfile = tmp_path / "tiny.cfg"
    flagfile.write_text("\n".join(["# a tiny run", *TINY, *TINY_VGG, "--num_epochs=1"]) + "\n")
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "summary.json").write_text("{}")  # an earlier run, replaced with --overwrite
    proc = subprocess.run(
        [PYTHON, "-m", "experiments.vgg_cifar", f"--flagfile={flagfile}",
         f"--data_dir={fake_cifar_dir}", f"--workdir={workdir}", "--overwrite", "--augment",
         "--keep_checkpoints=0"],
        capture_output=True, text=True, timeout=240, cwd=ROOT, env=subprocess_env(),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    header = next(line for line in proc.stdout.splitlines() if line.startswith("vgg_cifar"))
    assert header.startswith("vgg_cifar (tiny.cfg): VGGNet, "), header  # app, recipe, model
    assert "cpu (" in header and f"writing to {workdir}" in header
    assert "(Iteration 1 / 5) loss:" in proc.stdout
    assert "(Epoch 1 / 1) train acc:" in proc.stdout
    summary = check_workdir(
        workdir, json.loads((workdir / "summary.json").read_text()), epochs=1,
        iterations_per_epoch=5,
    )  # fmt: skip
    assert summary["flags"]["augment"] is True
    # flags.cfg reproduces the run's flags.
    fv = flags.FlagValues()
    vgg_cifar.define_flags(fv)
    fv(["prog", f"--flagfile={workdir / 'flags.cfg'}", f"--workdir={workdir}", "--overwrite"])
    assert train_flags.config_from_flags(fv, vgg_cifar.NAMES) == summary["flags"]


def test_a_disabled_writer_writes_nothing(tmp_path):
    """Processes other than 0 get a disabled writer: no files, no checkpoints."""
    writer = rundir.RunWriter(tmp_path / "w", enabled=False)
    writer.write_json("a.json", {"x": 1})
    writer.write_text("b.txt", "x")
    writer.append_jsonl("m.jsonl", [{"x": 1}])
    writer.clear()
    assert writer.checkpoint_dir is None
    assert not (tmp_path / "w").exists()
