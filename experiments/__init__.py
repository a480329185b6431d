"""jcnn's training apps, benchmarks and the machinery they share (``python -m
experiments.<app>``)."""

import sys


def _run_as_an_app() -> bool:
    """Whether this process is ``python [options] -m experiments.<app>``."""
    argv = sys.orig_argv
    for i, arg in enumerate(argv[1:], start=1):
        if arg.startswith("-m"):  # "-m name" or "-mname"
            module = arg[2:] or (argv[i + 1] if i + 1 < len(argv) else "")
            return module.startswith(f"{__name__}.")
    return False


if _run_as_an_app():  # a Ctrl-C while the app imports JAX: one line, not a traceback
    from experiments import errors

    errors.quiet_interrupt_while_starting()
