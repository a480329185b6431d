"""Flags of the CIFAR-10 apps: defaults, flagfiles, and bad input caught while parsing.

Each test parses into a fresh ``FlagValues`` (the apps define their flags on whatever
``FlagValues`` they are given), so nothing touches absl's global ``FLAGS``.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from absl import flags

from experiments import (
    airbench_cifar,
    rundir,
    settings,
    three_layer_cifar,
    train,
    train_flags,
    vgg_cifar,
)
from jcnn.models import ThreeLayerConvNet, VGGNet
from tests.experiments.util import PYTHON, ROOT, fatal_messages, subprocess_env, write_fake_cifar

CONFIGS = ROOT / "experiments" / "configs"
APPS = {"vgg": vgg_cifar, "three_layer": three_layer_cifar, "airbench": airbench_cifar}


def parse(app, *args: str) -> flags.FlagValues:
    fv = flags.FlagValues()
    app.define_flags(fv)
    fv(["prog", *args])
    return fv


def config(app, *args: str) -> dict:
    return train_flags.config_from_flags(parse(app, *args), app.NAMES)


# ---------------------------------------------------------------------------- flagfiles


SEED = {
    "num_filters": [64, 64, 128, 256],
    "blocks": [2, 2, 3, 3],
    "hidden_dims": [64, 64],
    "filter_size": 3,
    "dropout": 0.2,
    "reg": 1e-3,
    "weight_scale": 1e-2,
    "update_rule": "adam",
    "learning_rate": 5e-4,
    "lr_decay": 0.95,
    "batch_size": 50,
    "num_epochs": 10,
    "use_batchnorm": True,
    "augment": False,
    "num_train": 49000,
    "num_val": 1000,
}


def test_vgg_seed_flagfile_is_the_seed_run_and_the_default():
    cfg = config(vgg_cifar, f"--flagfile={CONFIGS / 'vgg_seed.cfg'}")
    assert {k: cfg[k] for k in SEED} == SEED
    assert {k: v for k, v in config(vgg_cifar).items() if k in SEED} == SEED
    model = train.build_model(vgg_cifar.RECIPE_CLASS, cfg)
    assert isinstance(model, VGGNet)
    assert model.num_filters == (64, 64, 128, 256) and model.blocks == (2, 2, 3, 3)


def test_three_layer_seed_flagfile_is_the_assignment_run():
    cfg = config(three_layer_cifar, f"--flagfile={CONFIGS / 'three_layer_seed.cfg'}")
    want = {
        "hidden_dim": 500,
        "weight_scale": 1e-3,
        "reg": 1e-3,
        "update_rule": "adam",
        "learning_rate": 1e-3,
        "batch_size": 50,
        "num_epochs": 1,
        "num_filters": 32,
        "filter_size": 7,
    }
    assert {k: cfg[k] for k in want} == want
    assert isinstance(train.build_model(three_layer_cifar.RECIPE_CLASS, cfg), ThreeLayerConvNet)


def test_overfit_small_and_best_flagfiles_parse():
    small = config(vgg_cifar, f"--flagfile={CONFIGS / 'overfit_small.cfg'}")
    assert small["num_train"] == 100 and small["batch_size"] % 4 == 0
    train.build_model(vgg_cifar.RECIPE_CLASS, small)
    best = config(vgg_cifar, f"--flagfile={CONFIGS / 'vgg_best.cfg'}")
    assert best["augment"] and best["weight_scale"] == "he" and best["lr_schedule"] == "cosine"
    train.build_model(vgg_cifar.RECIPE_CLASS, best)


def test_every_config_file_is_a_known_flagfile():
    names = sorted(p.name for p in CONFIGS.glob("*.cfg"))
    assert names == [
        "airbench94.cfg", "airbench94_muon.cfg", "airbench94_muon_fast.cfg",
        "airbench95_muon.cfg", "airbench96_muon.cfg", "overfit_small.cfg",
        "three_layer_seed.cfg", "vgg_best.cfg", "vgg_seed.cfg",
    ]  # fmt: skip


def test_the_airbench_flagfile_parses_with_its_app():
    cfg = config(airbench_cifar, f"--flagfile={CONFIGS / 'airbench94.cfg'}")
    assert cfg["num_val"] == 0 and cfg["batch_size"] == 1024 and cfg["widths"] == [64, 256, 256]
    assert cfg["optimizer"] == "sgd"
    muon = config(airbench_cifar, f"--flagfile={CONFIGS / 'airbench94_muon.cfg'}")
    assert muon["optimizer"] == "muon" and muon["batch_size"] == 2000
    assert muon["lookahead_every"] == 0 and muon["num_epochs"] == 10


def test_the_airbench_app_builds_residual_blocks_from_a_flag():
    fv = parse(airbench_cifar, f"--flagfile={CONFIGS / 'airbench94.cfg'}", "--convs_per_block=3")
    model = train_flags.recipe_from_flags(fv, airbench_cifar.RECIPE_CLASS).build_model()
    assert model.convs_per_block == 3 and "conv3_3" in model.weight_shapes()
    assert not model.gelu_after_add
    fv = parse(airbench_cifar, "--convs_per_block=3", "--gelu_after_add")
    revised = train_flags.recipe_from_flags(fv, airbench_cifar.RECIPE_CLASS).build_model()
    assert revised.gelu_after_add
    with pytest.raises(flags.IllegalFlagValueError, match="convs_per_block"):
        parse(airbench_cifar, "--convs_per_block=1")


def test_later_flags_override_the_flagfile():
    cfg = config(vgg_cifar, f"--flagfile={CONFIGS / 'vgg_seed.cfg'}", "--num_epochs=2")
    assert cfg["num_epochs"] == 2


def test_flagfile_text_round_trips(tmp_path):
    fv = parse(vgg_cifar, "--num_filters=8,16", "--blocks=1,2", "--weight_scale=he", "--augment")
    text = settings.flagfile_text(train_flags.recipe_from_flags(fv, vgg_cifar.RECIPE_CLASS))
    assert "--workdir" not in text and "--num_val_samples" not in text  # unset: left out
    path = tmp_path / "flags.cfg"
    path.write_text(text)
    again = config(vgg_cifar, f"--flagfile={path}")
    want = train_flags.config_from_flags(fv, vgg_cifar.NAMES)
    assert again == want


def test_weight_scale_and_lists():
    cfg = config(
        vgg_cifar, "--weight_scale=HE", "--hidden_dims=", "--num_filters=3,5", "--blocks=1,1"
    )
    assert cfg["weight_scale"] == "he" and cfg["hidden_dims"] == [] and cfg["num_filters"] == [3, 5]
    assert config(vgg_cifar, "--weight_scale=0.05")["weight_scale"] == 0.05


# ---------------------------------------------------------------------------- bad input


BAD = [
    ("vgg", "--learning_rate=-1", "learning_rate"),
    ("vgg", "--learning_rate=0", "learning_rate"),
    ("vgg", "--learning_rate=nan", "learning_rate"),
    ("vgg", "--learning_rate=1e39", "learning_rate"),  # inf in float32
    ("vgg", "--seed=-1", "seed"),
    ("vgg", "--seed=4294967296", "seed"),  # 2**32
    ("vgg", "--coordinator_timeout=0", "coordinator_timeout"),
    ("vgg", "--data_dir=", "data_dir"),  # empty: it read the current folder (a download there)
    ("vgg", "--lr_decay=0", "lr_decay"),
    ("vgg", "--lr_schedule=step", "lr_schedule"),
    ("vgg", "--lr_schedule=cosine", "lr_decay"),  # the app's default --lr_decay is 0.95
    ("vgg", "--warmup_epochs=-1", "warmup_epochs"),
    ("vgg", "--warmup_epochs=10 --num_epochs=10", "warmup_epochs"),
    ("vgg", "--reg=-0.1", "reg"),
    ("vgg", "--label_smoothing=1", "label_smoothing"),
    ("vgg", "--cutout=8", "cutout"),  # without --augment
    ("vgg", "--augment --cutout=-1", "cutout"),
    ("three_layer", "--label_smoothing=-0.1", "label_smoothing"),
    ("vgg", "--dropout=1", "dropout"),
    ("vgg", "--dropout=-0.1", "dropout"),
    ("vgg", "--num_filters=", "num_filters"),
    ("vgg", "--blocks=", "blocks"),
    ("vgg", "--num_filters=64,0", "num_filters"),
    ("vgg", "--num_filters=64,x", "num_filters"),
    ("vgg", "--blocks=2,2", "blocks"),  # 2 stages of blocks, 4 of num_filters
    ("vgg", "--num_filters=8,8,8,8,8,8 --blocks=1,1,1,1,1,1", "num_filters"),  # 32 -> 1 -> 0
    ("vgg", "--filter_size=0", "filter_size"),
    ("vgg", "--batch_size=0", "batch_size"),
    ("vgg", "--micro_batches=0", "micro_batches"),
    ("vgg", "--micro_batches=3", "micro_batches"),  # 3 does not divide the batch of 50
    ("vgg", "--batch_size=-5", "batch_size"),
    ("vgg", "--num_epochs=0", "num_epochs"),
    ("vgg", "--weight_scale=0", "weight_scale"),
    ("vgg", "--weight_scale=xavier", "weight_scale"),
    ("vgg", "--update_rule=adamw", "update_rule"),
    ("vgg", "--layers=torch", "layers"),
    ("vgg", "--conv_impl=fft", "conv_impl"),
    ("vgg", "--num_train=0", "num_train"),
    ("vgg", "--num_train=49500", "num_train"),
    ("vgg", "--num_test=20000", "num_test"),
    ("vgg", "--print_every=0", "print_every"),
    ("vgg", "--augment_pad=-1", "augment_pad"),
    ("vgg", "--unknown_flag=3", "unknown_flag"),
    ("three_layer", "--hidden_dim=0", "hidden_dim"),
    ("three_layer", "--num_filters=0", "num_filters"),
    ("three_layer", "--learning_rate=-1e-3", "learning_rate"),
    ("three_layer", "--dropout=0.5", "dropout"),  # not a flag of this app
    # Shown as typed, not as the float it reads as (inf); nan said "invalid flags: ..." after
    # parsing; inf passed every float setting bounded only from below.
    ("vgg", "--learning_rate=1e400", "--learning_rate=1e400: must be a finite number (too large"),
    ("vgg", "--checkpoint_minutes=nan", "--checkpoint_minutes=nan: must be a finite number"),
    ("airbench", "--weight_decay=inf", "--weight_decay=inf: must be a finite number"),
    ("airbench", "--muon_learning_rate=inf", "--muon_learning_rate=inf"),
    # Ignored silently: the reference layers have one implementation each.
    ("vgg", "--conv_impl=xla --layers=reference", "--conv_impl=xla chooses what runs jcnn's"),
    ("three_layer", "--pool_impl=naive --layers=reference", "--pool_impl=naive"),
    # Said "X_val is empty" after the data was read: these recipes select on validation.
    ("vgg", "--num_val=0", "num_val=0 leaves no validation images"),
    ("three_layer", "--num_val=0", "num_val=0"),
]


@pytest.mark.parametrize("app, args, flag", BAD, ids=[f"{a}:{b}" for a, b, _ in BAD])
def test_bad_flags_fail_while_parsing_naming_the_flag(app, args, flag):
    with pytest.raises(flags.Error) as info:
        parse(APPS[app], *args.split())
    message = str(info.value)
    assert flag in message
    assert "\n" not in message


def test_malformed_flagfiles(tmp_path):
    missing = tmp_path / "missing.cfg"
    with pytest.raises(flags.Error, match="flagfile"):
        parse(vgg_cifar, f"--flagfile={missing}")
    bad_value = tmp_path / "bad_value.cfg"
    bad_value.write_text("--num_epochs=ten\n")
    with pytest.raises(flags.Error, match="num_epochs"):
        parse(vgg_cifar, f"--flagfile={bad_value}")
    no_dashes = tmp_path / "no_dashes.cfg"
    no_dashes.write_text("# comment\nnum_epochs 3\n")
    fv = flags.FlagValues()
    vgg_cifar.define_flags(fv)
    rest = fv(["prog", f"--flagfile={no_dashes}"])
    with pytest.raises(SystemExit, match="unexpected argument.*num_epochs 3"):
        train.main(rest, recipe_class=vgg_cifar.RECIPE_CLASS,
                    fv=fv)  # fmt: skip


def test_finished_run_without_checkpoints_needs_overwrite(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("{}\n")
    (tmp_path / "summary.json").write_text("{}\n")
    fv = parse(vgg_cifar, f"--workdir={tmp_path}", "--data_dir=/nonexistent")
    with pytest.raises(SystemExit, match="holds a finished run and no checkpoint.*--overwrite"):
        train.main(["prog"], recipe_class=vgg_cifar.RECIPE_CLASS,
                    fv=fv)  # fmt: skip
    assert (tmp_path / "summary.json").exists()  # nothing was touched


def test_partial_run_without_checkpoints_starts_over(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("{}\n")  # killed before its first checkpoint
    fv = parse(vgg_cifar, f"--workdir={tmp_path}", "--data_dir=/nonexistent")
    with pytest.raises(SystemExit, match="could not load CIFAR-10"):  # got as far as the data
        train.main(["prog"], recipe_class=vgg_cifar.RECIPE_CLASS,
                    fv=fv)  # fmt: skip
    assert not (tmp_path / "metrics.jsonl").exists()


CLI_BAD = [
    ("experiments.vgg_cifar", ["--learning_rate=-0.1"], "--learning_rate"),
    ("experiments.vgg_cifar", ["--num_filters=64,64", "--blocks=2,2,3"], "blocks"),
    ("experiments.vgg_cifar", ["--nosuchflag"], "nosuchflag"),
    ("experiments.three_layer_cifar", ["--batch_size=0"], "--batch_size"),
]


@pytest.mark.parametrize("module, args, flag", CLI_BAD, ids=[a[0] for _, a, _ in CLI_BAD])
def test_cli_stops_with_one_line_before_loading_data(tmp_path, module, args, flag):
    # The data folder is corrupt: had the app loaded it, it would say so.
    data = write_fake_cifar(tmp_path / "data")
    (data / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"garbage")
    proc = subprocess.run(
        [PYTHON, "-m", module, f"--data_dir={data}", f"--workdir={tmp_path / 'run'}", *args],
        capture_output=True, text=True, timeout=120, cwd=ROOT, env=subprocess_env(),
    )  # fmt: skip
    assert proc.returncode == 1
    errors = fatal_messages(proc.stderr)
    assert len(errors) == 1 and flag in errors[0], proc.stderr
    assert "CIFAR" not in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists()


def test_cli_reports_a_data_problem_in_one_line(tmp_path):
    data = write_fake_cifar(tmp_path / "data")
    (data / "cifar-10-batches-py" / "test_batch").write_bytes(b"garbage")
    proc = subprocess.run(
        [PYTHON, "-m", "experiments.three_layer_cifar", f"--data_dir={data}",
         f"--workdir={tmp_path / 'run'}", "--num_train=40", "--num_val=10"],
        capture_output=True, text=True, timeout=120, cwd=ROOT, env=subprocess_env(),
    )  # fmt: skip
    assert proc.returncode == 1
    errors = fatal_messages(proc.stderr)
    assert len(errors) == 1 and "test_batch" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_default_workdir():
    import datetime as dt

    path = rundir.default_workdir("vgg_cifar", dt.datetime(2024, 5, 6, 7, 8, 9))
    assert path == Path("runs") / "vgg_cifar-20240506-070809"
