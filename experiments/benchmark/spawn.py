"""The parent's side of a worker: its command line and environment, one fresh process per
(model, batch size, impl), and the order of the impls within a round."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from experiments.benchmark.options import FLAGS, FORWARDED, IMPL_ENV, RESULT_PREFIX


def _flag_arg(name: str) -> str | None:
    value = FLAGS[name].value
    if value is None:
        return None
    if isinstance(value, list):
        value = ",".join(str(v) for v in value)
    elif isinstance(value, bool):
        return f"--{name}" if value else f"--no{name}"
    return f"--{name}={value}"


def worker_command(model: str, impl: str, batch_size: int, round_: int) -> list[str]:
    args = [
        sys.executable,
        "-m",
        "experiments.benchmark",
        "--worker",
        f"--models={model}",
        f"--impls={impl}",
        f"--batch_sizes={batch_size}",
        f"--round={round_}",
    ]
    args += [a for a in (_flag_arg(n) for n in FORWARDED) if a is not None]
    return args


def _worker_env(impl: str) -> dict:
    """The parent's environment, with the project root importable (for ``-m experiments``);
    ``jcnn_no_native`` workers also get ``JCNN_NATIVE=0``, ``jcnn_no_onednn`` ``JCNN_ONEDNN=0``."""
    env = dict(os.environ)
    env.update(IMPL_ENV.get(impl, {}))
    root = str(Path(__file__).resolve().parents[2])
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = root + (os.pathsep + path if path else "")
    return env


def spawn_worker(model: str, impl: str, batch_size: int, round_: int, timeout: float) -> dict:
    """Run one worker process and return its record (``ok: False`` with the reason on failure)."""
    cmd = worker_command(model, impl, batch_size, round_)
    base = {"model": model, "impl": impl, "batch_size": batch_size, "round": round_}
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, env=_worker_env(impl)
        )
    except subprocess.TimeoutExpired:
        return {**base, "ok": False, "error": f"timed out after {timeout}s"}
    wall = time.perf_counter() - t0
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            record = json.loads(line[len(RESULT_PREFIX) :])
            record["process_wall_s"] = wall
            record["argv"] = cmd[1:]
            return record
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
    return {**base, "ok": False, "returncode": proc.returncode, "error": "\n".join(tail)}


def impl_order(impls: Sequence[str], round_: int, order: str) -> list[str]:
    """The impls of round ``round_`` (1-based): as given, or rotated by one per round."""
    impls = list(impls)
    if order == "rotate" and impls:
        k = (round_ - 1) % len(impls)
        impls = impls[k:] + impls[:k]
    return impls
