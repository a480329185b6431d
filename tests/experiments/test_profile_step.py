"""experiments.profile_step: HLO bookkeeping on known text, and a tiny traced run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from experiments import profile_step as P
from jcnn import native

ROOT = Path(__file__).resolve().parents[2]

HLO = """
%fused_computation.3 (param_0: f32[4]) -> f32[4] {
  %param_0 = f32[4]{0} parameter(0)
  ROOT %neg.1 = f32[4]{0} negate(%param_0)
}
ENTRY %main (p: f32[4]) -> f32[4] {
  %transpose_copy_fusion.17 = f32[64,32,32,50]{3,2,1,0} fusion(%a), kind=kLoop, calls=%f
  %transpose_copy_fusion.2 = f32[64,32,32,50]{3,2,1,0} fusion(%b), kind=kLoop, calls=%f
  %convolution.4 = f32[50,32,32,64]{3,2,1,0} convolution(%c, %d), window={size=3x3}
  ROOT %copy.1 = f32[3,3]{1,0} copy(%e)
}
"""


def test_hlo_ops_names_fusions_by_kind_and_other_ops_by_opcode():
    ops = P.hlo_ops(HLO)
    assert ops["transpose_copy_fusion.17"] == ("transpose_copy_fusion", "f32[64,32,32,50]")
    assert ops["convolution.4"] == ("convolution", "f32[50,32,32,64]")
    assert ops["copy.1"] == ("copy", "f32[3,3]")
    assert ops["neg.1"] == ("negate", "f32[4]")


def test_op_times_sums_per_kind_and_shape_per_step_and_ignores_other_events():
    events = [
        {"ph": "X", "name": "transpose_copy_fusion.17", "dur": 3000},
        {"ph": "X", "name": "transpose_copy_fusion.2", "dur": 1000},
        {"ph": "X", "name": "convolution.4", "dur": 500},
        {"ph": "X", "name": "ThunkExecutor::Execute", "dur": 99000},  # not an HLO op
        {"ph": "i", "name": "copy.1"},  # an instant, not a duration
    ]
    rows = P.op_times(events, P.hlo_ops(HLO), steps=2)
    assert rows[0] == {
        "kind": "transpose_copy_fusion",
        "shape": "f32[64,32,32,50]",
        "ms_per_step": 2.0,
        "ops_per_step": 1.0,
    }
    assert rows[1]["kind"] == "convolution" and rows[1]["ms_per_step"] == pytest.approx(0.25)
    assert len(rows) == 2


def test_tiny_traced_run_prints_the_table(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = tmp_path / "profile.json"
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.profile_step", "--models=vgg", "--tiny",
         "--by=op", "--steps=2", f"--json_out={out}"],
        capture_output=True, text=True, timeout=300, cwd=ROOT, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "vgg, jcnn, batch 4: median step" in proc.stdout and "while traced" in proc.stdout
    assert "| operation | output shape | ms/step |" in proc.stdout
    # XLA's convolutions, or oneDNN's custom calls named by their target
    conv = "jcnn_conv_forward" if native.load("onednn") else "convolution"
    assert f"| {conv} | f32[" in proc.stdout
    import json

    data = json.loads(out.read_text())
    assert data["model"] == "vgg" and data["ops"] and data["step_ms"] > 0 < data["traced_step_ms"]


def test_tiny_layer_run_prints_each_call_for_both_impls(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = tmp_path / "layers.json"
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.profile_step", "--models=vgg", "--tiny",
         "--steps=2", f"--json_out={out}"],
        capture_output=True, text=True, timeout=300, cwd=ROOT, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "vgg, batch 4, float32: median step" in proc.stdout and "ms on reference" in proc.stdout
    assert "| layer call | x | jcnn | reference | reference ÷ jcnn |" in proc.stdout
    for row in ("| conv_bn_relu(4x8x8x3, 4x3x3x3", "|   of which conv2d |", "| max_pool2d("):
        assert row in proc.stdout
    assert "jcnn: layer calls" in proc.stdout and "reference: layer calls" in proc.stdout
    import json

    data = json.loads(out.read_text())
    assert data["by"] == "layer" and set(data["step_ms"]) == {"jcnn", "reference"}
    assert all(r["jcnn_ms"] > 0 and r["reference_ms"] > 0 for r in data["layers"])


def test_record_layer_calls_counts_the_models_own_calls_and_restores_the_module():
    import jax
    import jax.numpy as jnp

    import jcnn.layers as L
    from jcnn.models import VGGNet

    net = VGGNet(
        input_dim=(3, 8, 8), num_filters=(4, 4), blocks=(2, 1), hidden_dims=(8,), dropout=0.5
    )
    params, state = net.init(jax.random.PRNGKey(0))
    before = {name: getattr(L, name) for name in L.__all__}
    X = jnp.ones((2, 3, 8, 8))
    calls = P.record_layer_calls(net, params, state, X, jnp.array([0, 1]), jax.random.PRNGKey(1))
    assert {name: getattr(L, name) for name in L.__all__} == before
    counts = {c.describe(): c.count for c in calls}
    # conv1_1 (3 -> 4 channels), conv1_2 (4 -> 4 at 8x8), conv2_1 (4 -> 4 at 4x4): all distinct.
    assert [c.name for c in calls] == [
        "conv_bn_relu", "conv_bn_relu", "max_pool2d", "conv_bn_relu", "max_pool2d",
        "affine_bn_relu", "dropout", "affine", "softmax_loss",
    ]  # fmt: skip
    assert sum(counts.values()) == len(calls)  # each call once per forward pass here
    assert calls[1].args[0].shape == (2, 8, 8, 4)  # the real activations, NHWC inside


def test_record_layer_calls_in_bfloat16_records_the_bfloat16_activations():
    import jax
    import jax.numpy as jnp

    from jcnn.models import AirbenchNet

    net = AirbenchNet(input_dim=(3, 8, 8), widths=(4,))
    params, state = net.init(jax.random.PRNGKey(0))
    X, y = jnp.ones((2, 3, 8, 8)), jnp.array([0, 1])
    calls = P.record_layer_calls(
        net, params, state, X, y, jax.random.PRNGKey(1), compute_dtype="bfloat16"
    )
    pools = [c for c in calls if c.name == "max_pool2d"]
    assert pools and all(c.args[0].dtype == jnp.bfloat16 for c in pools)
    plain = P.record_layer_calls(net, params, state, X, y, jax.random.PRNGKey(1))
    assert all(c.args[0].dtype == jnp.float32 for c in plain if c.name == "max_pool2d")


def test_record_layer_calls_restores_the_module_when_the_model_fails():
    import jax
    import jax.numpy as jnp

    import jcnn.layers as L
    from jcnn.models import VGGNet

    net = VGGNet(input_dim=(3, 8, 8), num_filters=(4,), blocks=(1,), hidden_dims=())
    params, state = net.init(jax.random.PRNGKey(0))
    before = {name: getattr(L, name) for name in L.__all__}
    with pytest.raises(ValueError, match="y must have shape"):
        P.record_layer_calls(net, params, state, jnp.ones((2, 3, 8, 8)), jnp.array([0]), None)
    assert {name: getattr(L, name) for name in L.__all__} == before


def test_repeated_calls_are_counted_once_per_signature():
    import jax
    import jax.numpy as jnp

    from jcnn.models import VGGNet

    net = VGGNet(input_dim=(3, 8, 8), num_filters=(4,), blocks=(3,), hidden_dims=())
    params, state = net.init(jax.random.PRNGKey(0))
    calls = P.record_layer_calls(
        net, params, state, jnp.ones((2, 3, 8, 8)), jnp.array([0, 1]), None
    )
    convs = [c for c in calls if c.name == "conv_bn_relu"]
    assert [c.count for c in convs] == [1, 2]  # 3 -> 4 channels once, then 4 -> 4 twice


def test_forward_backward_is_the_vjp_of_the_first_output_against_a_fixed_cotangent():
    import jax
    import jax.numpy as jnp

    import jcnn.reference as R

    x = jax.random.normal(jax.random.PRNGKey(0), (3, 4))
    w = jax.random.normal(jax.random.PRNGKey(1), (4, 5))
    b = jnp.zeros(5)
    call = P.LayerCall("affine", (x, w, b), {})
    step, floats = P.forward_backward(R.affine, call)
    (value, grads) = step(*floats)
    ct = jax.random.normal(jax.random.PRNGKey(0), (3, 5))
    assert jnp.allclose(value, jnp.vdot(x @ w + b, ct), rtol=1e-5)
    assert jnp.allclose(grads[0], ct @ w.T, rtol=1e-5)
    assert jnp.allclose(grads[1], x.T @ ct, rtol=1e-5)


def test_layer_mode_refuses_impls():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.profile_step", "--models=vgg", "--tiny",
         "--impls=reference"],
        capture_output=True, text=True, timeout=120, cwd=ROOT, env=env,
    )  # fmt: skip
    assert proc.returncode != 0 and "--impls is for --by=op" in proc.stderr


def test_refuses_several_models():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.profile_step", "--tiny"],
        capture_output=True, text=True, timeout=120, cwd=ROOT, env=env,
    )  # fmt: skip
    assert proc.returncode != 0 and "exactly one" in proc.stderr


def test_a_custom_call_is_named_by_its_target():
    hlo = (
        "  ROOT %ffi_call.1 = f32[2,4,4,4]{3,2,1,0} custom-call(%x.1, %w.1), "
        'custom_call_target="jcnn_conv_forward", api_version=API_VERSION_TYPED_FFI\n'
        "  %copy.3 = f32[4]{0} copy(%p.2)\n"
    )
    assert P.hlo_ops(hlo) == {
        "ffi_call.1": ("jcnn_conv_forward", "f32[2,4,4,4]"),
        "copy.3": ("copy", "f32[4]"),
    }
