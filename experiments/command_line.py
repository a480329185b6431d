"""An app's command line: flags parsed with one-line failures, ``--help`` as plain text, and
the files absl writes at exit checked before the run (:func:`parse_flags`, which
:func:`experiments.errors.run_app` uses)."""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

from experiments.errors import UsageFailure, debug, failures_in_one_line

HELP_ARGS = ("--help", "-help", "-h", "-?", "--helpshort", "--helpfull", "--helpxml")


def plain_text(doc: str) -> str:
    """A docstring as a terminal shows it: Sphinx roles (``:class:`x```) and double
    backticks dropped, the names kept."""
    import re

    doc = re.sub(r":[a-z]+:`~?([^`]+)`", r"\1", doc)
    return re.sub(r"``([^`]+)``", r"\1", doc)


SHORT_HELP_ARGS = ("--help", "-help", "-h", "-?", "--helpshort")


def parse_flags(argv: Sequence[str], help_text: Callable[[], str] | None = None) -> list[str]:
    """``absl.app.run``'s flag parsing, with a flagfile that cannot be read as text (or at
    all) stopping the app with one line instead of a traceback, and ``--help`` showing the
    app's docstring as plain text and exiting with status 0 (absl's exits with 1); with
    ``help_text``, ``--help`` shows the docstring and that text instead of absl's list
    (``--helpfull`` still shows absl's)."""
    from absl import app

    main = sys.modules.get("__main__")
    if main is not None and main.__doc__:
        main.__doc__ = plain_text(main.__doc__)
    if help_text is not None and any(a in SHORT_HELP_ARGS for a in argv[1:]):
        print(((main.__doc__ or "") if main is not None else "").rstrip() + "\n")
        print(help_text())
        raise SystemExit(0)
    try:
        with failures_in_one_line("check the --flagfile arguments"):
            rest = app.parse_flags_with_usage(list(argv))
        _check_profile_file()
        return rest
    except SystemExit as e:
        if e.code == 1 and any(a.split("=")[0] in HELP_ARGS for a in argv[1:]):
            raise SystemExit(0) from None
        raise
    except UnicodeDecodeError as e:
        if debug():
            traceback.print_exc()
        raise UsageFailure(
            f"a --flagfile is not a text file ({e.reason} at byte {e.start}): flagfiles hold "
            "one --name=value per line, in UTF-8"
        ) from None


def _check_profile_file() -> None:
    """absl's ``--profile_file`` is written as the process exits: one that cannot be written
    there printed an "Exception ignored in atexit callback" traceback after the run."""
    from absl import flags

    path = flags.FLAGS["profile_file"].value if "profile_file" in flags.FLAGS else None
    if not path:
        return
    file = Path(path)
    if (
        file.is_dir()
        or not file.parent.is_dir()
        or not os.access(file.parent, os.W_OK)
        or (file.exists() and not os.access(file, os.W_OK))
    ):
        raise UsageFailure(
            f"--profile_file={path} cannot be written (it is written when the run ends): "
            "give a file in a folder that exists and that you may write to"
        )
