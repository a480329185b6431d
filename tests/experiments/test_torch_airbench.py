"""The PyTorch port of the airbench94 recipe (experiments.torch_airbench): a tiny run on fake
CIFAR-10 in-process, its results and JSON, its schedule against jcnn's. Skipped without
torch (a benchmark-only dependency)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from absl import flags

torch = pytest.importorskip("torch")

from experiments import torch_airbench  # noqa: E402  (needs torch to be worth testing)

TINY = ["--num_train=32", "--num_test=20", "--batch_size=16", "--num_epochs=2",
        "--num_train_samples=8", "--widths=4,8,8"]  # fmt: skip


def _run(data_dir: Path, *args: str) -> dict:
    fv = flags.FlagValues()
    torch_airbench.define_flags(fv)
    threads = f"--threads={torch.get_num_threads()}"  # the test process's setting, unchanged
    argv = fv(["prog", f"--data_dir={data_dir}", threads, *TINY, *args])
    return torch_airbench.run(argv, fv=fv)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_a_tiny_run_reports_both_accuracies_and_writes_them(
    fake_cifar_dir, tmp_path, capsys, dtype
):
    out = tmp_path / "result.json"
    result = _run(fake_cifar_dir, f"--json_out={out}", f"--compute_dtype={dtype}")
    assert json.loads(out.read_text()) == result
    for key in ("test_acc", "test_acc_without_tta"):
        assert 0.0 <= result[key] <= 1.0
    assert result["train_time_s"] > 0 and result["wall_time_s"] >= result["train_time_s"]
    assert result["images_per_s"] > 0
    assert result["iterations"] == 4 and result["iterations_per_epoch"] == 2
    assert result["compute_dtype"] == dtype and result["num_train"] == 32
    history = result["history"]  # after update 1, then after each epoch
    assert [h["iteration"] for h in history] == [1, 2, 4]
    assert [h["epoch"] for h in history] == [0, 1, 2]
    assert all(math.isfinite(h["loss"]) and math.isfinite(h["mean_loss"]) for h in history)
    assert math.isfinite(result["final_loss"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1].startswith("test acc ") and "training images/s" in lines[-1]
    assert sum(line.startswith("(epoch ") for line in lines) == 2


def test_the_schedule_and_flip_bits_are_jcnns():
    import jax.numpy as jnp

    from jcnn.augment import alternating_flip_crop
    from jcnn.optim_airbench import warmup_linear_decay

    total = 480
    theirs = warmup_linear_decay(total)
    t = np.arange(total + 1)
    ours = [torch_airbench.lr_shape(int(i), total) for i in t]
    np.testing.assert_allclose(ours, np.asarray(theirs(jnp.asarray(t))), rtol=1e-6)
    # With no translation, jcnn's augmentation of epoch 0 mirrors exactly the images whose
    # bit is set.
    import jax

    X = np.random.default_rng(0).standard_normal((64, 3, 8, 8)).astype(np.float32)
    jcnn_out = alternating_flip_crop(jax.random.key(0), X, step=0, steps_per_epoch=1, pad=0)
    flipped = np.all(np.asarray(jcnn_out) == X[..., ::-1], axis=(1, 2, 3))
    np.testing.assert_array_equal(torch_airbench.flip_bits(X), flipped)


def test_bad_settings_stop_in_one_line(fake_cifar_dir):
    with pytest.raises(SystemExit, match="FATAL --batch_size=64 is larger than --num_train=32"):
        _run(fake_cifar_dir, "--batch_size=64")
    with pytest.raises(SystemExit, match="FATAL --widths=4,8: give three positive ints"):
        _run(fake_cifar_dir, "--widths=4,8")


def test_without_torch_the_app_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    with pytest.raises(SystemExit, match=r"FATAL torch is not importable .*pip install torch=="):
        torch_airbench.import_torch()
