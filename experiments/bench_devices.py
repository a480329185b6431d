"""Training throughput on 1, 2, ... devices or processes: the VGG seed step, data-parallel.

    python -m experiments.bench_devices                        # 1 vs 2 devices, seed model
    python -m experiments.bench_devices --devices=1,2,4 --steps=30 --compute_dtype=bfloat16
    python -m experiments.bench_devices --devices=1 --processes=2   # + 2 processes, 1 core each

For each device count a fresh interpreter builds a :class:`jcnn.solver.Solver` for the
seed's VGG (:data:`experiments.recipes.VGG_SEED`, its sizes overridable) on random images with a
mesh of that many devices (on the CPU, that many virtual devices:
``XLA_FLAGS=--xla_force_host_platform_device_count=N``, which must be set before JAX
starts) and times ``--steps`` training steps after ``--warmup`` ones (compilation
included there). A step is what training does: sample the global minibatch on the host,
place it on the mesh, one jitted update (adam). The global batch stays ``--batch_size``:
each device gets ``batch_size / N`` images. Prints a table; ``--json_out`` keeps it.

Virtual CPU devices share the machine's cores, so on a CPU this measures the overhead of
the sharding, not a speed-up; on several GPUs or TPU cores each device is real.

``--processes=P`` adds a row for ``P`` processes of one device each on this machine
(``jax.distributed`` with a coordinator on localhost), each pinned to its own ``1/P`` of
this process's cores: how a multi-host run behaves, with the cores split instead of shared.
Every row says which compiled kernels the step's program holds (``kernels``: the jcnn custom
calls in the compiled training step).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from typing import Any

from absl import app, flags

import jcnn.cpu  # before JAX starts: its CPU convolution flag
from experiments import errors
from experiments.recipes import VGG_SEED as VGG

DEVICES = flags.DEFINE_list("devices", ["1", "2"], "Device counts to compare.")
BATCH_SIZE = flags.DEFINE_integer(
    "batch_size", VGG.batch_size, "Global minibatch size.", lower_bound=1
)
STEPS = flags.DEFINE_integer("steps", 20, "Timed training steps per device count.", lower_bound=1)
WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed steps first (compilation).", lower_bound=1)
NUM_FILTERS = flags.DEFINE_list("num_filters", [str(v) for v in VGG.num_filters], "VGG filters.")
BLOCKS = flags.DEFINE_list("blocks", [str(v) for v in VGG.blocks], "VGG blocks per stage.")
HIDDEN_DIMS = flags.DEFINE_list(
    "hidden_dims", [str(v) for v in VGG.hidden_dims], "VGG hidden widths."
)
IMAGE_SIZE = flags.DEFINE_integer("image_size", 32, "Square image side.", lower_bound=2)
COMPUTE_DTYPE = flags.DEFINE_enum(
    "compute_dtype", "float32", ["float32", "bfloat16"], "Dtype of the arithmetic."
)
PROCESSES = flags.DEFINE_integer(
    "processes", None, "Also measure this many processes of one device each, each pinned to "
    "its share of the cores.", lower_bound=2,
)  # fmt: skip
JSON_OUT = flags.DEFINE_string("json_out", None, "Also write the rows as JSON here.")
WORKER = flags.DEFINE_integer("worker", None, "Internal: measure this many devices and print JSON.")
COORDINATOR = flags.DEFINE_string("coordinator", None, "Internal: host:port of process 0.")
PROCESS_ID = flags.DEFINE_integer("process_id", 0, "Internal: this worker's process rank.")

TAG = "bench_devices: "


def _ints(values: list[str], name: str) -> tuple[int, ...]:
    try:
        out = tuple(int(v) for v in values)
    except ValueError:
        raise app.UsageError(f"--{name} must be a comma-separated list of integers") from None
    if any(v <= 0 for v in out):
        raise app.UsageError(f"--{name} entries must be positive")
    return out


def config_from_flags() -> dict[str, Any]:
    return {
        "batch_size": BATCH_SIZE.value,
        "steps": STEPS.value,
        "warmup": WARMUP.value,
        "num_filters": _ints(NUM_FILTERS.value, "num_filters"),
        "blocks": _ints(BLOCKS.value, "blocks"),
        "hidden_dims": _ints(HIDDEN_DIMS.value, "hidden_dims") if HIDDEN_DIMS.value else (),
        "image_size": IMAGE_SIZE.value,
        "compute_dtype": COMPUTE_DTYPE.value,
    }


def measure(config: dict[str, Any], num_devices: int) -> dict[str, Any]:
    """Time the training step on a mesh of ``num_devices`` devices (in this process)."""
    import jax
    import numpy as np

    from jcnn.parallel import make_mesh
    from jcnn.solver import Solver

    mesh = make_mesh(num_devices, batch_size=config["batch_size"])
    s = config["image_size"]
    model = dataclasses.replace(
        VGG, num_filters=config["num_filters"], blocks=config["blocks"],
        hidden_dims=config["hidden_dims"],
    ).build_model(input_dim=(3, s, s))  # fmt: skip
    rng = np.random.default_rng(0)
    n = max(4 * config["batch_size"], 200)
    data = {
        "X_train": rng.normal(size=(n, 3, s, s)).astype(np.float32),
        "y_train": rng.integers(0, 10, n),
        "X_val": rng.normal(size=(10, 3, s, s)).astype(np.float32),
        "y_val": rng.integers(0, 10, 10),
    }
    solver = Solver(
        model, data, update_rule=VGG.update_rule,
        optim_config={"learning_rate": VGG.learning_rate},
        batch_size=config["batch_size"], verbose=False, mesh=mesh,
        compute_dtype=config["compute_dtype"],
    )  # fmt: skip
    # Solver._step is one training iteration as train() runs it (sample, place, update).
    for _ in range(config["warmup"]):
        loss = solver._step()
    jax.block_until_ready(loss)
    start = time.perf_counter()
    for _ in range(config["steps"]):
        loss = solver._step()
    jax.block_until_ready(loss)
    seconds = time.perf_counter() - start
    d = jax.devices()[0]
    return {
        "devices": mesh.size,
        "processes": jax.process_count(),
        "kernels": _kernels_in(solver),
        "platform": d.platform,
        "device_kind": d.device_kind,
        "batch_size": config["batch_size"],
        "per_device": config["batch_size"] // mesh.size,
        "compute_dtype": config["compute_dtype"],
        "ms_per_step": 1e3 * seconds / config["steps"],
        "images_per_s": config["steps"] * config["batch_size"] / seconds,
        "loss_finite": bool(np.isfinite(float(loss))),
    }


def _kernels_in(solver: Any) -> list[str]:
    """The jcnn custom calls in the compiled training step (one more compilation)."""
    import re

    import jax

    from jcnn.parallel import put_batch

    rows = solver.batch_size // jax.process_count()
    local = (solver.X_train[:rows], solver.y_train[:rows])
    batch = put_batch(solver.mesh, local, solver.batch_size)
    hlo = solver._train_step.lower(solver.train_state, batch).compile().as_text()
    return sorted(set(re.findall(r'custom_call_target="(jcnn_[a-z_]+)"', hlo)))


def _worker_env(num_devices: int) -> dict[str, str]:
    env = dict(os.environ)
    flags_ = env.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags_:
        flags_ = f"{flags_} --xla_force_host_platform_device_count={num_devices}".strip()
    env["XLA_FLAGS"] = flags_
    return env


def run_worker(num_devices: int, argv: list[str]) -> dict[str, Any]:
    """Measure in a fresh interpreter with ``num_devices`` (virtual CPU) devices."""
    args = [a for a in argv[1:] if not a.startswith(("--worker", "--devices", "--json_out"))]
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.bench_devices", f"--worker={num_devices}", *args],
        capture_output=True, text=True, env=_worker_env(num_devices),
    )  # fmt: skip
    for line in proc.stdout.splitlines():
        if line.startswith(TAG):
            return json.loads(line[len(TAG) :])
    raise RuntimeError(
        f"the worker for {num_devices} device(s) failed (exit {proc.returncode}):\n"
        f"{proc.stderr[-3000:]}"
    )


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_processes(processes: int, argv: list[str]) -> dict[str, Any]:
    """Measure ``processes`` processes of one device each, the cores split between them
    (``jax.distributed`` on localhost); returns process 0's row."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < processes:
        raise app.UsageError(f"--processes={processes} but this process may use {len(cores)} cores")
    share = len(cores) // processes
    internal = ("--worker", "--devices", "--json_out", "--processes")
    args = [a for a in argv[1:] if not a.startswith(internal)]
    address = f"127.0.0.1:{_free_port()}"
    procs = []
    for pid in range(processes):
        mine = set(cores[pid * share : (pid + 1) * share])
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "experiments.bench_devices", "--worker=1",
             f"--coordinator={address}", f"--process_id={pid}", f"--processes={processes}", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_worker_env(1),
            preexec_fn=lambda mine=mine: os.sched_setaffinity(0, mine),
        ))  # fmt: skip
    outputs = [p.communicate() for p in procs]
    for line in outputs[0][0].splitlines():
        if line.startswith(TAG):
            return json.loads(line[len(TAG) :])
    codes = [p.returncode for p in procs]
    raise RuntimeError(
        f"the {processes} worker processes failed (exits {codes}):\n"
        + "\n".join(err[-2000:] for _, err in outputs)
    )


