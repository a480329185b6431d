"""The supervisor every process of a multi-process run trains under
(:mod:`experiments.supervisor`), with stand-in children in place of JAX: what it passes on,
what it replaces, the signals it forwards, and that a child does not outlive it."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import textwrap
import time
import types

import pytest

from experiments import supervisor
from tests.experiments.util import ROOT, fatal_messages, subprocess_env
from tests.helpers import free_port, reap

# What JAX 0.10 prints when the coordination service (process 0) goes away under a process
# that is between collectives, before it aborts.
JAX_ABORT_REPORT = "".join(
    f"{line}\n"
    for line in (
        "E1207 09:11:26.161837   18393 coordination_service_agent.cc:289] Polled an error "
        "from coordination service (this can be an error from this or another task).",
        "F1207 09:11:26.161877   18393 client.h:80] Terminating process because the JAX "
        "distributed service detected fatal errors. This most likely indicates that another "
        "task died.",
        "Additional GRPC error information from remote target coordination_service while "
        "calling /xla.coordination.CoordinationService/PollForError:",
        ':UNKNOWN:Error received from peer  {grpc_status:14, grpc_message:"Socket closed"}',
        "*** Check failure stack trace: ***",
        "    @     0x7f7eecc40634  absl::lts_20260107::log_internal::LogMessage::SendToLog()",
        "    @     0x7f7ee8d040ee  xla::CoordinationServiceAgent::SetError()",
    )
)


def _child(body: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(body)]


# What process 0 printed when process 1 was killed after the run's last collective, while
# process 0 wrote the results: JAX's shutdown barrier waited for it until its heartbeats
# timed out. The record goes on over several lines.
JAX_SHUTDOWN_REPORT = "".join(
    f"{line}\n"
    for line in (
        "E1207 15:26:39.108711   40213 coordination_service_agent.cc:702] Shutdown barrier in "
        "coordination service has failed:",
        "INTERNAL: Barrier failed because: task is set to ERROR: UNAVAILABLE: Task 1 heartbeat "
        "timeout. This indicates that the remote task has failed, got preempted, or crashed "
        "unexpectedly.",
        "This suggests that the workers are out of sync.",
        "Barrier result: 'INTERNAL: Barrier failed because: task is set to ERROR: UNAVAILABLE: "
        "Task 1 heartbeat timeout.'",
        "1",
        "The tasks have crashed. Check the task logs for an earlier error, or scheduler events "
        "(e.g. preemption, eviction) to debug further.",
        "F1207 15:26:39.108800   40213 client.h:80] Terminating process because the JAX "
        "distributed service detected fatal errors. This most likely indicates that another "
        "task died.",
        "*** Check failure stack trace: ***",
    )
)


def _supervise(capfd, body: str, process: int = 1) -> tuple[int, str]:
    code = supervisor.supervise(
        _child(body), process=process, processes=2,
        kept=lambda: "run/checkpoints/ckpt_000010.npz",
    )  # fmt: skip
    return code, capfd.readouterr().err


def test_jax_abort_on_a_lost_coordinator_becomes_one_fatal_line_and_exit_1(capfd):
    code, err = _supervise(
        capfd,
        f"""
        import os, sys
        sys.stderr.write("training went on\\n")
        sys.stderr.write({JAX_ABORT_REPORT!r}); sys.stderr.flush()
        os.abort()
        """,
    )
    assert code == 1
    assert "training went on" in err
    assert "Check failure" not in err and "@     0x" not in err and "E1207" not in err, err
    (message,) = fatal_messages(err)
    assert message.startswith("FATAL process 1 of 2 lost the coordinator (process 0)"), message
    assert "Socket closed" in message and "ckpt_000010.npz, is kept" in message, message


def test_python_s_crash_dump_after_jax_s_abort_report_is_held_back_too(capfd):
    """Early in a run (while compiling), JAX's abort also set off Python's fault handler,
    whose 50-line thread dump came through before the FATAL line."""
    code, err = _supervise(
        capfd,
        f"""
        import faulthandler, os, sys
        faulthandler.enable()
        sys.stderr.write({JAX_ABORT_REPORT!r}); sys.stderr.flush()
        os.abort()
        """,
    )
    assert code == 1
    assert "Fatal Python error" not in err and "most recent call first" not in err, err
    (message,) = fatal_messages(err)
    assert message.startswith("FATAL process 1 of 2 lost the coordinator (process 0)"), message


def test_jax_s_report_after_the_child_s_own_fatal_line_is_dropped(capfd):
    """The child saw the loss first (a failed collective) and said so; JAX's coordination
    client then aborted it on its way out: its report came through after the FATAL line."""
    code, err = _supervise(
        capfd,
        f"""
        import os, sys
        sys.stderr.write("FATAL process 1 of 2 lost process 0 (a collective failed: x)\\n")
        sys.stderr.write({JAX_ABORT_REPORT!r}); sys.stderr.flush()
        os.abort()
        """,
    )
    assert code == 1
    assert err == "FATAL process 1 of 2 lost process 0 (a collective failed: x)\n", err


def test_the_child_s_own_fatal_line_after_jax_s_report_is_kept_and_the_report_dropped(capfd):
    """Process 0 gone (its disk full): JAX's client in process 1 printed its report, then
    the child's collective failed and it said so in its own FATAL line and exited 1; the
    report came through before that line."""
    code, err = _supervise(
        capfd,
        f"""
        import os, sys
        sys.stderr.write({JAX_ABORT_REPORT!r})
        sys.stderr.write("FATAL process 1 of 2 lost process 0 (a collective failed: x);\\n")
        sys.stderr.write("  the last checkpoint, c.npz, is kept\\n"); sys.stderr.flush()
        os._exit(1)
        """,
    )
    assert code == 1
    assert err == (
        "FATAL process 1 of 2 lost process 0 (a collective failed: x);\n"
        "  the last checkpoint, c.npz, is kept\n"
    ), err


def test_every_line_of_a_multi_line_record_of_jax_s_report_is_held_back(capfd):
    """Lines that go on a record of JAX's report ("INTERNAL: Barrier failed ...") came
    through before the FATAL line."""
    code, err = _supervise(
        capfd,
        f"""
        import os, sys
        sys.stderr.write({JAX_SHUTDOWN_REPORT!r}); sys.stderr.flush()
        os.abort()
        """,
        process=0,
    )
    assert code == 1
    assert "Barrier" not in err and "The tasks have crashed" not in err, err
    (message,) = fatal_messages(err)
    assert message.startswith("FATAL process 0 of 2 lost process 1 "), message
    assert "resume from it" in message, message


def test_a_report_without_jax_s_verdict_comes_through_in_its_place(capfd):
    code, err = _supervise(
        capfd,
        """
        import sys
        sys.stderr.write("E1207 09:11:26.1 1 x.cc:1] Polled an error from coordination service\\n")
        sys.stderr.write("INTERNAL: not fatal after all\\n")
        sys.stderr.write("I1207 09:11:27.1 1 y.cc:2] training goes on\\n")
        sys.stderr.write("a warning\\n")
        """,
    )
    assert code == 0
    assert err.splitlines() == [
        "E1207 09:11:26.1 1 x.cc:1] Polled an error from coordination service",
        "INTERNAL: not fatal after all",
        "I1207 09:11:27.1 1 y.cc:2] training goes on",
        "a warning",
    ], err


def _app_then_a_lost_peer_in_jax_s_shutdown(main: str) -> str:
    """A child running an app whose ``main`` is given (one line of source), as a process of a
    multi-process run, whose JAX shutdown then reports a lost peer and aborts."""
    return f"""
        import atexit, os, sys
        from experiments import errors, supervisor
        supervisor.watch_supervisor()
        errors.when_finished(supervisor.tell_finished)
        def jax_shutdown():
            sys.stderr.write({JAX_SHUTDOWN_REPORT!r}); sys.stderr.flush()
            os.abort()
        atexit.register(jax_shutdown)
        {main}
        errors.run_app(main)
        """


@pytest.mark.parametrize("process", [0, 1])
def test_a_peer_lost_after_the_run_finished_is_no_failure_of_process_0(capfd, process):
    """Process 1 killed after the last collective, while process 0 wrote the results: JAX
    aborted process 0 in its shutdown, and the supervisor called the finished run lost and
    asked for a resume. Process 0, which wrote the results, now says the run finished (exit
    0); another process that had finished says that in its FATAL line."""
    finished = "def main(argv): print('results written', flush=True)"
    code, err = _supervise(capfd, _app_then_a_lost_peer_in_jax_s_shutdown(finished), process)
    if process == 0:
        assert code == 0 and fatal_messages(err) == [], err
        assert err == (
            "process 0 of 2: the run finished and its results are written; process 1 was lost "
            "while the processes shut down\n"
        ), err
    else:
        assert code == 1
        (message,) = fatal_messages(err)
        assert message.startswith("FATAL process 1 of 2 had finished its part when it lost"), err


def test_a_peer_lost_in_the_shutdown_of_a_stopped_run_is_a_failure(capfd):
    """A run stopped by a signal is not finished: the same command must resume it."""
    stopped = "def main(argv): raise SystemExit(143)"
    code, err = _supervise(capfd, _app_then_a_lost_peer_in_jax_s_shutdown(stopped), 0)
    assert code == 1
    (message,) = fatal_messages(err)
    assert message.startswith("FATAL process 0 of 2 lost process 1"), message
    assert "ckpt_000010.npz, is kept" in message, message


def test_a_child_that_ends_by_itself_keeps_its_status_and_every_line(capfd):
    code, err = _supervise(
        capfd,
        """
        import sys
        sys.stderr.write("E1207 09:11:26.1 1 x.cc:1] Polled an error from coordination service\\n")
        sys.stderr.write("FATAL process 1 of 2 lost process 0 (a collective failed: Gloo);\\n")
        sys.stderr.write("  the last checkpoint, c.npz, is kept\\n")
        sys.exit(3)
        """,
    )
    assert code == 3
    assert "Polled an error" in err, err
    assert fatal_messages(err) == [
        "FATAL process 1 of 2 lost process 0 (a collective failed: Gloo); the last checkpoint, "
        "c.npz, is kept"
    ], err


def test_an_abort_that_is_not_a_lost_peer_is_reported_as_it_was(capfd):
    code, err = _supervise(capfd, "import os; print('x', flush=True); os.abort()")
    assert code == 128 + signal.SIGABRT and fatal_messages(err) == [], err


def _supervised_process(body: str, process: int = 0) -> subprocess.Popen:
    """A supervisor (a Python process running :func:`supervise`) over a child ``body``."""
    code = (
        "import sys; from experiments.supervisor import supervise; "
        f"sys.exit(supervise({_child(body)!r}, process={process}, processes=2))"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code], cwd=ROOT, env=subprocess_env(), text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_the_supervisor_reaches_the_child_once(signum):
    proc = _supervised_process(
        """
        import signal, sys, time
        seen = []
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, lambda n, f: seen.append(n))
        print("ready", flush=True)
        deadline = time.monotonic() + 1.5  # time for a second copy to arrive
        while not seen or time.monotonic() < deadline:
            time.sleep(0.05)
        print("signals", seen, flush=True)
        sys.exit(128 + seen[0])
        """
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signum, err
    assert out.strip() == f"signals [{int(signum)}]", out


def test_a_child_dies_with_its_supervisor():
    proc = _supervised_process(
        """
        import os, time
        from experiments.supervisor import watch_supervisor
        watch_supervisor()
        print(os.getpid(), flush=True)
        time.sleep(60)
        """
    )
    assert proc.stdout is not None
    child = int(proc.stdout.readline())
    proc.kill()
    proc.wait(timeout=10)
    deadline = time.monotonic() + 10
    while _alive(child):
        assert time.monotonic() < deadline, "the child outlived its supervisor"
        time.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = open(f"/proc/{pid}/stat").read().split(")")[-1].split()[0]
    return status != "Z"  # a zombie is dead, waiting for its new parent to reap it


def test_needed_only_for_a_multi_process_run_of_an_app_outside_a_child(monkeypatch):
    monkeypatch.delenv(supervisor.CHILD_ENV, raising=False)
    monkeypatch.delenv("JCNN_DEBUG", raising=False)
    assert not supervisor.needed(2, "127.0.0.1:1234")  # pytest's command line is no app's
    app = types.ModuleType("__main__")
    app.__spec__ = importlib.util.find_spec("experiments.vgg_cifar")
    monkeypatch.setitem(sys.modules, "__main__", app)
    assert supervisor.needed(2, "127.0.0.1:1234") and supervisor.needed(1, "127.0.0.1:1234")
    assert not supervisor.needed(1, None)
    monkeypatch.setenv(supervisor.CHILD_ENV, "1")
    assert not supervisor.needed(2, "127.0.0.1:1234")
    monkeypatch.delenv(supervisor.CHILD_ENV)
    monkeypatch.setenv("JCNN_DEBUG", "1")
    assert not supervisor.needed(2, "127.0.0.1:1234")


def test_jax_aborting_a_process_whose_coordinator_died_ends_it_in_one_line():
    """Real JAX: two processes of one run, process 1 idle (not in a collective, where the
    app would catch the failure itself) when process 0 is killed: JAX aborts process 1, and
    its supervisor says so in one line, exit status 1, within seconds."""
    port = free_port()
    procs = [
        _supervised_process(
            f"""
            import sys, time, jax
            from experiments.supervisor import watch_supervisor
            watch_supervisor()
            jax.distributed.initialize("127.0.0.1:{port}", 2, {pid}, initialization_timeout=60)
            print("up", flush=True)
            time.sleep(120)
            """,
            process=pid,
        )
        for pid in (0, 1)
    ]
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "up"
        procs[0].kill()
        killed = time.monotonic()
        _, err = procs[1].communicate(timeout=60)
        took = time.monotonic() - killed
    finally:
        reap(procs)
    assert procs[1].returncode == 1 and took < 30, err
    assert "Check failure" not in err and "Traceback" not in err, err
    (message,) = fatal_messages(err)
    assert message.startswith("FATAL process 1 of 2 lost the coordinator (process 0)"), message
