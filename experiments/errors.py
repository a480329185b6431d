"""How an app stops: :class:`UsageFailure`, one line on stderr, exit status 1.

Every failure a user can cause or meet (bad flags or flagfiles, a workdir or data folder that
cannot be used, a full disk, an unreachable coordinator, bad data, a non-finite loss) ends
with one line ``FATAL <cause>: <what to do>`` (at most 200 characters; a longer message
goes on in an indented second line) and exit status 1, no traceback. A process of a
multi-process run whose peer dies (:func:`exit_peer_lost`) ends the same way, at once. A run
stopped by Ctrl-C, SIGTERM or SIGHUP (:func:`stop_on_signals`) ends with one line saying
where it was saved and exit status 130, 143 or 129. Set ``JCNN_DEBUG=1`` in the environment
to see the traceback too. Anything else (a bug) keeps
its traceback.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import logging
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from typing import Any

DEBUG_ENV = "JCNN_DEBUG"

# OSErrors a user meets (and can fix) rather than bugs, and what to do about each.
_FIX_PATH = "fix the path, or choose another one"
_OS_ADVICE = {
    errno.ENOSPC: "free some space, or choose a path on another disk",
    errno.EDQUOT: "free some space, or choose a path on another disk",
    errno.EACCES: "make it writable, or choose another path",
    errno.EPERM: "make it writable, or choose another path",
    errno.EROFS: "choose a path on a writable file system",
    errno.ENOTDIR: _FIX_PATH,
    errno.EISDIR: _FIX_PATH,
    errno.EEXIST: _FIX_PATH,
    errno.ENAMETOOLONG: _FIX_PATH,
    errno.ELOOP: _FIX_PATH,
}
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


# The longest first line of a failure; what does not fit follows on an indented line.
FIRST_LINE_MAX = 200
# Set by `make run` (the Makefile): a message about --data_dir names what the user typed.
MAKE_RUN_ENV = "JCNN_MAKE_RUN"


def shorten(line: str, limit: int = FIRST_LINE_MAX) -> str:
    """``line`` as a first line of at most ``limit`` characters (cut after the last ``'; '``,
    ``'. '`` or ``': '`` that fits, else the last space) and, if it was longer, the rest on a
    second line indented by two spaces."""
    if len(line) <= limit:
        return line
    cut = max(line.rfind(sep, 0, limit - 1) for sep in ("; ", ". ", ": "))
    if cut < limit // 3:
        cut = line.rfind(" ", 0, limit)
    if cut <= 0:
        return line
    return line[: cut + 1].rstrip() + "\n  " + line[cut + 1 :].lstrip()


def _as_typed(message: str) -> str:
    """Inside ``make run``, ``--data_dir`` is ``DATA_DIR``: say so in its words."""
    if not os.environ.get(MAKE_RUN_ENV):
        return message
    message = message.replace("(--data_dir)", "(make run DATA_DIR=...)")
    return message.replace("--data_dir=", "make run DATA_DIR=")


class UsageFailure(SystemExit):
    """Stops the app with one line on stderr (at most :data:`FIRST_LINE_MAX` characters;
    the rest of a longer message on an indented second line) and exit status 1."""

    def __init__(self, message: str):
        line = "FATAL " + " ".join(_printable(_as_typed(str(message))).split())
        super().__init__(shorten(line))


def _printable(text: str) -> str:
    """Control characters (a NUL or an escape sequence from a user's file or flag) shown
    as escapes, not sent to the terminal."""
    return "".join(c if c.isprintable() or c in " \t\n" else repr(c)[1:-1] for c in text)


# Exit statuses of a run stopped by a signal: 128 + its number, as a shell reports it.
STOP_STATUS = {"SIGINT": 130, "SIGTERM": 143, "SIGHUP": 129}


def stopped(message: str, reason: str = "SIGINT") -> SystemExit:
    """Print ``message`` (one line) on stderr; the SystemExit to raise for a run stopped by
    ``reason`` (exit status 130 for SIGINT, 143 for SIGTERM, 129 for SIGHUP, also when
    another process of the run got it: ``'SIGTERM to process 1'``)."""
    print(" ".join(message.split()), file=sys.stderr, flush=True)
    return SystemExit(STOP_STATUS.get(reason.split(" ")[0], 130))


@contextlib.contextmanager
def stop_on_signals(request_stop: Callable[[str], None]) -> Iterator[None]:
    """While the block runs: the first SIGINT (Ctrl-C), SIGTERM or SIGHUP (its terminal
    closed) calls
    ``request_stop(name)`` (the run stops after the current update, checkpointed); a second
    one stops at once (KeyboardInterrupt; checkpoints are written atomically, so the previous
    one stays intact). The previous handlers come back afterwards. A signal the process was
    told to ignore (e.g. SIGINT under ``nohup``) stays ignored, and outside the main thread,
    where Python cannot take signals, nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    names = {signal.SIGINT: "SIGINT", signal.SIGTERM: "SIGTERM", signal.SIGHUP: "SIGHUP"}
    previous = {s: signal.getsignal(s) for s in names}
    previous = {s: h for s, h in previous.items() if h is not signal.SIG_IGN}
    asked: list[str] = []

    def handler(signum: int, frame: Any) -> None:
        if asked:
            raise KeyboardInterrupt(names[signal.Signals(signum)])
        asked.append(names[signal.Signals(signum)])
        request_stop(asked[0])

    for s in previous:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _interrupt_behind(e: BaseException) -> KeyboardInterrupt | None:
    """The KeyboardInterrupt ``e`` is, or that was being handled when ``e`` was raised (a
    Ctrl-C inside ``np.savez`` surfaces as zipfile's ValueError about an open handle)."""
    seen: set[int] = set()
    cause: BaseException | None = e
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, KeyboardInterrupt):
            return cause
        seen.add(id(cause))
        cause = cause.__context__
    return None


