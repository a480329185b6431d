"""One run per workdir at a time: an exclusive advisory lock on ``<workdir>/.lock``.

An app's process 0 takes the lock (:class:`WorkdirLock`, ``fcntl.flock`` with
``LOCK_EX | LOCK_NB``) before it reads or clears its workdir and holds it for the run's
life; it writes its pid into the file once it holds it. A second process started on the
same workdir stops with one line naming the workdir and that pid. The operating system
drops the lock when the process ends, however it ends (SIGKILL included), so a killed run
never blocks its own resume; the file itself stays (deleting it would let two processes
lock two different files). Anything but a regular file there (a symbolic link, a FIFO, a
device) is refused in one line: the run never writes through it. ``flock`` is advisory and
local: it keeps apart runs on one machine (on a network filesystem it may not).

>>> with WorkdirLock(workdir):      # doctest: +SKIP
...     ...                        # read, clear and write the workdir
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
from pathlib import Path

from experiments.errors import UsageFailure

LOCK_NAME = ".lock"


class WorkdirLock:
    """The exclusive lock on ``<workdir>/.lock`` (the folder is created if missing).

    :meth:`acquire` raises :class:`~experiments.errors.UsageFailure` if another process
    holds it; :meth:`release` (or leaving the ``with`` block) gives it back."""

    def __init__(self, workdir: str | os.PathLike):
        self.workdir = Path(workdir)
        self.path = self.workdir / LOCK_NAME
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def holder(self) -> str:
        """The pid written into the lock file by its holder ('unknown' if none yet)."""
        with contextlib.suppress(OSError):
            text = self.path.read_text().strip()
            if text:
                return text.split()[0]
        return "unknown"

    def acquire(self) -> WorkdirLock:
        if self._fd is not None:
            return self
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:  # never through a link: truncating its target would destroy another file
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NONBLOCK | os.O_NOFOLLOW, 0o644)
        except OSError as e:
            if e.errno != errno.ELOOP:
                raise
            raise UsageFailure(
                f"{self.path} is a symbolic link: remove it (a run keeps its own lock file "
                "there and never writes through a link)"
            ) from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):  # a FIFO, a device: no lock file
                raise UsageFailure(
                    f"{self.path} is not a regular file (a FIFO, device or socket): remove "
                    "it; a run keeps its lock file there"
                )
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UsageFailure(
                f"--workdir={self.workdir} is in use by another run (pid {self.holder()}, "
                f"holding {self.path}): wait for it to end, or choose another --workdir"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)  # no stale pid for the next reader
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def __enter__(self) -> WorkdirLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
