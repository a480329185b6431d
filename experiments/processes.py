"""A training app run as several processes (``--num_processes``, ``--coordinator_address``):
starting them together (:func:`start_processes`, each under a supervisor:
:mod:`experiments.supervisor`) and what the survivors say when one of them dies
(:func:`stop_on_peer_loss`).
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax

from experiments import errors, supervisor
from experiments.errors import UsageFailure


def start_processes(config: Mapping[str, Any]) -> None:
    """``jax.distributed.initialize`` for a multi-host run (``--num_processes`` > 1, or a
    ``--coordinator_address``); a failure stops the app with one line, and so does not
    hearing from every process within ``--coordinator_timeout`` seconds (JAX would abort).

    The process that calls it first runs the same command line as a supervised child and
    ends with its exit status (:func:`experiments.supervisor.supervise`); the child goes on
    to initialise."""
    from jcnn.parallel import initialize_distributed

    n = config.get("num_processes") or 1
    address = config.get("coordinator_address")
    if n == 1 and not address:
        return
    pid, timeout = config.get("process_id"), int(config.get("coordinator_timeout") or 300)
    if supervisor.needed(n, address):  # this process only supervises the one that trains
        sys.stdout.flush()
        raise SystemExit(
            supervisor.supervise(
                [sys.executable, *sys.orig_argv[1:]],
                process=int(pid or 0),
                processes=n,
                kept=lambda: _newest_checkpoint(config),
            )  # fmt: skip
        )
    supervisor.watch_supervisor()

    def give_up() -> None:  # JAX's own timeout aborts the process with a C++ stack trace
        message = errors.UsageFailure(
            f"could not start process {pid} of {n}: not every process connected to "
            f"the coordinator at {address} (--coordinator_address) within {timeout} s "
            "(--coordinator_timeout): start process 0 there with the same "
            "--coordinator_address and --num_processes, start every process, and check that "
            "the address is reachable from this host"
        ).code
        sys.stderr.write(f"{message}\n")
        sys.stderr.flush()
        os._exit(1)

    watchdog = threading.Timer(timeout, give_up)
    watchdog.daemon = True
    if not errors.debug():  # JCNN_DEBUG: let JAX abort with its own report
        watchdog.start()

    try:  # JAX gets a little longer, so that the watchdog speaks first
        initialize_distributed(address, n, pid, timeout_s=timeout + 10)
    except (ValueError, RuntimeError) as e:
        raise UsageFailure(f"could not start process {pid} of {n}: {e}") from None
    finally:
        watchdog.cancel()
    errors.fail_without_waiting()  # JAX's shutdown would wait for every process
    errors.when_finished(supervisor.tell_finished)


def check_same_flags(config: Mapping[str, Any], recipe_class: type) -> None:
    """In a multi-process run: every process was given the same flags, but for those that
    say where a process runs (``--process_id``, ``--data_dir``, ...: the settings that may
    change on resume). A collective, right after :func:`start_processes`.

    Raises:
      UsageFailure: naming each flag that differs between the processes.
    """
    from experiments.settings import options
    from jcnn.parallel import differing_across_processes

    if jax.process_count() == 1:
        return
    shared = {
        n: config[n] for n, opt in options(recipe_class).items() if not opt.may_change_on_resume
    }
    differ = differing_across_processes(shared)
    if differ:
        raise UsageFailure(
            f"the processes of this run were given different {', '.join(f'--{n}' for n in differ)}"
            ": start every process with the same flags (only --process_id differs)"
        )


def _newest_checkpoint(config: Mapping[str, Any]) -> str | None:
    """The newest good checkpoint of the run in ``config['workdir']`` (None: none yet)."""
    from jcnn.checkpoint import latest_run_checkpoint

    if not config.get("workdir"):
        return None
    try:
        found = latest_run_checkpoint(Path(config["workdir"]) / "checkpoints")
    except Exception:  # noqa: BLE001 - only for the advice; the failure is the lost process
        return None
    return None if found is None else str(found[0])


def stop_on_peer_loss(error: BaseException, config: Mapping[str, Any]) -> None:
    """In a multi-process run, end this process in one line (exit 1, at once) if ``error``
    says that another process is gone (:func:`experiments.errors.exit_peer_lost`); otherwise
    return, so that the caller re-raises."""
    if jax.process_count() == 1 or not errors.is_peer_loss(error) or errors.debug():
        return
    errors.exit_peer_lost(
        str(error), process=jax.process_index(), processes=jax.process_count(),
        kept=_newest_checkpoint(config),
    )  # fmt: skip