def format_table(rows: list[dict[str, Any]]) -> str:
    base = next((r["images_per_s"] for r in rows if r["devices"] == 1), rows[0]["images_per_s"])
    lines = [
        f"{'processes':>9}  {'devices':>7}  {'batch':>5}  {'per device':>10}  {'ms/step':>8}  "
        f"{'images/s':>9}  {'vs 1 device':>11}  kernels"
    ]
    for r in rows:
        kernels = ", ".join(k.removeprefix("jcnn_") for k in r.get("kernels", [])) or "none"
        lines.append(
            f"{r.get('processes', 1):>9}  {r['devices']:>7}  {r['batch_size']:>5}  "
            f"{r['per_device']:>10}  {r['ms_per_step']:>8.1f}  {r['images_per_s']:>9.1f}  "
            f"{r['images_per_s'] / base:>10.2f}x  {kernels}"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    config = config_from_flags()
    if WORKER.value is not None:
        if COORDINATOR.value:  # first, before anything touches a device
            from jcnn.parallel import initialize_distributed

            initialize_distributed(COORDINATOR.value, PROCESSES.value, PROCESS_ID.value)
        jcnn.cpu.tune()
        print(TAG + json.dumps(measure(config, WORKER.value)), flush=True)
        return
    devices = _ints(DEVICES.value, "devices")
    for n in devices:
        if config["batch_size"] % n:
            raise app.UsageError(
                f"--batch_size={config['batch_size']} is not divisible by {n} devices"
            )
    if PROCESSES.value and config["batch_size"] % PROCESSES.value:
        raise app.UsageError(
            f"--batch_size={config['batch_size']} is not divisible by {PROCESSES.value} processes"
        )
    rows = [run_worker(n, sys.argv) for n in devices]
    if PROCESSES.value:
        rows.append(run_processes(PROCESSES.value, sys.argv))
    r0 = rows[0]
    print(
        f"VGGNet filters {list(config['num_filters'])}, blocks {list(config['blocks'])}, "
        f"hidden {list(config['hidden_dims'])}, {config['image_size']}x{config['image_size']} "
        f"images, adam, {config['compute_dtype']}; {config['steps']} timed steps; "
        f"{r0['platform']} ({r0['device_kind']}), {os.cpu_count()} CPU cores"
    )
    print(format_table(rows))
    if JSON_OUT.value:
        with open(JSON_OUT.value, "w") as f:
            json.dump({"config": config, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    errors.run_app(main)