def _exit_now(signum: int, frame: Any) -> None:
    name = signal.Signals(signum).name
    status = STOP_STATUS[name]
    if _HAS_FINISHED:  # nothing was stopped: say so, and end as the run did
        status = 0
        print(f"the run had finished when {name} came; it ended only the shutdown", flush=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def end_at_once_on_signals() -> None:
    """From here on, SIGINT, SIGTERM and SIGHUP end the process at once: for an app whose main
    has returned (its run finished or stopped, its checkpoints written), so that a Ctrl-C
    while Python and JAX clean up at exit (a multi-process run waits there for the others)
    does not print a traceback from that cleanup. After a stop or a failure the process ends
    quietly with status 130, 143 or 129; after a finished run, with status 0 and one line
    saying the signal ended only the shutdown. A signal the process ignores (``nohup``)
    stays ignored."""
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(s) is not signal.SIG_IGN:
            signal.signal(s, _exit_now)


def debug() -> bool:
    """Whether ``JCNN_DEBUG`` asks for tracebacks (set, and not ``0``/empty)."""
    return os.environ.get(DEBUG_ENV, "").strip() not in ("", "0")


def describe_os_error(e: OSError, advice: str | None = None) -> str | None:
    """One line for a user-fixable OSError: what happened, where, and ``advice`` (default:
    the usual fix for its errno); None for any other OSError."""
    if e.errno not in _OS_ADVICE:
        return None
    where = f" ({e.filename})" if e.filename is not None else ""
    return f"{e.strerror or os.strerror(e.errno)}{where}: {advice or _OS_ADVICE[e.errno]}"


@contextlib.contextmanager
def failures_in_one_line(advice: str | None = None) -> Iterator[None]:
    """Turn a user-fixable OSError into a :class:`UsageFailure`
    (:func:`describe_os_error`), and XLA's out-of-memory error into one naming the remedy (the
    layers' own memory checks count each layer's arrays; a program whose layers each fit can
    still need more at once); with ``JCNN_DEBUG`` set, print the traceback of every failure
    first. Other exceptions pass unchanged."""
    try:
        yield
    except UsageFailure:
        if debug():
            traceback.print_exc()
        raise
    except OSError as e:
        line = describe_os_error(e, advice)
        if line is None:
            raise
        if debug():
            traceback.print_exc()
        raise UsageFailure(line) from e
    except RuntimeError as e:  # XLA could not allocate what a program needs
        if type(e).__name__ not in _XLA_ERRORS or not str(e).startswith("RESOURCE_EXHAUSTED"):
            raise
        if debug():
            traceback.print_exc()
        detail = str(e).splitlines()[0].removeprefix("RESOURCE_EXHAUSTED:").strip()
        raise UsageFailure(
            f"ran out of memory ({detail}): make the network or the batch smaller; what was "
            "already written is kept"
        ) from e


# What JAX raises for a failure inside XLA (the name differs between versions).
_XLA_ERRORS = ("JaxRuntimeError", "XlaRuntimeError")


# What a collective or the coordination service says when another process is gone.
_PEER_LOSS = ("Gloo", "Connection reset", "Connection closed", "Socket closed", "heartbeat",
              "UNAVAILABLE", "tasks are unhealthy")  # fmt: skip


def is_peer_loss(error: BaseException | str) -> bool:
    """Whether ``error`` (a JAX runtime error or a coordination service status) says that
    another process of a multi-process run is gone."""
    return any(marker in str(error) for marker in _PEER_LOSS)


def describe_peer_loss(detail: str, process: int, processes: int) -> str:
    """Which process was lost, as far as ``detail`` says: ``'process 1'`` from the
    service's "Task 1 heartbeat timeout" (or the other one of two), ``'the coordinator
    (process 0)'`` for a closed service, else ``'another process'``."""
    import re

    task = re.search(r"Task (\d+)", detail)
    if task:
        return f"process {task.group(1)}"
    if "Socket closed" in detail or "PollForError" in detail:
        return "the coordinator (process 0)"
    return f"process {1 - process}" if processes == 2 else "another process"


def peer_lost_message(
    detail: str, *, process: int, processes: int, kept: str | None, finished: bool = False
) -> str:
    """The one line of a process of a multi-process run whose peer is gone: which one, as
    far as ``detail`` (the error, or JAX's report) says, and ``kept``: the run's newest
    checkpoint, which the same command resumes from; ``finished``: this process had done
    its part of the run (the loss came while the processes shut down)."""
    first = str(detail).strip().splitlines()[0] if str(detail).strip() else "no detail"
    what = "a collective failed" if "Gloo" in first else "the coordination service failed"
    why = f"{what}: {first.rsplit(': ', 1)[-1][:80]}"
    saved = (
        f"the last checkpoint, {kept}, is kept: start every process again with the same "
        "command to resume from it"
        if kept
        else "no checkpoint was written yet: start every process again with the same command"
    )
    when = "had finished its part when it lost" if finished else "lost"
    return UsageFailure(
        f"process {process} of {processes} {when} "
        f"{describe_peer_loss(str(detail), process, processes)} ({why}); {saved}"
    ).code


def exit_peer_lost(detail: str, *, process: int, processes: int, kept: str | None) -> None:
    """End this process of a multi-process run whose peer is gone with
    :func:`peer_lost_message` on stderr, exit status 1, at once (``os._exit``: JAX's shutdown
    would wait for the lost process, then abort)."""
    message = peer_lost_message(detail, process=process, processes=processes, kept=kept)
    sys.stderr.write(f"{message}\n")
    sys.stderr.flush()
    sys.stdout.flush()
    os._exit(1)


def _interrupted_while_starting(signum: int, frame: Any) -> None:
    # Ends here and now: an exception raised from a signal handler that lands in one of
    # JAX's callbacks is reported as "ignored", and the app ran on to the end.
    name = signal.Signals(signum).name
    print(f"stopped ({name}) while starting: nothing was written", file=sys.stderr)
    _exit_now(signum, frame)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def quiet_interrupt_while_starting() -> None:
    """Until :func:`run_app` takes over, Ctrl-C, SIGTERM and SIGHUP end the process with one
    line and status 130, 143 or 129 (Ctrl-C printed a 40-line traceback from inside
    ``import jax``, SIGTERM nothing). For ``python -m experiments.<app>`` only:
    ``experiments/__init__.py`` calls it then."""
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _interrupted_while_starting)
    for s in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(s) is signal.SIG_DFL:
            signal.signal(s, _interrupted_while_starting)


