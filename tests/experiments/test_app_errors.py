"""Every failure a user can cause or meet ends the apps with one ``FATAL`` line, exit status
1 and no traceback (``JCNN_DEBUG=1`` adds the traceback): files in the way, read-only
workdirs, a full disk, binary flagfiles, an unreachable coordinator."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
from pathlib import Path

import jax
import numpy as np
import pytest

from experiments import errors, three_layer_cifar
from tests.experiments.test_apps import TINY_THREE, run_in_process
from tests.experiments.util import PYTHON, ROOT, fatal_message, fatal_messages, subprocess_env

ARGS = (*TINY_THREE, "--num_epochs=2", "--checkpoint_every=3", "--noplots")


def run(workdir: Path, data_dir: Path, *args: str) -> dict:
    return run_in_process(three_layer_cifar, workdir, data_dir, *ARGS, *args)


def fatal_line(info: pytest.ExceptionInfo) -> str:
    return fatal_message(str(info.value.code))


def run_cli(*args: str, **env: str) -> tuple[int, str]:
    proc = subprocess.run(
        [PYTHON, "-m", "experiments.three_layer_cifar", *args],
        capture_output=True, text=True, timeout=60, cwd=ROOT, env=subprocess_env(**env),
    )  # fmt: skip
    return proc.returncode, proc.stderr


def run_script(script: str) -> subprocess.CompletedProcess:
    """``python -c script`` in the repository, as the apps run."""
    return subprocess.run(
        [PYTHON, "-c", script], cwd=ROOT, env=subprocess_env(), capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip


def the_fatal_line(stderr: str) -> str:
    errors = fatal_messages(stderr)
    assert len(errors) == 1, stderr
    return errors[0]


# ------------------------------------------------------------------------------ in process


def test_a_batch_too_large_for_memory_is_one_line_naming_batch_size(
    tmp_path, fake_cifar_dir, monkeypatch
):
    """--batch_size=1000000 gave a 76-line traceback from the convolution's memory check,
    met while the step compiled. (A machine of 8 MiB, as the check sees it, batch 200 and 64
    filters: the weights and the batch fit, the first convolution's output does not; with a
    batch under the accuracy checks' 100 images, the checks' chunks are the culprit: below.)"""
    import jcnn._validate

    monkeypatch.setattr(jcnn._validate, "memory_bytes", lambda: 2**23)
    with pytest.raises(SystemExit) as info:
        run(tmp_path / "run", fake_cifar_dir, "--batch_size=200", "--num_filters=64")
    line = fatal_line(info)
    assert line.startswith("FATAL the run does not fit in memory: pad="), line
    assert "lower --batch_size" in line, line
    with pytest.raises(SystemExit) as info:  # refused before training, not after an update
        run(tmp_path / "run32", fake_cifar_dir, "--batch_size=32", "--num_filters=64")
    line = fatal_line(info)
    assert "memory when predicting 100 images at a time for its accuracy checks" in line, line
    assert not (tmp_path / "run32" / "metrics.jsonl").exists()


def test_a_batch_that_cannot_fit_is_refused_before_one_is_built(
    tmp_path, fake_cifar_dir, monkeypatch
):
    """--batch_size=1000000 on 40 images printed its line only after building the batch
    (11 GiB on the host and again on the device), and was then killed for memory. Now the
    batch is counted before it exists. (A machine of 64 MiB, as the check sees it.)"""
    import jcnn._validate

    monkeypatch.setattr(jcnn._validate, "memory_bytes", lambda: 2**26)
    with pytest.raises(SystemExit) as info:
        run(tmp_path / "run", fake_cifar_dir, "--batch_size=10000")
    line = fatal_line(info)
    assert "batch_size=10000 makes a batch of images (10000, 3, 32, 32)" in line, line
    assert line.endswith("; lower --batch_size"), line  # --micro_batches would not help
    assert not list((tmp_path / "run").glob("checkpoints/*.npz"))


def test_an_accuracy_check_too_large_for_memory_names_the_network_not_the_batch(tmp_path):
    """A network whose accuracy check (100 images at a time) does not fit, though its
    training step (batch 8) does, was told to lower --batch_size, which changes nothing."""
    from experiments.train import _memory_message
    from jcnn._validate import MemoryLimitError

    step, check = MemoryLimitError("pad=1 makes ..."), MemoryLimitError("pad=1 makes ...")
    check.during = "predicting 100 images at a time"
    assert "lower --batch_size" in _memory_message(step)
    message = _memory_message(check)
    assert "when predicting 100 images at a time for its accuracy checks" in message
    assert "make the network smaller" in message and "batch_size" not in message


def test_predicting_says_so_when_its_chunks_do_not_fit(monkeypatch):
    import jax.numpy as jnp

    import jcnn._validate
    from jcnn.models import ThreeLayerConvNet
    from jcnn.prediction import make_eval_step, predict

    model = ThreeLayerConvNet(num_filters=4, hidden_dim=8)
    variables = model.init(jax.random.key(0))
    monkeypatch.setattr(jcnn._validate, "memory_bytes", lambda: 2**16)
    with pytest.raises(jcnn._validate.MemoryLimitError) as info:
        predict(make_eval_step(model), variables, jnp.zeros((3, 3, 32, 32)), batch_size=50)
    assert info.value.during == "predicting 50 images at a time"


@pytest.mark.parametrize("flag", ["workdir", "data_dir"])
def test_a_workdir_or_data_dir_naming_a_file_stops_before_the_data(tmp_path, flag):
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    paths = {"workdir": tmp_path / "run", "data_dir": tmp_path / "no_data", flag: a_file}
    with pytest.raises(SystemExit) as info:
        run(paths["workdir"], paths["data_dir"])
    message = fatal_line(info)
    assert f"--{flag}={a_file} is a file" in message and "CIFAR" not in message


def test_a_file_where_the_checkpoints_folder_goes_stops_before_the_data(tmp_path):
    """Found at the start, not after an epoch of training."""
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "checkpoints").write_text("x")
    with pytest.raises(SystemExit) as info:
        run(workdir, tmp_path / "no_data")  # had it loaded the data, it would say so
    message = fatal_line(info)
    assert f"{workdir / 'checkpoints'} is a file, not the folder" in message, message
    assert (workdir / "checkpoints").read_text() == "x"


def test_a_read_only_workdir_stops_before_the_data(tmp_path, monkeypatch):
    workdir = tmp_path / "run"
    (workdir / "checkpoints").mkdir(parents=True)
    (workdir / "checkpoints").chmod(0o555)
    if os.geteuid() == 0:  # root writes anyway: the check then sees what os.access says
        real_access = os.access
        monkeypatch.setattr(
            os, "access", lambda p, mode: "checkpoints" not in str(p) and real_access(p, mode)
        )
    try:
        with pytest.raises(SystemExit) as info:
            run(workdir, tmp_path / "no_data")  # had it loaded the data, it would say so
    finally:
        (workdir / "checkpoints").chmod(0o755)
    message = fatal_line(info)
    assert f"cannot write in {workdir / 'checkpoints'}" in message and "--workdir" in message


def test_a_full_disk_during_a_checkpoint_keeps_the_last_good_one_and_a_rerun_resumes(
    tmp_path, fake_cifar_dir, monkeypatch
):
    workdir = tmp_path / "run"
    real_savez, calls = np.savez, []

    def savez_on_a_filling_disk(*args, **kwargs):
        calls.append(1)
        if len(calls) > 2:  # preprocessing.npz and the first checkpoint fit, the next does not
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_savez(*args, **kwargs)

    monkeypatch.setattr(np, "savez", savez_on_a_filling_disk)
    with pytest.raises(SystemExit) as info:
        run(workdir, fake_cifar_dir)
    message = fatal_line(info)
    kept = sorted((workdir / "checkpoints").glob("*.npz"))
    assert [p.name for p in kept] == ["step_00000003.npz"]
    assert "the disk is full" in message and str(workdir) in message
    assert f"the last good checkpoint, {kept[0]}, is kept" in message
    assert "run the same command again to resume" in message
    assert not list((workdir / "checkpoints").glob("*.tmp"))

    monkeypatch.setattr(np, "savez", real_savez)
    summary = run(workdir, fake_cifar_dir)  # space freed: the same command resumes
    assert summary["resumed_from_iteration"] == 3 and summary["iterations"] == 10


# ------------------------------------------------------------------------------ command line


def test_a_binary_flagfile_ends_in_one_line_and_jcnn_debug_adds_the_traceback(tmp_path):
    flagfile = tmp_path / "flags.cfg"
    flagfile.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    rc, stderr = run_cli(f"--flagfile={flagfile}")
    assert rc == 1 and "Traceback" not in stderr
    assert "--flagfile is not a text file" in the_fatal_line(stderr)
    rc, stderr = run_cli(f"--flagfile={flagfile}", JCNN_DEBUG="1")
    assert rc == 1 and "Traceback" in stderr and "UnicodeDecodeError" in stderr
    assert "--flagfile is not a text file" in the_fatal_line(stderr)


def test_a_profile_file_that_cannot_be_written_stops_before_the_run(tmp_path):
    """absl writes --profile_file as the process exits: a missing folder printed an
    "Exception ignored in atexit callback" traceback after the whole run."""
    profile = tmp_path / "missing" / "prof.out"
    rc, stderr = run_cli("--run_with_profiling", f"--profile_file={profile}",
                         f"--workdir={tmp_path / 'run'}")  # fmt: skip
    assert rc == 1 and "Traceback" not in stderr and "Exception ignored" not in stderr
    assert f"--profile_file={profile} cannot be written" in the_fatal_line(stderr)
    assert not (tmp_path / "run").exists()


def test_an_unreachable_coordinator_ends_in_one_line_after_the_timeout(tmp_path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"127.0.0.1:{port}"
    rc, stderr = run_cli(
        f"--workdir={tmp_path / 'run'}", f"--coordinator_address={address}",
        "--num_processes=2", "--process_id=1", "--coordinator_timeout=2",
    )  # fmt: skip
    assert rc == 1 and "Traceback" not in stderr and "Check failure" not in stderr
    line = the_fatal_line(stderr)
    assert address in line and "--coordinator_timeout" in line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("kept", [None, "checkpoints/step_00000003.npz"])
def test_the_nonfinite_line_says_what_a_rerun_does(tmp_path, monkeypatch, kept):
    from experiments import train
    from jcnn.nonfinite import NonFiniteLossError

    def nonfinite(*args, **kwargs):
        raise NonFiniteLossError("non-finite loss at iteration 4", {"last_good_checkpoint": kept})

    monkeypatch.setattr(train, "train_and_evaluate", nonfinite)
    with pytest.raises(SystemExit) as info:
        run(tmp_path / "run", tmp_path / "no_data")
    message = fatal_line(info)
    if kept:
        assert f"Running the same command again resumes from {kept}" in message
    else:
        assert "No checkpoint was written before it" in message and "resumes" not in message


@pytest.mark.parametrize("error", [ValueError, jax.errors.JaxRuntimeError])
def test_a_collective_failing_on_a_lost_peer_ends_in_the_peer_loss_line(
    tmp_path, monkeypatch, error
):
    """A peer killed while the processes gathered their stop requests failed that gather
    with a ValueError (the training step's collectives fail with JaxRuntimeError): it went
    by as a traceback, and JAX's shutdown then waited minutes for the lost process."""
    from experiments import train

    lost: list[str] = []

    def gather_fails(*args, **kwargs):
        monkeypatch.setattr(jax, "process_count", lambda: 2)
        raise error("UNKNOWN: Gloo AllGather failed: [pair.cc:538] Connection reset by peer")

    def exit_peer_lost(detail, **where):
        lost.append(detail)
        raise SystemExit(1)

    monkeypatch.setattr(train, "train_and_evaluate", gather_fails)
    monkeypatch.setattr(errors, "exit_peer_lost", exit_peer_lost)
    with pytest.raises(SystemExit):
        run(tmp_path / "run", tmp_path / "no_data")
    assert len(lost) == 1 and "Connection reset by peer" in lost[0]


@pytest.mark.parametrize(
    "ending, status, shut_down",
    [("raise errors.UsageFailure('the disk is full')", 1, False),
     ("raise RuntimeError('a bug')", 1, False),
     ("raise KeyboardInterrupt('SIGTERM')", 143, False),  # a second signal: this one only
     ("raise errors.stopped('stopped (SIGTERM) after iteration 3', 'SIGTERM')", 143, True),
     ("return None", 0, True)],
)  # fmt: skip
def test_a_failing_process_of_a_multi_process_run_exits_without_waiting_for_the_others(
    ending, status, shut_down
):
    """A FATAL in process 0 alone (a full disk) left it in JAX's shutdown, which waits for
    every process, while the others waited in a collective for it: five minutes, then a
    40-line barrier report. A failing process now skips the shutdown (the others see a lost
    peer); a finished run, or a stop every process agreed on, shuts down as usual."""
    script = (
        "import atexit\n"
        "from experiments import errors\n"
        "errors.fail_without_waiting()  # as a process of a multi-process run\n"
        "atexit.register(lambda: print('shut down', flush=True))\n"
        "def main(argv):\n"
        f"    {ending}\n"
        "errors.run_app(main)\n"
    )
    proc = run_script(script)
    assert proc.returncode == status, proc.stderr
    assert ("shut down" in proc.stdout) == shut_down, proc.stdout
    if status == 1:
        assert ("FATAL the disk is full" in proc.stderr) != ("RuntimeError: a bug" in proc.stderr)


def test_a_second_signal_stops_at_once_and_the_handlers_come_back():
    import signal

    from experiments import errors

    asked: list[str] = []
    inherited = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:  # as in a terminal (a background job inherits SIGINT ignored)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        with pytest.raises(KeyboardInterrupt, match="SIGINT"):
            with errors.stop_on_signals(asked.append):
                signal.raise_signal(signal.SIGTERM)  # the first: a request, no exception
                assert asked == ["SIGTERM"]
                signal.raise_signal(signal.SIGINT)  # the second: at once
        assert asked == ["SIGTERM"]
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # nohup: an ignored signal stays ignored
        with errors.stop_on_signals(asked.append):
            signal.raise_signal(signal.SIGINT)
        assert asked == ["SIGTERM"]
    finally:
        for s, h in inherited.items():
            signal.signal(s, h)


@pytest.mark.parametrize("name, status", [("SIGINT", 130), ("SIGTERM", 143), ("SIGHUP", 129)])
@pytest.mark.parametrize("finished", [False, True], ids=["stopped", "finished"])
def test_a_signal_after_the_apps_main_returned_ends_the_process_at_once(name, status, finished):
    """Two Ctrl-Cs 20-50 ms apart: the first stopped the run (checkpointed), the second
    landed in JAX's cleanup at exit and printed a KeyboardInterrupt traceback there. Once an
    app's main has returned, a signal ends the process at once: quietly with the stop's
    status after a stop; after a finished run (which ended silently with 130 before) with
    status 0 and one line saying only the shutdown was cut short."""
    end = "return None" if finished else f"raise errors.stopped('stopped', '{name}')"
    script = (
        "import atexit, signal, time\n"
        "from experiments import errors\n"
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "signal.signal(signal.SIGHUP, signal.SIG_DFL)  # nohup ignores it\n"
        "def main(argv):\n"
        "    with errors.stop_on_signals(lambda name: print('stop asked:', name)):\n"
        f"        signal.raise_signal(signal.{name})\n"
        f"    atexit.register(lambda: (signal.raise_signal(signal.{name}), time.sleep(5)))\n"
        f"    {end}\n"
        "errors.run_app(main)\n"
    )
    proc = run_script(script)
    lines = proc.stdout.strip().splitlines()
    assert lines[0] == f"stop asked: {name}"
    if finished:
        assert proc.returncode == 0, proc.stderr
        assert lines[1:] == [f"the run had finished when {name} came; it ended only the shutdown"]
        assert proc.stderr == ""
    else:
        assert proc.returncode == status, proc.stderr
        assert lines[1:] == [] and proc.stderr.strip() == "stopped"


@pytest.mark.parametrize("moment", ["after the results", "in the interpreter's teardown"])
def test_a_signal_once_the_results_are_written_ends_no_run(moment):
    """A SIGTERM between summary.json and main's return said "stopped at once ... resumes"
    with status 143; one in the interpreter's own teardown (which resets the handlers while
    JAX's teardown runs) killed the process without a line. Both end with status 0 now."""
    script = (
        "import os, signal, time\n"
        "from experiments import errors\n"
        "class Late:\n"
        "    def __del__(self):  # runs in the interpreter's finalisation, if it runs\n"
        "        os.kill(os.getpid(), signal.SIGTERM); time.sleep(2)\n"
        "late = Late()\n"
        "def main(argv):\n"
        "    errors.results_written()\n"
        + ("    os.kill(os.getpid(), signal.SIGTERM); time.sleep(2); print('ran on')\n"
           if moment == "after the results" else "    print('done', flush=True)\n")
        + "errors.run_app(main)\n"
    )  # fmt: skip
    proc = run_script(script)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    if moment == "after the results":
        assert proc.stdout == "the run had finished when SIGTERM came; it ended only the shutdown\n"
    else:
        assert proc.stdout == "done\n"


# A Ctrl-C that lands where Python ignores exceptions (JAX's garbage-collection callback, a
# __del__): raised from there, the stop was "ignored" and the app trained to the end.
_IN_A_CALLBACK = (
    "class Callback:\n"
    "    def __del__(self):\n"
    "        os.kill(os.getpid(), signal.SIGINT)\n"
    "        sum(range(1000))\n"
    "Callback()\n"
)


@pytest.mark.parametrize(
    "option, landing",
    [(["-m", "experiments.vgg_cifar"], "import jax\n"), (["-mexperiments.x"], "import jax\n"),
     (["-m", "experiments.vgg_cifar"], _IN_A_CALLBACK)],
    ids=["-m app", "-mapp", "in a callback"],
)  # fmt: skip
def test_ctrl_c_while_an_app_imports_jax_ends_in_one_line(option, landing):
    """A Ctrl-C before the app's main started (JAX takes a second or two to import) printed
    a 40-line traceback from inside the import; an app started with ``-m`` says it in one
    line, status 130, and ``run_app`` gives Ctrl-C its usual meaning back."""
    script = (
        "import os, signal, sys\n"
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"  # pytest-xdist ignores it
        f"sys.orig_argv = [sys.executable, *{option!r}]\n"
        "import experiments\n"
        + ("os.kill(os.getpid(), signal.SIGINT)\n" if landing == "import jax\n" else "")
        + landing
        + "print('not reached')\n"
    )
    proc = run_script(script)
    assert proc.returncode == 130 and proc.stdout == "", proc.stderr
    assert proc.stderr == "stopped (SIGINT) while starting: nothing was written\n"
    handed_back = (
        "import signal, sys\n"
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "sys.orig_argv = [sys.executable, '-m', 'experiments.vgg_cifar']\n"
        "from experiments import errors\n"
        "errors.run_app(lambda argv: print(signal.getsignal(signal.SIGINT).__name__))\n"
    )
    assert run_script(handed_back).stdout.strip() == "default_int_handler"


@pytest.mark.parametrize("name, status", [("SIGTERM", 143), ("SIGINT", 130)])
def test_a_signal_that_lands_in_a_callback_while_the_app_runs_stops_it_in_one_line(name, status):
    """A SIGTERM that arrived while JAX's garbage-collection callback ran (right after the
    final line, or while the results were written) was printed as an "ignored" 7-line
    traceback, and the app ran on as if it had not come."""
    script = (
        "import os, signal, sys\n"
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"  # pytest-xdist ignores it
        "sys.orig_argv = [sys.executable, '-m', 'experiments.vgg_cifar']\n"
        "from experiments import errors\n"
        "class Callback:\n"
        "    def __del__(self):\n"
        f"        os.kill(os.getpid(), signal.{name})\n"
        "        sum(range(1000))\n"
        "def main(argv):\n"
        "    print('the last line')\n"
        "    Callback()\n"
        "    print('not reached')\n"
        "errors.run_app(main, resumes=True)\n"
    )
    proc = run_script(script)
    assert proc.returncode == status and proc.stdout == "the last line\n", proc.stderr
    assert proc.stderr.startswith(f"stopped at once ({name}): the checkpoints already written")
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


@pytest.mark.parametrize("name, status", [("SIGTERM", 143), ("SIGHUP", 129)])
def test_sigterm_or_sighup_while_an_app_starts_ends_in_one_line(name, status):
    """SIGTERM while JAX imported ended the app silently; after that, until training, it
    stops at once, as a Ctrl-C does, with one line."""
    starting = (
        "import os, signal, sys\n"
        f"signal.signal(signal.{name}, signal.SIG_DFL)  # nohup ignores SIGHUP\n"
        "sys.orig_argv = [sys.executable, '-m', 'experiments.vgg_cifar']\n"
        "import experiments\n"
        f"os.kill(os.getpid(), signal.{name})\n"
        "import jax\n"
        "print('not reached')\n"
    )
    proc = run_script(starting)
    assert proc.returncode == status and proc.stdout == "", proc.stderr
    assert proc.stderr == f"stopped ({name}) while starting: nothing was written\n"
    before_training = (
        "import os, signal, sys\n"
        f"signal.signal(signal.{name}, signal.SIG_DFL)\n"
        "sys.orig_argv = [sys.executable, '-m', 'experiments.vgg_cifar']\n"
        "from experiments import errors\n"
        f"errors.run_app(lambda argv: os.kill(os.getpid(), signal.{name}), resumes=True)\n"
    )
    proc = run_script(before_training)
    assert proc.returncode == status, proc.stderr
    assert proc.stderr.startswith(f"stopped at once ({name}): the checkpoints"), proc.stderr


def test_importing_experiments_elsewhere_leaves_ctrl_c_alone():
    proc = run_script(
        "import signal\n"
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "import experiments.train\n"
        "print(signal.getsignal(signal.SIGINT) is signal.default_int_handler)\n"
    )
    assert proc.stdout.strip() == "True", proc.stderr


_IN_SAVEZ = (
    "try:\n        raise KeyboardInterrupt\n    except KeyboardInterrupt:\n"
    '        raise ValueError("Can\'t close the ZIP file while there is an open writing handle")'
)


@pytest.mark.parametrize(
    "raised, name, status",
    [("raise KeyboardInterrupt", "SIGINT", 130),
     ("raise KeyboardInterrupt('SIGTERM')", "SIGTERM", 143),
     (_IN_SAVEZ, "SIGINT", 130)],
    ids=["Ctrl-C", "SIGTERM", "Ctrl-C inside np.savez"],
)  # fmt: skip
def test_a_stop_at_once_ends_in_one_line_with_its_signals_status(raised, name, status):
    """Ctrl-C before training (130), a second SIGTERM while the first is being answered
    (143: it used to give 130, as if it were a Ctrl-C), and a second Ctrl-C during a
    checkpoint write, which numpy's zip file turns into a ValueError (a 93-line traceback,
    status 1). The process then ends at once, without Python's shutdown (during a compile,
    that could end in a segmentation fault)."""
    script = (
        "import atexit\n"
        "from experiments import errors\n"
        "atexit.register(lambda: print('shut down'))\n"
        "def main(argv):\n"
        f"    {raised}\n"
        "errors.run_app(main, resumes=True)\n"
    )
    proc = run_script(script)
    assert proc.returncode == status and proc.stdout == "", proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"stopped at once ({name}): the checkpoints already written are kept, and the same "
        "command resumes from the newest"
    ]
    # An app that writes no checkpoints (predict, evaluate, ...) does not speak of them.
    proc = run_script(script.replace("run_app(main, resumes=True)", "run_app(main)"))
    assert proc.returncode == status and proc.stderr.strip() == f"stopped at once ({name})"


