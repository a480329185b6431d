"""experiments.profile_step: HLO bookkeeping on known text, and a tiny traced run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from experiments import profile_step as P

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
         "--steps=2", f"--json_out={out}"],
        capture_output=True, text=True, timeout=300, cwd=ROOT, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "vgg, jcnn, batch 4: median step" in proc.stdout and "while traced" in proc.stdout
    assert "| operation | output shape | ms/step |" in proc.stdout
    assert "| convolution | f32[" in proc.stdout
    import json

    data = json.loads(out.read_text())
    assert data["model"] == "vgg" and data["ops"] and data["step_ms"] > 0 < data["traced_step_ms"]


def test_refuses_several_models():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.profile_step", "--tiny"],
        capture_output=True, text=True, timeout=120, cwd=ROOT, env=env,
    )  # fmt: skip
    assert proc.returncode != 0 and "exactly one" in proc.stderr
