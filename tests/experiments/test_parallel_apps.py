"""The apps' scale-out flags: --num_devices, --compute_dtype and the multi-host flags.

Each case runs the real command line in fresh interpreters with virtual CPU devices
(XLA_FLAGS must be set before JAX starts).
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from jcnn.checkpoint import verify_checkpoint
from tests.experiments.util import PYTHON, ROOT, fatal_messages, subprocess_env
from tests.helpers import free_port, reap

TINY = ["--num_train=40", "--num_val=10", "--num_test=10", "--print_every=2",
        "--num_filters=4,8", "--blocks=1,1", "--hidden_dims=8", "--num_epochs=1",
        "--noplots"]  # fmt: skip
TIMEOUT = 240


def _env(devices: int) -> dict[str, str]:
    return subprocess_env(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--batch_size=7"], "batch_size=7 (the global batch) must be divisible by the number "
                             "of devices 2"),
        (["--num_devices=3"], "num_devices=3 but this process has only 2 cpu device(s)"),
    ],
)  # fmt: skip
def test_bad_device_count_stops_before_the_data(tmp_path, args, message):
    proc = subprocess.run(
        [PYTHON, "-m", "experiments.vgg_cifar", f"--workdir={tmp_path / 'run'}",
         "--data_dir=/nonexistent", *args],
        capture_output=True, text=True, timeout=TIMEOUT, cwd=ROOT, env=_env(2),
    )  # fmt: skip
    assert proc.returncode == 1
    errors = fatal_messages(proc.stderr)
    assert len(errors) == 1 and message in errors[0], proc.stderr
    assert "CIFAR" not in proc.stderr and "Traceback" not in proc.stderr  # data never read
    assert not (tmp_path / "run").exists()


TABLE_CHECK = """
from experiments import bench_devices

row = {"devices": 1, "batch_size": 50, "per_device": 50, "ms_per_step": 100.0,
       "images_per_s": 500.0, "processes": 1, "kernels": ["jcnn_conv_forward"]}
print(bench_devices.format_table([row, {**row, "devices": 2, "per_device": 25,
                                        "images_per_s": 450.0, "processes": 2, "kernels": []}]))