@pytest.mark.parametrize(
    "module",
    [
        "experiments.airbench_cifar",
        "experiments.evaluate",
        "experiments.benchmark",
        "experiments.predict",
        "experiments.export",
        "experiments.bench_predict",
    ],
)
def test_help_is_plain_text_and_exits_0(module):
    import subprocess

    proc = subprocess.run(
        [PYTHON, "-m", module, "--help"], cwd=ROOT, env=subprocess_env(), capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = proc.stdout + proc.stderr
    assert "flags:" in text
    for markup in (":class:", ":func:", ":mod:", "``"):
        assert markup not in text, markup
    assert not [line for line in text.splitlines() if "cfg         --" in line]  # a joined line
    if module == "experiments.airbench_cifar":  # only the flags of its recipe, by group
        import re

        listed = set(re.findall(r"^  --(?:\[no\])?(\w+)$", text, flags=re.M))
        assert {"momentum", "widths", "cutout", "num_train", "seed"} <= listed
        assert not {"update_rule", "lr_decay", "reg", "conv_impl", "augment"} & listed
        assert "Which data (CIFAR-10 or an image folder), where, and how it is split." in text


def test_an_app_without_data_starts_without_backend_noise(tmp_path):
    rc, stderr = run_cli(f"--workdir={tmp_path / 'run'}", f"--data_dir={tmp_path / 'no_data'}")
    assert rc == 1 and "could not load CIFAR-10" in the_fatal_line(stderr)
    assert "Unable to initialize backend" not in stderr  # JAX's probe of absent accelerators


def test_a_long_failure_keeps_its_first_line_short_and_speaks_of_make_runs_data_dir(monkeypatch):
    cause = "could not load CIFAR-10 from /data (--data_dir): "
    long = errors.UsageFailure(cause + "it is not there and the download failed. " * 8).code
    first, rest = str(long).split("\n")
    assert first == "FATAL could not load CIFAR-10 from /data (--data_dir): it is not there and " \
        "the download failed. it is not there and the download failed. it is not there and the " \
        "download failed."  # fmt: skip
    assert len(first) <= errors.FIRST_LINE_MAX and rest.startswith("  it is not there")
    assert errors.UsageFailure("a short one: fix it").code == "FATAL a short one: fix it"
    monkeypatch.setenv(errors.MAKE_RUN_ENV, "1")  # set by `make run`
    first = str(errors.UsageFailure(cause + "not there").code)
    assert first == "FATAL could not load CIFAR-10 from /data (make run DATA_DIR=...): not there"


def test_xla_running_out_of_memory_is_one_line_naming_the_remedy():
    """A network whose layers each passed the memory checks, but whose compiled program needed
    more at once (a wide convolution's output and its pooled copy: 23.8 GiB of 22.9), ended
    in a 79-line RESOURCE_EXHAUSTED traceback after its first update."""
    import jax

    from experiments import errors

    with pytest.raises(SystemExit) as info, errors.failures_in_one_line():
        raise jax.errors.JaxRuntimeError(
            "RESOURCE_EXHAUSTED: Out of memory allocating 25600200080 bytes.\nmore detail"
        )
    assert fatal_message(str(info.value.code)) == (
        "FATAL ran out of memory (Out of memory allocating 25600200080 bytes.): make the "
        "network or the batch smaller; what was already written is kept"
    )
    with pytest.raises(jax.errors.JaxRuntimeError), errors.failures_in_one_line():
        raise jax.errors.JaxRuntimeError("INTERNAL: something else")  # not ours to name


def test_a_fatal_line_shows_control_characters_as_escapes():
    """A NUL byte or a terminal escape from a flagfile went to the terminal as it was."""
    line = errors.UsageFailure("bad flag value 'a\x00b\x1b[31m' é").code
    assert line == "FATAL bad flag value 'a\\x00b\\x1b[31m' é"