# Set once this process has joined a multi-process run (:func:`fail_without_waiting`).
_ONE_OF_SEVERAL: list[bool] = []
# Called when an app in :func:`run_app` has finished its work (:func:`when_finished`).
_WHEN_FINISHED: list[Callable[[], None]] = []
_HAS_FINISHED: list[bool] = []  # the app's main returned success


def fail_without_waiting() -> None:
    """From here on, an app in :func:`run_app` that ends in failure (a ``FATAL`` line, a
    traceback; not a finished or stopped run) exits at once, skipping JAX's shutdown: for a
    process of a multi-process run, whose shutdown waits for every process while the others
    wait in their next collective for this one (a disk full in process 0 left both waiting
    five minutes, then a 40-line barrier report). The others then see a lost peer and stop in
    one line."""
    _ONE_OF_SEVERAL.append(True)


def results_written() -> None:
    """The run's results are complete (summary.json written): a signal from here on ends
    only what is left (the closing line, the shutdown), with status 0 and one line saying
    so, not as a stopped run."""
    _HAS_FINISHED.append(True)


def when_finished(callback: Callable[[], None]) -> None:
    """Call ``callback`` when the app in :func:`run_app` has done its work and returned
    success, before the interpreter's exit (where JAX's shutdown waits for the other
    processes of a multi-process run)."""
    _WHEN_FINISHED.append(callback)