"""


def test_bench_devices_table():
    # In a fresh interpreter: bench_devices and benchmark both define absl flags such as
    # --worker and --json_out, so the two modules cannot be imported into one process.
    out = subprocess.run(
        [PYTHON, "-c", TABLE_CHECK], cwd=ROOT, env=subprocess_env(),
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip
    lines = out.strip().splitlines()
    assert lines[0].split()[:3] == ["processes", "devices", "batch"] and len(lines) == 3
    assert lines[1].split()[-2:] == ["1.00x", "conv_forward"]
    assert lines[2].split()[0] == "2" and lines[2].split()[-2:] == ["0.90x", "none"]


def test_bench_devices_two_processes_split_the_cores_and_run_the_kernels_per_shard():
    from jcnn import native

    out = subprocess.run(
        [PYTHON, "-m", "experiments.bench_devices", "--devices=1", "--processes=2", "--steps=1",
         "--warmup=1", "--num_filters=4", "--blocks=1", "--hidden_dims=8", "--image_size=8",
         "--batch_size=4"],
        cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [line.split() for line in out.stdout.strip().splitlines()[-2:]]
    assert rows[0][:2] == ["1", "1"] and rows[1][:4] == ["2", "2", "4", "2"]
    if native.load("onednn"):  # each process convolves its 2 rows on oneDNN
        kernels = " ".join(rows[1][7:])
        assert "conv_forward" in kernels and "batchnorm" not in kernels, kernels


def _start_two(workdir: Path, logs: list[tuple[Path, Path]], address: str, *args: str) -> list:
    """The vgg_cifar app as two processes of one device each (stdout, stderr to ``logs``)."""
    procs = []
    for pid, (out, err) in enumerate(logs):
        with open(out, "w") as fo, open(err, "w") as fe:
            procs.append(subprocess.Popen(
                [PYTHON, "-m", "experiments.vgg_cifar", f"--workdir={workdir}", *args,
                 f"--coordinator_address={address}", "--num_processes=2", f"--process_id={pid}"],
                stdout=fo, stderr=fe, cwd=ROOT, env=_env(1),
            ))  # fmt: skip
    return procs


@pytest.mark.parametrize("lost", [1, 0], ids=["process 1", "the coordinator"])
def test_a_dead_peer_ends_the_other_process_in_one_line_and_the_same_command_resumes(
    tmp_path, fake_cifar_dir, lost
):
    """One process killed mid-run (process 1, or process 0, whose loss JAX itself would
    answer with an abort): the other stops at once with one line naming it and the
    checkpoint kept (no traceback, no abort, no wait for the lost process); the same two
    commands then resume the run from that checkpoint and finish it: two processes with one
    device each (global batch 8, 4 rows each), in bfloat16, only process 0 printing and
    writing."""
    workdir, address = tmp_path / "run", f"127.0.0.1:{free_port()}"
    args = [f"--data_dir={fake_cifar_dir}", *TINY[:-2], "--num_epochs=12", "--batch_size=8",
            "--checkpoint_every=5", "--print_every=1", "--noplots",
            "--compute_dtype=bfloat16"]  # fmt: skip
    logs = [(tmp_path / f"out.{i}", tmp_path / f"err.{i}") for i in (0, 1)]
    procs = _start_two(workdir, logs, address, *args)
    survivor = 1 - lost
    try:
        deadline = time.monotonic() + TIMEOUT
        while "(Iteration 12 / 60)" not in logs[0][0].read_text():
            assert time.monotonic() < deadline and procs[0].poll() is None, logs[0][1].read_text()
            time.sleep(0.1)
        procs[lost].kill()  # the supervisor the user started: its training child goes too
        killed = time.monotonic()
        code = procs[survivor].wait(timeout=60)
        took = time.monotonic() - killed
    finally:
        reap(procs)
    stderr = logs[survivor][1].read_text()
    assert code == 1 and took < 30 and "Traceback" not in stderr, stderr[-3000:]
    assert "Check failure" not in stderr, stderr[-3000:]
    (message,) = fatal_messages(stderr)
    assert message.startswith(f"FATAL process {survivor} of 2 lost "), message
    assert f"process {lost}" in message, message
    if lost == 1:
        assert "(a collective failed" in message, message
    assert "the last checkpoint" in message and "is kept" in message, message
    if lost == 0:  # resuming after either loss is the same
        return
    # The same commands again: resumed from the kept checkpoint, to the end.
    procs = _start_two(workdir, logs, f"127.0.0.1:{free_port()}", *args)
    codes = [p.wait(timeout=TIMEOUT) for p in procs]
    assert codes == [0, 0], logs[0][1].read_text()[-3000:] + logs[1][1].read_text()[-3000:]
    out0, out1 = (o.read_text() for o, _ in logs)
    assert "resuming the run" in out0 and "(Iteration 60 / 60)" in out0
    assert "x 2 in 2 processes" in out0
    assert "(Iteration" not in out1 and "best val_acc" not in out1  # process 1 is quiet
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["device"]["mesh_devices"] == 2 and summary["device"]["process_count"] == 2
    assert summary["flags"]["compute_dtype"] == "bfloat16"
    assert summary["iterations"] == 60 and summary["batch_size"] == 8
    flagfile = (workdir / "flags.cfg").read_text()
    assert "--compute_dtype=bfloat16" in flagfile and "--process_id" not in flagfile
    assert (workdir / "checkpoints" / "best.npz").is_file()


def test_a_signal_to_one_process_stops_every_process_after_the_same_update(
    tmp_path, fake_cifar_dir
):
    """SIGTERM to process 1 alone: it used to stop by itself, print that a checkpoint was
    saved (only process 0 writes one, and it had not), and leave both processes waiting in
    JAX for five minutes before they aborted. Now both stop after the same update, once
    process 0 has written that update's checkpoint, and both exit 143 at once."""
    workdir, address = tmp_path / "run", f"127.0.0.1:{free_port()}"
    args = [f"--data_dir={fake_cifar_dir}", *TINY[:-2], "--num_epochs=12", "--batch_size=8",
            "--print_every=1", "--noplots"]  # fmt: skip
    logs = [(tmp_path / f"out.{i}", tmp_path / f"err.{i}") for i in (0, 1)]
    procs = _start_two(workdir, logs, address, *args)
    try:
        deadline = time.monotonic() + TIMEOUT
        while "(Iteration 12 / 60)" not in logs[0][0].read_text():
            assert time.monotonic() < deadline and procs[0].poll() is None, logs[0][1].read_text()
            time.sleep(0.1)
        procs[1].send_signal(signal.SIGTERM)  # its supervisor passes it on to its child
        sent = time.monotonic()
        codes = [p.wait(timeout=60) for p in procs]
        took = time.monotonic() - sent
    finally:
        reap(procs)
    errs = [e.read_text() for _, e in logs]
    assert codes == [143, 143] and took < 30, errs
    lines = [[ln for ln in e.splitlines() if ln.startswith("stopped (")] for e in errs]
    assert [len(found) for found in lines] == [1, 1] and "Traceback" not in "".join(errs), errs
    (zero,), (one,) = lines
    assert zero.startswith("stopped (SIGTERM to process 1) after iteration "), zero
    assert one.startswith("stopped (SIGTERM) after iteration "), one
    assert zero.split(")", 1)[1] == one.split(")", 1)[1]  # the same update, the same file
    saved = Path(one.split("saved ", 1)[1].split(":")[0])
    stopped_after = int(one.split("after iteration ", 1)[1].split(";")[0])
    # A complete checkpoint of that update (resuming from one is the dead-peer test's).
    assert verify_checkpoint(saved)["iteration"] == stopped_after
