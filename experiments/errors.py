"""How an app stops: :class:`UsageFailure`, one line on stderr, exit status 1.

Every failure a user can cause or meet (bad flags or flagfiles, a workdir or data folder that
cannot be used, a full disk, an unreachable coordinator, bad data, a non-finite loss) ends
with one line ``FATAL <cause>: <what to do>`` and exit status 1, no traceback. Set
``JCNN_DEBUG=1`` in the environment to see the traceback too. Anything else (a bug) keeps
its traceback.
"""

from __future__ import annotations

import contextlib
import errno
import os
import traceback
from collections.abc import Callable, Iterator, Sequence
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


class UsageFailure(SystemExit):
    """Stops the app with one line on stderr and exit status 1."""

    def __init__(self, message: str):
        super().__init__("FATAL " + " ".join(str(message).split()))


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
    (:func:`describe_os_error`); with ``JCNN_DEBUG`` set, print the traceback of every failure
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


def parse_flags(argv: Sequence[str]) -> list[str]:
    """``absl.app.run``'s flag parsing, with a flagfile that cannot be read as text (or at
    all) stopping the app with one line instead of a traceback."""
    from absl import app

    try:
        with failures_in_one_line("check the --flagfile arguments"):
            return app.parse_flags_with_usage(list(argv))
    except UnicodeDecodeError as e:
        if debug():
            traceback.print_exc()
        raise UsageFailure(
            f"a --flagfile is not a text file ({e.reason} at byte {e.start}): flagfiles hold "
            "one --name=value per line, in UTF-8"
        ) from None


def run_app(main: Callable[[list[str]], Any]) -> None:
    """``absl.app.run(main)`` with every user-fixable failure, flag parsing included,
    ending in one line (see the module's docstring)."""
    from absl import app

    def checked_main(argv: list[str]) -> Any:
        with failures_in_one_line():
            return main(argv)

    app.run(checked_main, flags_parser=parse_flags)