def _exit_now_on_failure(e: BaseException) -> None:
    """With :func:`fail_without_waiting`: report ``e`` as Python would at exit, then end the
    process with its status at once; return (the caller re-raises) for a success, or a stop
    that every process agreed on (they all shut down together)."""
    if not _ONE_OF_SEVERAL:
        return
    status: Any = e.code if isinstance(e, SystemExit) else 1
    if status in (None, 0) or status in STOP_STATUS.values():
        return
    if not isinstance(e, SystemExit):
        traceback.print_exception(e)
    elif not isinstance(status, int):
        print(status, file=sys.stderr)
        status = 1
    sys.stderr.flush()
    _shut_down_for(SHUTDOWN_WAIT_S)
    sys.stdout.flush()
    os._exit(status)


# How long a failing process of a multi-process run waits for the others in JAX's shutdown.
SHUTDOWN_WAIT_S = 10.0


def _shut_down_for(seconds: float) -> None:
    """JAX's shutdown, given ``seconds``: processes that all failed at the same point (a
    non-finite loss, a checkpoint of other settings) reach it together and leave in order
    (process 0 leaving first would take the coordination service with it, and the others'
    JAX clients abort on that); a process that failed alone leaves without the others,
    who wait for it in a collective."""
    jax = sys.modules.get("jax")
    if jax is None:
        return
    done = threading.Event()

    def shut_down() -> None:
        with contextlib.suppress(Exception):
            jax.distributed.shutdown()
        done.set()

    threading.Thread(target=shut_down, name="jcnn-shutdown", daemon=True).start()
    done.wait(seconds)


