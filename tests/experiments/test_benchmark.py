"""The benchmark harness: structure of its output, its bookkeeping, and the torch twins.

Nothing here asserts on timings: timings live in the benchmark's output, not in tests.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from experiments.benchmark import machine, report, spawn
from experiments.benchmark.options import RESULT_PREFIX

ROOT = Path(__file__).resolve().parents[2]
HAVE_TORCH = importlib.util.find_spec("torch") is not None
needs_torch = pytest.mark.skipif(not HAVE_TORCH, reason="torch is not importable")


def _run(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, "-m", "experiments.benchmark", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=env,
    )


def _check_record(rec: dict, *, model: str, impl: str, repeats: int) -> None:
    assert rec["ok"] is True, rec.get("error")
    assert (rec["model"], rec["impl"]) == (model, impl)
    assert len(rec["step_s"]) == repeats
    assert all(t > 0 for t in rec["step_s"])
    assert rec["min_s"] <= rec["median_s"]
    assert rec["first_call_s"] > 0
    assert rec["loss_finite"] and math.isfinite(rec["first_loss"])
    assert rec["n_params"] > 0
    assert rec["cpu_count"] >= 1
    assert "model_kwargs" in rec["platform"]


@pytest.mark.parametrize("setting, tuned", [("all", True), ("none", False)])
def test_huge_pages_is_one_setting_for_every_worker(setting, tuned):
    """--huge_pages=all tunes every worker's heap (PyTorch's too), none no worker's; the
    record says what the worker had."""
    proc = _run(["--worker", "--tiny", "--models=three_layer", "--impls=jcnn", "--repeats=1",
                 "--warmup=0", f"--huge_pages={setting}"])  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_PREFIX))
    assert (json.loads(line[len(RESULT_PREFIX) :])["huge_pages"] != "not called") == tuned


def test_worker_vgg_tiny():
    """A worker times one (model, impl, batch) and prints one JSON line."""
    proc = _run(["--worker", "--tiny", "--models=vgg", "--impls=jcnn", "--repeats=2", "--warmup=1"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_PREFIX)]
    assert len(lines) == 1
    rec = json.loads(lines[0][len(RESULT_PREFIX) :])
    _check_record(rec, model="vgg", impl="jcnn", repeats=2)
    assert rec["huge_pages"] != "not called"  # jcnn's workers tune their heap by default
    kwargs = rec["platform"]["model_kwargs"]
    assert kwargs["num_filters"] == [4, 4] and kwargs["dropout"] == 0.2
    assert kwargs["layers"] == "jcnn"


def test_hvp_step_times_the_same_hessian_vector_product_for_jcnn_and_its_twin(tmp_path):
    """``--step=hvp`` times jvp of grad; jcnn and the autodiff twin give the same product (its
    norm is what the record's loss holds), and torch impls are refused in one line."""
    out = tmp_path / "bench.json"
    proc = _run(
        ["--tiny", "--models=three_layer", "--impls=jcnn,reference", "--step=hvp",
         "--rounds=1", "--repeats=2", "--warmup=0", "--quiet_max_wait=0", f"--json_out={out}"]
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "one step = a Hessian-vector product" in proc.stdout
    data = json.loads(out.read_text())
    assert data["meta"]["step"] == "hvp"
    runs = {r["impl"]: r for r in data["runs"]}
    for impl in ("jcnn", "reference"):
        _check_record(runs[impl], model="three_layer", impl=impl, repeats=2)
    norm = runs["reference"]["first_loss"]
    assert norm > 0 and runs["jcnn"]["first_loss"] == pytest.approx(norm, rel=1e-3)
    refused = _run(["--tiny", "--models=vgg", "--impls=jcnn,solver", "--step=hvp"])
    assert refused.returncode != 0
    assert "--step=hvp times JAX steps only" in refused.stderr


def test_jvp_step_times_forward_mode_on_the_twin_and_refuses_jcnns_layers(tmp_path):
    out = tmp_path / "bench.json"
    proc = _run(
        ["--tiny", "--models=vgg", "--impls=reference", "--step=jvp", "--rounds=1",
         "--repeats=2", "--warmup=0", "--quiet_max_wait=0", f"--json_out={out}"]
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "one step = a directional derivative" in proc.stdout
    (run,) = json.loads(out.read_text())["runs"]
    _check_record(run, model="vgg", impl="reference", repeats=2)
    refused = _run(["--tiny", "--models=vgg", "--impls=jcnn", "--step=jvp"])
    assert refused.returncode != 0
    assert "no forward mode through jcnn's custom_vjp layers" in refused.stderr


def test_bf16_impls_compute_in_bfloat16_and_no_onednn_turns_only_the_convolutions_off(
    airbench_run,
):
    """``jcnn_bf16`` trains the same model with the network in bfloat16 (its first loss is
    float32's to bfloat16 precision, not equal); ``jcnn_no_onednn`` keeps jcnn's other
    kernels; ``torch_bf16`` runs under autocast when torch is there."""
    stdout, data = airbench_run
    assert "| airbench | 4 | jcnn_bf16/jcnn |" in stdout
    assert "| airbench | 4 | jcnn/jcnn_no_onednn |" in stdout
    runs = {r["impl"]: r for r in data["runs"]}
    assert runs["jcnn_no_onednn"]["platform"]["jcnn_onednn"] == "opted-out"
    assert runs["jcnn_no_onednn"]["platform"]["jcnn_native"] != "opted-out"
    assert runs["jcnn_no_onednn"]["first_loss"] == pytest.approx(
        runs["jcnn"]["first_loss"], rel=1e-5
    )
    bf16, f32 = runs["jcnn_bf16"]["first_loss"], runs["jcnn"]["first_loss"]
    assert bf16 != f32 and bf16 == pytest.approx(f32, rel=2e-2)
    if HAVE_TORCH:
        assert "| airbench | 4 | jcnn_bf16/torch_bf16 |" in stdout
        t16, t32 = runs["torch_bf16"]["first_loss"], runs["torch"]["first_loss"]
        assert t16 != t32 and t16 == pytest.approx(t32, rel=2e-2)


def test_solver_worker_times_the_second_epoch_of_a_real_solver_run():
    proc = _run(
        [
            "--worker",
            "--tiny",
            "--models=three_layer",
            "--impls=solver",
            "--solver_num_train=40",
            "--solver_augment",
        ]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_PREFIX))
    rec = json.loads(line[len(RESULT_PREFIX) :])
    _check_record(rec, model="three_layer", impl="solver", repeats=1)
    assert rec["iterations_per_epoch"] == 10  # 40 images, batch 4
    # The step is the epoch's training time per iteration; the whole epoch adds the checks.
    assert rec["step_s"][0] == pytest.approx(rec["epoch_train_s"] / 10)
    assert 0 < rec["epoch_train_s"] < rec["epoch_s"]
    assert rec["platform"]["augment"] is True and rec["platform"]["num_train"] == 40
    assert rec["platform"]["model_kwargs"]["layers"] == "jcnn"


def test_worker_rejects_several_impls():
    proc = _run(["--worker", "--tiny", "--models=vgg", "--impls=jcnn,reference"])
    assert proc.returncode != 0
    assert "exactly one" in proc.stderr


def _fake(model, impl, rnd, median, ok=True):
    rec = {"model": model, "impl": impl, "batch_size": 50, "round": rnd, "ok": ok}
    if ok:
        rec.update(
            step_s=[median * 0.9, median, median * 1.5],
            median_s=median,
            first_call_s=2.0,
            others_cpu_frac=0.0,
            loss_finite=True,
            first_loss=2.3,
        )
    else:
        rec["error"] = "boom"
    return rec


def test_summarise_per_round_ratios():
    records = [
        _fake("vgg", "jcnn", 1, 0.10),
        _fake("vgg", "torch", 1, 0.20),
        _fake("vgg", "reference", 1, 0.40),
        _fake("vgg", "jcnn", 2, 0.20),
        _fake("vgg", "torch", 2, 0.20),
        _fake("vgg", "reference", 2, 0.30),
        _fake("vgg", "jcnn", 3, 0.10),
        _fake("vgg", "torch", 3, 0.30),
        _fake("vgg", "reference", 3, 0.0, ok=False),
    ]
    summaries, ratios = report.summarise(records)
    by_impl = {s["impl"]: s for s in summaries}
    assert by_impl["jcnn"]["rounds_ok"] == 3 and by_impl["jcnn"]["steps"] == 9
    assert by_impl["jcnn"]["min_s"] == pytest.approx(0.09)
    # Pooled steps: .09 .09 .10 .10 .15 .15 .18 .20 .30.
    assert by_impl["jcnn"]["median_s"] == pytest.approx(0.15)
    assert by_impl["jcnn"]["img_per_s"] == pytest.approx(50 / 0.15)
    assert by_impl["reference"]["rounds_failed"] == 1 and by_impl["reference"]["errors"] == ["boom"]

    r = {x["pair"]: x for x in ratios}
    # Throughput ratio per round = torch time / jcnn time; then the median over rounds.
    assert r["jcnn/torch"]["per_round"] == pytest.approx([2.0, 1.0, 3.0])
    assert r["jcnn/torch"]["median"] == pytest.approx(2.0)
    assert (r["jcnn/torch"]["min"], r["jcnn/torch"]["max"]) == pytest.approx((1.0, 3.0))
    # Round 3 has no reference result: only rounds with both sides count.
    assert r["jcnn/reference"]["per_round"] == pytest.approx([4.0, 1.5])
    assert r["reference/torch"]["per_round"] == pytest.approx([0.5, 2 / 3])
    assert "jcnn/torch_compile" not in r

    table = report.format_tables(summaries, ratios)
    assert "| vgg | 50 | jcnn | 0.0900 | 0.1500 | 333 | 2.00 | 3 |" in table
    assert "| vgg | 50 | reference |" in table and "(1 failed)" in table
    assert "| vgg | 50 | jcnn/torch | 2.00 | 1.00–3.00 | 3 |" in table


def test_impl_order_rotates():
    impls = ["jcnn", "reference", "torch"]
    assert spawn.impl_order(impls, 1, "rotate") == impls
    assert spawn.impl_order(impls, 2, "rotate") == ["reference", "torch", "jcnn"]
    assert spawn.impl_order(impls, 4, "rotate") == impls
    assert spawn.impl_order(impls, 2, "fixed") == impls


def test_wait_for_quiet(monkeypatch):
    loads = iter([3.0, 2.0, 0.4])
    monkeypatch.setattr(machine, "read_loadavg", lambda: next(loads))
    slept = []
    q = machine.wait_for_quiet(0.5, max_wait=1e6, poll=7, sleep=slept.append)
    assert q["quiet"] and q["load_start"] == 3.0 and q["load_end"] == 0.4
    assert slept == [7, 7]

    monkeypatch.setattr(machine, "read_loadavg", lambda: 9.0)
    q = machine.wait_for_quiet(0.5, max_wait=0, sleep=slept.append)
    assert not q["quiet"] and q["load_end"] == 9.0


# ------------------------------------------------------------------ the torch twins


def _jcnn_vs_torch(model, layer_names, x, y):
    """Loss and weight gradients of a jcnn model and of its torch twin on the same weights."""
    import jax
    import torch

    from experiments import torch_models

    params, state = model.init(jax.random.PRNGKey(0))
    (loss, _), grads = jax.jit(jax.value_and_grad(model.loss, has_aux=True))(params, state, x, y)

    cls = {"ThreeLayerConvNet": torch_models.ThreeLayerConvNet, "VGGNet": torch_models.VGGNet}
    fields = ("input_dim", "num_filters", "filter_size", "num_classes", "weight_scale", "reg")
    kwargs = {f: getattr(model, f) for f in fields}
    if type(model).__name__ == "ThreeLayerConvNet":
        kwargs["hidden_dim"] = model.hidden_dim
    else:
        kwargs.update(blocks=model.blocks, hidden_dims=model.hidden_dims, dropout=model.dropout)
    net = cls[type(model).__name__](**kwargs).double().train()
    torch_models.load_jcnn_params(net, [params[n] for n in layer_names])
    opt = torch_models.make_adam(net, 0.0)
    t_loss = torch_models.train_step(net, opt, torch.from_numpy(x), torch.from_numpy(y).long())

    np.testing.assert_allclose(t_loss.item(), float(loss), rtol=1e-10)
    linear = [m for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    for name, m in zip(layer_names, linear, strict=True):
        g = m.weight.grad.numpy()
        g = g.T if isinstance(m, torch.nn.Linear) else g
        np.testing.assert_allclose(g, np.asarray(grads[name]["w"]), rtol=1e-7, atol=1e-12)
        np.testing.assert_allclose(m.bias.grad.numpy(), np.asarray(grads[name]["b"]), atol=1e-12)


@needs_torch
def test_torch_three_layer_is_the_same_network():
    import jax.numpy as jnp

    from jcnn.models import ThreeLayerConvNet

    model = ThreeLayerConvNet(
        input_dim=(3, 8, 8), num_filters=4, filter_size=3, hidden_dim=6, num_classes=5,
        weight_scale=0.3, reg=0.1, dtype=jnp.float64,
    )  # fmt: skip
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3, 8, 8))
    y = rng.integers(0, 5, size=4)
    _jcnn_vs_torch(model, ["conv1", "fc1", "out"], x, y)


@needs_torch
def test_torch_vgg_is_the_same_network():
    import jax.numpy as jnp

    from jcnn.models import VGGNet

    # dropout=0: the two libraries draw different masks; everything else is compared.
    model = VGGNet(
        input_dim=(3, 8, 8), num_filters=(4, 6), blocks=(2, 1), hidden_dims=(7,), num_classes=5,
        weight_scale=0.3, reg=0.1, dropout=0.0, dtype=jnp.float64,
    )  # fmt: skip
    rng = np.random.default_rng(1)
    x = rng.standard_normal((6, 3, 8, 8))
    y = rng.integers(0, 5, size=6)
    convs, fcs = model.layer_names()
    _jcnn_vs_torch(model, [*convs, *fcs, "out"], x, y)


@needs_torch
def test_torch_vgg_has_the_seed_layers():
    import torch

    from experiments import torch_models
    from experiments.recipes import VGG_SEED

    seed = ("num_filters", "blocks", "hidden_dims", "dropout")
    net = torch_models.VGGNet(**{k: getattr(VGG_SEED, k) for k in seed})
    kinds = [type(m).__name__ for m in net.modules() if not list(m.children())]
    assert kinds.count("Conv2d") == 10 and kinds.count("BatchNorm2d") == 10
    assert kinds.count("MaxPool2d") == 4 and kinds.count("Dropout") == 2
    assert kinds.count("BatchNorm1d") == 2 and kinds.count("Linear") == 3
    assert all(m.momentum == 0.1 for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert net.classifier[1].in_features == 256 * 2 * 2
    out = net.eval()(torch.zeros(2, 3, 32, 32))
    assert out.shape == (2, 10)


# ------------------------------------------------------------------ airbench


AIRBENCH_IMPLS = ["jcnn", "reference", "jcnn_no_native", "jcnn_bf16", "jcnn_no_onednn"] + (
    ["torch", "torch_bf16"] if HAVE_TORCH else []
)


@pytest.fixture(scope="module")
def airbench_run(tmp_path_factory) -> tuple[str, dict]:
    """One tiny airbench benchmark over every JAX impl (and torch's): ``(stdout, JSON)``."""
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    proc = _run(
        ["--tiny", "--models=airbench", f"--impls={','.join(AIRBENCH_IMPLS)}", "--rounds=1",
         "--repeats=2", "--warmup=0", "--quiet_max_wait=0", f"--json_out={out}"]
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout, json.loads(out.read_text())


def test_airbench_end_to_end_tiny(airbench_run):
    """airbench beside the jcnn impls (and torch): the parent spawns one worker per impl and
    writes the table (a row per impl, the ratios) and the JSON (meta, summary, ratios, runs)."""
    stdout, data = airbench_run
    impls = AIRBENCH_IMPLS
    assert "heap on huge pages (jcnn.cpu.tune()) in jcnn's workers only" in stdout
    assert "| model | batch | impl | min s/step | median s/step | img/s | compile s |" in stdout
    for impl in impls:
        assert f"| airbench | 4 | {impl} |" in stdout
    assert "| airbench | 4 | jcnn/reference |" in stdout
    assert "| airbench | 4 | jcnn/jcnn_no_native |" in stdout
    assert "optimiser SGD, Nesterov momentum 0.85" in stdout
    if HAVE_TORCH:
        assert "| airbench | 4 | jcnn/torch |" in stdout

    assert set(data) == {"meta", "summary", "ratios", "runs"}
    meta = data["meta"]
    assert meta["machine"]["cpu_count"] >= 1 and meta["machine"]["versions"]["jax"]
    assert set(meta["quiet"]) >= {"threshold", "waited_s", "load_start", "load_end", "quiet"}
    assert meta["platforms"]["jcnn"]["backend"] and "XLA_FLAGS" in meta["platforms"]["jcnn"]
    if HAVE_TORCH:
        assert meta["platforms"]["torch"]["num_threads"] >= 1
    cfg = meta["models"]["airbench"]
    assert cfg["input_dim"] == [3, 12, 12] and cfg["widths"] == [4, 8, 8]
    assert cfg["label_smoothing"] == 0.2  # the rest at AirbenchNet's defaults (airbench94's)
    assert meta["batch_sizes"] == {"airbench": [4]}
    runs = {r["impl"]: r for r in data["runs"]}
    assert set(runs) == set(impls)
    for impl in impls:
        _check_record(runs[impl], model="airbench", impl=impl, repeats=2)
        # Scores near 0 at the start (head_scale 1/9): the loss is about log(10) everywhere.
        assert abs(runs[impl]["first_loss"] - math.log(10)) < 0.3
    kwargs = runs["jcnn"]["platform"]["model_kwargs"]
    assert kwargs["layers"] == "jcnn" and kwargs["widths"] == [4, 8, 8]
    assert runs["reference"]["platform"]["model_kwargs"]["layers"] == "reference"
    # jcnn_no_native: the same jcnn model with the compiled kernels off (JCNN_NATIVE=0).
    assert runs["jcnn_no_native"]["platform"]["model_kwargs"]["layers"] == "jcnn"
    assert runs["jcnn_no_native"]["platform"]["jcnn_native"] == "opted-out"
    assert runs["jcnn"]["platform"]["jcnn_native"] != "opted-out"
    # Same init key, same data: the three JAX impls start from one loss.
    for impl in ("reference", "jcnn_no_native"):
        np.testing.assert_allclose(runs[impl]["first_loss"], runs["jcnn"]["first_loss"], 1e-4)
    for impl in impls:
        assert runs[impl]["batch_size"] == 4 and runs[impl]["round"] == 1
    for s in data["summary"]:
        assert s["rounds_ok"] == 1 and s["rounds_failed"] == 0 and s["steps"] == 2
        assert s["img_per_s"] == pytest.approx(4 / s["median_s"])
    pairs = {r["pair"]: r for r in data["ratios"]}
    assert "jcnn/reference" in pairs and len(pairs["jcnn/reference"]["per_round"]) == 1


def test_airbench_refuses_the_solver_impl():
    proc = _run(["--tiny", "--models=airbench", "--impls=jcnn,solver", "--quiet_max_wait=0"])
    assert proc.returncode != 0
    assert "the solver impl does not support --models=airbench" in proc.stderr
    assert RESULT_PREFIX not in proc.stdout


def test_airbench_batch_size_is_its_own_unless_given():
    from experiments.benchmark import options

    flag = options.FLAGS["batch_sizes"]
    saved = flag.value
    try:
        flag.value = None
        assert options.batch_sizes("airbench") == [1024]
        assert options.batch_sizes("vgg") == [50] and options.batch_sizes("three_layer") == [50]
        flag.value = ["256", "512"]
        assert options.batch_sizes("airbench") == [256, 512]
    finally:
        flag.value = saved
    assert options.unsupported("airbench", ["jcnn", "torch"]) is None
    assert "solver" in options.unsupported("airbench", ["jcnn", "solver"])
    assert options.unsupported("vgg", ["solver"]) is None


def test_the_benchmarks_airbench_net_is_the_recipes():
    from experiments.benchmark import options
    from experiments.recipes import AIRBENCH94
    from jcnn.models import AirbenchNet

    assert AIRBENCH94.build_model() == AirbenchNet()  # airbench94's net is the model's default
    options.FLAGS(["prog"])
    assert AirbenchNet(**options.model_config("airbench")) == AIRBENCH94.build_model()


@needs_torch
def test_torch_airbench_is_the_same_network():
    """Loss, every gradient and the running statistics of jcnn's AirbenchNet and its torch
    twin on the same parameters (float64)."""
    import jax
    import jax.numpy as jnp
    import torch

    from experiments import torch_models
    from jcnn.models import AirbenchNet

    model = AirbenchNet(input_dim=(3, 16, 16), widths=(4, 8, 8), num_classes=5, dtype=jnp.float64)
    rng = np.random.default_rng(2)
    n = 6
    x = rng.standard_normal((n, 3, 16, 16))
    y = rng.integers(0, 5, size=n)
    params, state = model.init_with_data(jax.random.PRNGKey(0), x)
    # Non-zero shifts and whitening bias, so that each one moves the function.
    params = {
        layer: {
            k: v + 0.1 * rng.standard_normal(v.shape) if k in ("b", "beta") else v
            for k, v in leaves.items()
        }
        for layer, leaves in params.items()
    }
    step = jax.jit(jax.value_and_grad(model.loss, has_aux=True))
    (loss, new_state), grads = step(params, state, x, y)

    fields = ("input_dim", "widths", "whiten_kernel", "num_classes", "head_scale",
              "bn_momentum", "bn_eps", "label_smoothing", "reg")  # fmt: skip
    net = torch_models.AirbenchNet(**{f: getattr(model, f) for f in fields}, train_whiten=True)
    net = net.double().train()
    torch_models.load_jcnn_airbench_params(net, params, state)
    opt = torch_models.make_sgd_nesterov(net, 0.0)
    t_loss = torch_models.train_step(net, opt, torch.from_numpy(x), torch.from_numpy(y).long())

    np.testing.assert_allclose(t_loss.item(), float(loss), rtol=1e-10)

    def close(t_grad, j_grad):
        np.testing.assert_allclose(t_grad.numpy(), np.asarray(j_grad), rtol=1e-7, atol=1e-12)

    close(net.whiten.weight.grad, grads["whiten"]["w"])
    close(net.whiten.bias.grad, grads["whiten"]["b"])
    for name, conv in net.convs.items():
        assert conv.bias is None
        close(conv.weight.grad, grads[name]["w"])
    sizes = model.block_sizes  # (H, W) after the whitening conv, then after each block's pool
    for name, bn in net.norms.items():
        assert bn.weight.grad is None and bool(torch.all(bn.weight == 1))
        close(bn.bias.grad, grads[name]["beta"])
        # Running statistics: jcnn's momentum 0.6 is torch's 0.4; torch's running variance
        # takes the unbiased batch variance (m values per channel), jcnn's the biased one.
        j = new_state[name]
        np.testing.assert_allclose(bn.running_mean.numpy(), np.asarray(j["running_mean"]), 1e-10)
        h, w = sizes[int(name[4])]
        m = n * h * w
        biased = (np.asarray(j["running_var"]) - 0.6) / 0.4
        np.testing.assert_allclose(bn.running_var.numpy(), 0.6 + 0.4 * biased * m / (m - 1), 1e-10)
    close(net.out.weight.grad.T, grads["out"]["w"])

    # Test mode, on the running statistics: the same scores.
    torch_models.load_jcnn_airbench_params(net, params, new_state)
    scores, _ = model.apply(params, new_state, x, train=False)
    with torch.no_grad():
        t_scores = net.eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(t_scores, np.asarray(scores), rtol=1e-9, atol=1e-12)

    # As airbench trains it: the whitening filters and the batchnorm weights frozen.
    frozen = torch_models.AirbenchNet(input_dim=(3, 16, 16), widths=(4, 8, 8))
    trainable = {name for name, p in frozen.named_parameters() if p.requires_grad}
    assert "whiten.weight" not in trainable and "whiten.bias" in trainable
    assert not any(t.startswith("norms.") and t.endswith(".weight") for t in trainable)
    opt = torch_models.make_sgd_nesterov(frozen, 0.1)
    group = opt.param_groups[0]
    assert group["nesterov"] and group["momentum"] == 0.85 and group["weight_decay"] == 0
    assert len(group["params"]) == len(trainable)


def test_bench_selection_times_each_keep_on_the_recipe_s_step():
    import dataclasses

    from experiments import bench_selection, recipes

    recipe = dataclasses.replace(
        recipes.AIRBENCH94, batch_size=8, widths=(4, 8, 8), select_proxy_widths=(2, 2, 2),
        whiten_images=16, num_epochs=1,
    )  # fmt: skip
    times = bench_selection.measure(recipe, [0, 4], rounds=2, steps=2)
    assert list(times) == [0, 4] and all(len(t) == 4 and min(t) > 0 for t in times.values())
