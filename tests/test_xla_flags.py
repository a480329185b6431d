"""jcnn sets its XLA flag only when it is safe; each case runs in a fresh interpreter."""

import json
import os
import subprocess
import sys

import pytest

from jcnn import _xla_flags

PROBE = """
import json, os, warnings
warnings.simplefilter("always")
{before}
with warnings.catch_warnings(record=True) as caught:
    import jcnn
import jax
jax.numpy.ones(3).block_until_ready()  # the backend starts: an unknown flag would abort here
print(json.dumps({{"status": jcnn.XLA_FLAGS_STATUS, "flags": os.environ.get("XLA_FLAGS", ""),
                  "warnings": [str(w.message) for w in caught]}}))
"""


def _probe(env_extra, before=""):
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JCNN_XLA_FLAGS")}
    env.update(env_extra)
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(before=before)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_flag_applied_on_import_and_backend_accepts_it():
    if not (_xla_flags._jaxlib_version() or "").startswith(_xla_flags.MEASURED_JAXLIB):
        pytest.skip("jaxlib outside the measured range: the flag is (rightly) not applied")
    result = _probe({})
    assert result["status"] == "applied"
    assert _xla_flags.CPU_FLAG in result["flags"]


def test_users_own_setting_of_the_option_is_left_alone():
    mine = "--xla_cpu_experimental_ynn_fusion_type=+individual_convolution"
    result = _probe({"XLA_FLAGS": mine})
    assert result["status"] == "user" and result["flags"] == mine


def test_users_other_flags_are_kept():
    other = "--xla_force_host_platform_device_count=2"
    result = _probe({"XLA_FLAGS": other})
    assert result["flags"].startswith(other)


def test_opt_out():
    result = _probe({"JCNN_XLA_FLAGS": "0"})
    assert result["status"] == "opted-out" and result["flags"] == ""


def test_warns_once_when_backend_already_started():
    result = _probe({}, before="import jax; jax.numpy.ones(1).block_until_ready()")
    if result["status"] == "unsupported-jaxlib":
        pytest.skip("jaxlib outside the measured range")
    assert result["status"] == "too-late"
    assert len(result["warnings"]) == 1 and "XLA_FLAGS" in result["warnings"][0]


def test_unmeasured_jaxlib_never_gets_the_flag(monkeypatch):
    monkeypatch.setattr(_xla_flags, "_jaxlib_version", lambda: "0.99.0")
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    monkeypatch.delenv("JCNN_XLA_FLAGS", raising=False)
    assert _xla_flags.apply_xla_flags() == "unsupported-jaxlib"
    assert "XLA_FLAGS" not in os.environ
