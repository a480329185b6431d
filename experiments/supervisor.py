"""Each process of a multi-process run trains in a child of a small supervising process, so
that losing the coordinator ends the others in one line.

JAX's coordination client aborts its process (a C++ "Check failure stack trace", exit
status 134) the moment the coordination service, which lives in process 0, goes away while
the process is between collectives; jaxlib 0.10 offers no Python hook to do otherwise (its
``missed_heartbeat_callback`` cannot be called from Python). So with ``--num_processes`` > 1
the app runs its own command line again as a child (:func:`supervise`) and stays beside it:

- the child's stdout is the app's; its stderr passes through line by line, except the report
  JAX prints when it aborts on a lost peer and whatever follows it (Python's crash dump),
  which are held back and replaced by one ``FATAL`` line naming the lost process and the
  checkpoint kept (exit status 1), or dropped when the child had printed its own;
- SIGINT, SIGTERM and SIGHUP reaching the supervisor are passed on to the child, once (the
  child has a process group of its own, so a terminal's Ctrl-C does not reach it twice), and
  the supervisor ends with the child's exit status;
- a child whose supervisor is gone (killed) kills itself at once (:func:`watch_supervisor`),
  as the process the user killed would have died;
- a child that has finished its work tells the supervisor so (:func:`tell_finished`): if JAX
  then aborts it because another process was lost while the processes shut down, process 0,
  which has written the run's results, says so in one line and ends with status 0; another
  process's ``FATAL`` line says that its part had finished.

``JCNN_DEBUG=1`` turns the supervisor off (JAX's own report is then printed).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence

from experiments import errors

# Set in the child's environment: the supervisor's process id.
CHILD_ENV = "JCNN_SUPERVISOR_PID"
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# In the child's environment: the pipe to its supervisor that :func:`tell_finished` writes.
FINISHED_ENV = "JCNN_SUPERVISOR_FINISHED_FD"
_FINISHED = b"finished"
_finished_pipe: list[int] = []  # in the child: that pipe's file descriptor

# The first line of the report JAX prints before aborting on a lost peer...
_ABORT_START = re.compile(r"coordination service|JAX distributed service")
# ...and the shapes of its lines: absl log lines ("E1207 09:11:26.161837 18393 file.cc:289]"),
# the stack trace, gRPC's detail.
_REPORT_LINE = re.compile(
    r"^([EFW]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ \S+:\d+\]|\*\*\* Check failure stack trace|"
    r"\s+@\s+0x|Additional GRPC error information|:UNKNOWN:|terminate called)"
)
_GRPC_MESSAGE = re.compile(r'grpc_message:"([^"]*)"')
# The first line of any absl log record: what ends a multi-line record held back.
_LOG_RECORD = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ \S+:\d+\]")


def needed(processes: int, coordinator_address: str | None) -> bool:
    """Whether this process should run its training in a supervised child: a multi-process
    run of an app started as ``python -m experiments.<app>`` (its command line can be run
    again), not already the child, and ``JCNN_DEBUG`` unset."""
    multi = processes > 1 or bool(coordinator_address)
    main = getattr(sys.modules.get("__main__"), "__spec__", None)
    an_app = main is not None and main.name.startswith("experiments.")
    return multi and an_app and CHILD_ENV not in os.environ and not errors.debug()


def tell_finished() -> None:
    """In a supervised child (after :func:`watch_supervisor`): tell the supervisor, through a
    pipe of their own, that this process has done its work (for process 0: the run's results
    are written). A no-op in any other process."""
    for fd in _finished_pipe:
        with contextlib.suppress(OSError):  # the supervisor is gone: nobody to tell
            os.write(fd, _FINISHED)


def watch_supervisor() -> None:
    """In a supervised child: a daemon thread that kills this process (SIGKILL) once its
    supervisor is gone, checked twice a second. A no-op in any other process."""
    supervisor = os.environ.get(CHILD_ENV)
    if supervisor is None:
        return
    fd = os.environ.pop(FINISHED_ENV, None)  # not for this process's own children
    if fd is not None and not _finished_pipe:
        _finished_pipe.append(int(fd))

    def watch() -> None:
        while os.getppid() == int(supervisor):
            time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="jcnn-supervisor-watch", daemon=True).start()


class _StderrFilter:
    """The child's stderr, line by line, to ours; JAX's abort report held back."""

    def __init__(self) -> None:
        self.held: list[str] = []
        self.said_fatal = False  # the child reported the failure itself

    def feed(self, line: str) -> None:
        fatal = line.startswith("FATAL")
        self.said_fatal = self.said_fatal or fatal
        reporting = _REPORT_LINE.match(line) and (self.held or _ABORT_START.search(line))
        # A record of JAX's report may go on over several lines ("INTERNAL: Barrier failed
        # ...", "The tasks have crashed ..."): held with it until the next record.
        continued = self.held and not fatal and not _LOG_RECORD.match(line)
        if reporting or continued or self.aborted_on_peer_loss():  # after JAX's verdict:
            self.held.append(line)  # the crash dump, and the child's own FATAL line
            return
        self.release()  # a report without JAX's verdict: what it was, in its place
        sys.stderr.write(line)
        sys.stderr.flush()

    def release_fatal(self) -> None:
        """Print the child's own ``FATAL`` line (and its indented rest) if it was held back
        with JAX's report; drop the report."""
        fatal = [i for i, line in enumerate(self.held) if line.startswith("FATAL")]
        if fatal:
            rest = itertools.takewhile(
                lambda line: line.startswith("  "), self.held[fatal[0] + 1 :]
            )
            sys.stderr.write("".join([self.held[fatal[0]], *rest]))
            sys.stderr.flush()
        self.held.clear()

    def aborted_on_peer_loss(self) -> bool:
        return any("detected fatal errors" in line for line in self.held)

    def detail(self) -> str:
        """What was lost, in the words :func:`experiments.errors.describe_peer_loss` reads."""
        text = "".join(self.held)
        grpc = _GRPC_MESSAGE.search(text)
        return f"JAX's coordination client: {grpc.group(1) if grpc else 'fatal errors'}\n{text}"

    def release(self) -> None:
        """Print what was held back (when it did not end in a lost peer after all)."""
        if self.held:
            sys.stderr.write("".join(self.held))
            sys.stderr.flush()
            self.held.clear()