def _stop_at_once(interrupt: KeyboardInterrupt, resumes: bool) -> None:
    """End the app now for the signal behind ``interrupt``: one line (unless its main has
    returned success) and the signal's status (see :func:`_exit_now`)."""
    reason = interrupt.args[0] if interrupt.args else "SIGINT"
    reason = reason if reason in STOP_STATUS else "SIGINT"
    if not _HAS_FINISHED:
        kept = (
            ": the checkpoints already written are kept, and the same command resumes "
            "from the newest" if resumes else ""
        )  # fmt: skip
        stopped(f"stopped at once ({reason}){kept}", reason)
    # At once indeed: an interpreter shutting down while XLA's threads still run (a Ctrl-C
    # during a compile) could end in a segmentation fault.
    _exit_now(signal.Signals[reason], None)


def _stop_unraisable_interrupts(resumes: bool) -> None:
    """A signal's KeyboardInterrupt that lands in a callback Python cannot raise from (a
    weakref's, the garbage collector's: JAX has both) was printed as "ignored", and the app
    ran on: from here on it stops the app there, as anywhere else (``sys.unraisablehook``;
    other unraisable exceptions go to the hook before)."""
    previous = sys.unraisablehook

    def hook(info: Any) -> None:
        interrupt = _interrupt_behind(info.exc_value) if info.exc_value is not None else None
        if interrupt is None:
            previous(info)
            return
        _stop_at_once(interrupt, resumes)

    sys.unraisablehook = hook


def run_app(
    main: Callable[[list[str]], Any],
    help_text: Callable[[], str] | None = None,
    *,
    resumes: bool = False,
) -> None:
    """``absl.app.run(main)`` with every user-fixable failure, flag parsing included,
    ending in one line (see the module's docstring); ``help_text``: what ``--help`` lists
    after the app's docstring (default: absl's list of its flags); ``resumes``: the app
    writes checkpoints that its command resumes from (what a stop at once says)."""
    from absl import app

    from experiments import command_line

    if signal.getsignal(signal.SIGINT) is _interrupted_while_starting:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    for s in (signal.SIGTERM, signal.SIGHUP):  # until training: as a Ctrl-C (stopped at once)
        if signal.getsignal(s) in (signal.SIG_DFL, _interrupted_while_starting):
            signal.signal(s, _interrupt)

    # JAX logs each accelerator backend it cannot start (e.g. "Unable to initialize backend
    # 'tpu'") at INFO, which absl apps print: noise on every CPU-only start.
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)

    _stop_unraisable_interrupts(resumes)

    def one_line_main(argv: list[str]) -> Any:
        try:
            with failures_in_one_line():
                return main(argv)
        except BaseException as e:
            interrupt = _interrupt_behind(e)
            if interrupt is None:
                raise
            if debug():
                traceback.print_exc()
            _stop_at_once(interrupt, resumes)

    def checked_main(argv: list[str]) -> Any:
        try:
            result = one_line_main(argv)
            if result in (None, 0):
                _HAS_FINISHED.append(True)
                for callback in _WHEN_FINISHED:
                    callback()
            return result
        except BaseException as e:
            _exit_now_on_failure(e)
            raise
        finally:
            end_at_once_on_signals()

    try:
        app.run(checked_main, flags_parser=lambda argv: command_line.parse_flags(argv, help_text))
    except SystemExit as e:
        _exit_after_cleanup(e.code)


def _exit_after_cleanup(code: Any) -> None:
    """End the process as ``sys.exit(code)`` would, but without the interpreter's own
    finalisation: that resets the signal handlers to the system's defaults while JAX's
    teardown still runs (about 0.2 s), so a SIGTERM then killed the process without a line.
    What a normal exit does first still runs: the other threads are joined, the ``atexit``
    functions run (JAX's distributed shutdown, absl's profile, logging's flush), with
    :func:`end_at_once_on_signals`'s handlers in place."""
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    if code is None:
        code = 0
    elif not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
