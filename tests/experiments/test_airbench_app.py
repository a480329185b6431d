"""experiments.airbench_cifar end to end on a tiny fake CIFAR-10: no validation split, test
accuracy with and without test-time augmentation, and a crashed run resumed to the same
result."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from absl import flags

from experiments import airbench_cifar, train, train_flags
from tests.experiments.util import fatal_message

TINY = [
    "--flagfile=experiments/configs/airbench94.cfg", "--num_train=40", "--num_val=0",
    "--num_test=20", "--batch_size=8", "--num_epochs=2", "--widths=4,8,8", "--print_every=2",
    "--num_train_samples=10", "--keep_checkpoints=3", "--noplots",
]  # fmt: skip


def _run(workdir: Path, data_dir: Path, *args: str) -> dict:
    fv = flags.FlagValues()
    airbench_cifar.define_flags(fv)
    argv = fv(["prog", f"--workdir={workdir}", f"--data_dir={data_dir}", *TINY, *args])
    return train.main(argv, recipe_class=airbench_cifar.RECIPE_CLASS, fv=fv)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, fake_cifar_dir) -> tuple[Path, dict, str]:
    """The recipe run once with the tiny settings: ``(workdir, summary, what it printed)``
    (the tests that read it leave the workdir as it is)."""
    workdir, out = tmp_path_factory.mktemp("airbench") / "run", io.StringIO()
    with contextlib.redirect_stdout(out):
        summary = _run(workdir, fake_cifar_dir)
    return workdir, summary, out.getvalue()


def test_the_recipe_trains_without_validation_and_reports_test_accuracy_both_ways(finished):
    workdir, summary, out = finished
    assert "(Epoch 2 / 2) train acc: " in out and "val_acc" not in out  # no split, no nan
    assert "no validation split: the final parameters (epoch 2); test acc: " in out
    header = next(line for line in out.splitlines() if "; writing to " in line)
    assert "AirbenchNet" in header and "; cpu (" in header and " cores; " in header
    assert "kernels) x 1; " in header or "XLA only) x 1; " in header
    assert summary["iterations"] == 2 * 5
    assert summary["best_val_acc"] is None and summary["best_epoch"] == 2  # NaN: no val split
    assert 0.0 <= summary["test_acc"] <= 1.0 and 0.0 <= summary["test_acc_without_tta"] <= 1.0
    lines = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    checks = [r for r in lines if "train_acc" in r]
    assert [r["epoch"] for r in checks] == [0, 1, 2]
    assert all(r["val_acc"] is None for r in checks)
    started = json.loads((workdir / "config.json").read_text())
    assert started["model"]["class"] == "AirbenchNet"


def test_the_recipe_trains_in_bfloat16_with_float32_parameters(fake_cifar_dir, tmp_path):
    summary = _run(tmp_path / "run", fake_cifar_dir, "--compute_dtype=bfloat16")
    assert summary["iterations"] == 2 * 5
    assert 0.0 <= summary["test_acc"] <= 1.0 and 0.0 <= summary["test_acc_without_tta"] <= 1.0
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in lines if "loss" in r]
    assert losses and all(np.isfinite(losses))
    started = json.loads((tmp_path / "run" / "config.json").read_text())
    assert started["flags"]["compute_dtype"] == "bfloat16"


def test_the_muon_recipe_trains_its_filters_with_muon(fake_cifar_dir, tmp_path):
    muon_flags = ("--optimizer=muon", "--learning_rate=6.5", "--lookahead_every=0")
    summary = _run(tmp_path / "run", fake_cifar_dir, *muon_flags)
    assert summary["iterations"] == 2 * 5
    assert 0.0 <= summary["test_acc"] <= 1.0
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in lines if "loss" in r]
    assert losses and all(np.isfinite(losses))
    started = json.loads((tmp_path / "run" / "config.json").read_text())
    assert started["flags"]["optimizer"] == "muon"


def test_data_selection_trains_on_the_proxys_rows_and_checkpoints_the_proxy(
    fake_cifar_dir, tmp_path
):
    selection = ("--select_keep=4", "--select_proxy_widths=2,4,4", "--select_proxy_every=2")
    summary = _run(tmp_path / "run", fake_cifar_dir, *selection)
    assert summary["iterations"] == 2 * 5 and 0.0 <= summary["test_acc"] <= 1.0
    with np.load(tmp_path / "run" / "checkpoints" / "epoch_002.npz") as saved:
        proxy = [k for k in saved.files if k.startswith("proxy/")]
        assert "proxy/step" in proxy and any(k.startswith("proxy/params/conv3_2") for k in proxy)
        assert int(saved["proxy/step"]) == 5  # updates 0, 2, ..., 8
        assert saved["proxy/params/conv1_1/w"].shape[0] == 2
    started = json.loads((tmp_path / "run" / "config.json").read_text())
    assert started["flags"]["select_keep"] == 4


def test_a_crashed_run_resumes_to_the_same_result(finished, fake_cifar_dir, tmp_path):
    whole_dir, whole, _ = finished
    crashed = tmp_path / "crashed"
    shutil.copytree(whole_dir, crashed)
    # make it look killed after epoch 1: no epoch-2 checkpoint, no final files
    for name in ("epoch_002.npz", "epoch_002.json", "best.npz", "best.json"):
        (crashed / "checkpoints" / name).unlink()
    (crashed / "summary.json").unlink()
    shutil.rmtree(crashed / "checkpoints" / "tmp", ignore_errors=True)
    resumed = _run(crashed, fake_cifar_dir)
    assert resumed["test_acc"] == whole["test_acc"]
    assert resumed["test_acc_without_tta"] == whole["test_acc_without_tta"]
    assert np.isclose(resumed["final_loss"], whole["final_loss"], rtol=0, atol=0)


def test_evaluate_measures_a_finished_run_again_with_each_test_time_augmentation(
    finished, fake_cifar_dir, tmp_path
):
    from experiments import evaluate

    run, summary, _ = finished
    copy = tmp_path / "run"  # evaluate records its result in the workdir: a copy of its own
    shutil.copytree(run, copy)
    fv = flags.FlagValues()
    evaluate.define_flags(fv)
    workdir = f"--workdir={copy}"
    fv(["prog", workdir, f"--data_dir={fake_cifar_dir}", "--confidences=0,1"])
    result = evaluate.run(fv)
    assert result["num_val"] == 0 and result["val_acc"] is None
    assert result["test_acc"] == summary["test_acc_without_tta"]  # plain
    assert result["test_acc_flip_shift"] == summary["test_acc"]  # the run's own augmentation
    assert summary["test_time_augmented"] == 1.0  # by default, every test image
    assert 0.0 <= result["test_acc_flip"] <= 1.0
    none, every = result["where_unsure"]
    assert (none["augmented"], none["test_acc"]) == (0.0, result["test_acc"])
    assert (every["augmented"], every["test_acc"]) == (1.0, summary["test_acc"])
    table = evaluate.format_result(result)
    assert "| test-time flip and shifts | n/a |" in table
    assert "| 1.0 | " in table


def test_flips_flag_chooses_alternating_or_random_flips_both_with_reflect_translation():
    from jcnn.augment import alternating_flip_crop, random_crop_flip

    data = {"X_train": np.random.default_rng(0).normal(size=(40, 3, 32, 32)).astype(np.float32)}
    data["y_train"] = np.arange(40) % 10
    chosen = {}
    for flips in ("alternating", "random"):
        fv = flags.FlagValues()
        airbench_cifar.define_flags(fv)
        fv(["prog", *TINY, "--whiten_images=40", f"--flips={flips}"])
        recipe = train_flags.recipe_from_flags(fv, airbench_cifar.RECIPE_CLASS)
        model = recipe.build_model()
        chosen[flips] = recipe.training_pieces(model, data)["augment"]
    assert chosen["alternating"].func is alternating_flip_crop
    assert chosen["alternating"].keywords == {"steps_per_epoch": 5, "pad": 2}
    assert chosen["random"].func is random_crop_flip
    assert chosen["random"].keywords == {"pad": 2, "padding": "reflect"}
    fv = flags.FlagValues()
    airbench_cifar.define_flags(fv)
    fv(["prog", *TINY, "--whiten_images=40", "--cutout=8"])
    recipe = train_flags.recipe_from_flags(fv, airbench_cifar.RECIPE_CLASS)
    augment = recipe.training_pieces(recipe.build_model(), data)["augment"]
    assert augment.keywords == {"steps_per_epoch": 5, "pad": 2, "cutout": 8}
    fv = flags.FlagValues()
    airbench_cifar.define_flags(fv)
    with pytest.raises(flags.IllegalFlagValueError, match="flips"):
        fv(["prog", "--flips=sometimes"])


def test_fewer_training_images_than_one_batch_stop_in_one_line(fake_cifar_dir, tmp_path):
    with pytest.raises(train.UsageFailure) as info:
        _run(tmp_path / "run", fake_cifar_dir, "--batch_size=64")  # 40 training images
    message = fatal_message(str(info.value.code))
    assert "flags: --batch_size=64 is larger than the 40 training images" in message  # as typed
    assert not (tmp_path / "run" / "checkpoints").exists() or not any(
        (tmp_path / "run" / "checkpoints").iterdir()
    )


@pytest.mark.parametrize("flag", ["--augment_pad=40", "--test_time_translate=32"])
def test_shifts_as_large_as_the_images_stop_in_one_line_naming_the_flag(
    fake_cifar_dir, tmp_path, flag
):
    """--augment_pad=40 ended in a 57-line traceback from inside the jitted step."""
    with pytest.raises(train.UsageFailure) as info:
        _run(tmp_path / "run", fake_cifar_dir, flag)
    message = fatal_message(str(info.value.code))
    assert f"{flag} must be smaller than the images (32, 32)" in message, message