def supervise(
    command: Sequence[str],
    *,
    process: int,
    processes: int,
    kept: Callable[[], str | None] = lambda: None,
) -> int:
    """Run ``command`` (this app's command line) as a supervised child and wait for it.

    Args:
        command: the child's argv.
        process: this process's index in the run (for the message).
        processes: the run's number of processes.
        kept: returns the run's newest checkpoint (None: none yet), asked only when a peer
            was lost.

    Returns:
        The exit status to end with: the child's; 1 (after one ``FATAL`` line) when JAX
        aborted it on a lost peer, but 0 (after one line saying so) for process 0 that had
        finished the run; ``128 + n`` when signal n killed it.
    """
    finished_read, finished_write = os.pipe()  # the child's tell_finished
    env = {**os.environ, CHILD_ENV: str(os.getpid()), FINISHED_ENV: str(finished_write)}
    children: list[subprocess.Popen] = []
    pending: list[int] = []  # signals that came before the child

    def forward(signum: int, _frame: object) -> None:
        if not children:
            pending.append(signum)
        elif children[0].poll() is None:
            children[0].send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in FORWARDED}
    stream = _StderrFilter()
    try:
        child = subprocess.Popen(
            list(command), env=env, stderr=subprocess.PIPE, text=True, errors="replace",
            process_group=0, pass_fds=(finished_write,),
        )  # fmt: skip
        children.append(child)
        for signum in pending:
            child.send_signal(signum)
        assert child.stderr is not None
        os.close(finished_write)  # the child's copy is the one left: EOF when it ends
        for line in child.stderr:
            stream.feed(line)
        code = child.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if not children:
            os.close(finished_write)
    finished = _said_finished(finished_read)
    aborted = code in (-signal.SIGABRT, 128 + signal.SIGABRT)
    if stream.aborted_on_peer_loss() and (aborted or stream.said_fatal):
        return _end_on_peer_loss(stream, process, processes, kept, finished=finished)
    stream.release()
    return 128 - code if code < 0 else code


def _said_finished(pipe: int) -> bool:
    """Whether the child wrote to the pipe that it had finished (:func:`tell_finished`);
    closes the pipe."""
    os.set_blocking(pipe, False)
    try:
        return os.read(pipe, len(_FINISHED)) == _FINISHED
    except BlockingIOError:  # a grandchild holds the pipe open; the child never wrote
        return False
    finally:
        os.close(pipe)


def _end_on_peer_loss(
    stream: _StderrFilter,
    process: int,
    processes: int,
    kept: Callable[[], str | None],
    *,
    finished: bool,
) -> int:
    """The line and exit status of a child that JAX aborted on a lost peer: the child's own
    FATAL line if it printed one; a finished run's process 0 ends well (status 0)."""
    if stream.said_fatal:  # the child's own line says it
        stream.release_fatal()
        return 1
    if finished and process == 0:  # it wrote the results: the run succeeded
        lost = errors.describe_peer_loss(stream.detail(), process, processes)
        sys.stderr.write(
            f"process 0 of {processes}: the run finished and its results are written; "
            f"{lost} was lost while the processes shut down\n"
        )
        return 0
    message = errors.peer_lost_message(
        stream.detail(), process=process, processes=processes, kept=kept(), finished=finished
    )
    sys.stderr.write(f"{message}\n")
    sys.stderr.flush()
    return 1
