"""Catching a non-finite loss without a host sync per step, and reporting it.

Each update returns its loss and an ``isfinite`` flag as device scalars. :class:`StepLog`
queues them and reads them back in one transfer when losses are needed anyway (a progress
line, an accuracy check, a checkpoint), and keeps the minibatches of the updates since the
parameters were last verified finite (a finite loss can come with an update that
overflowed). When something is not finite, :func:`report` gathers what was seen and
:func:`stop` writes it to ``nonfinite.json`` and raises :class:`NonFiniteLossError`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jcnn import files

__all__ = ["NonFiniteLossError", "StepLog", "all_finite", "nonfinite_leaves", "report", "stop"]


class NonFiniteLossError(FloatingPointError):
    """Training met a non-finite loss (or an update that made the parameters or batchnorm
    statistics non-finite). The message names the iteration; ``report`` holds what was seen
    (iteration, loss, learning rate, the minibatch's indices and labels, ...) and
    ``report_path`` the ``nonfinite.json`` it was written to (None if none was).

    Args:
      message: the error message.
      report: the :func:`report` of the step (copied into a ``dict``; None: empty).
      report_path (Path | None): where the report was written, or None.
    """

    def __init__(self, message: str, report: Mapping[str, Any] | None = None, report_path=None):
        super().__init__(message)
        self.report = dict(report or {})
        self.report_path = report_path


def all_finite(tree: Any) -> jax.Array:
    """One boolean: every floating leaf of ``tree`` is finite (use inside ``jit``).

    Args:
      tree: a pytree of arrays (parameters, model state, a loss); integer and boolean leaves
        are skipped.

    Returns:
      A scalar boolean array, ``True`` when every floating leaf is free of NaN and inf (also
      when there are no floating leaves).
    """
    checks = [
        jnp.all(jnp.isfinite(leaf))
        for leaf in jax.tree_util.tree_leaves(tree)
        if jnp.issubdtype(jnp.asarray(leaf).dtype, jnp.inexact)
    ]
    return jnp.all(jnp.stack(checks)) if checks else jnp.bool_(True)


def nonfinite_leaves(arrays: Mapping[str, np.ndarray]) -> list[str]:
    """The names of the floating host arrays that hold NaN or inf.

    Args:
      arrays: name → NumPy array (e.g. a flattened checkpoint); non-floating ones are skipped.

    Returns:
      The names, in ``arrays``' order, of the floating arrays with a NaN or an inf.
    """
    return [
        name
        for name, a in arrays.items()
        if np.issubdtype(a.dtype, np.inexact) and not np.isfinite(a).all()
    ]


# Updates the host may have queued beyond the ones known to be done (see StepLog.add).
UPDATES_IN_FLIGHT = 2


@dataclasses.dataclass
class StepLog:
    """The updates whose loss has not been read back yet, and those since the parameters
    were last verified finite.

    Attributes:
      pending: ``(loss, finite, iteration, indices)`` per update not read back (device
        scalars; ``iteration`` counts from 1).
      verified_iteration: the iteration after which the parameters were verified finite.
      unverified: ``(iteration, indices)`` of every update since then.
    """

    pending: list[tuple[jax.Array, jax.Array, int, np.ndarray]] = dataclasses.field(
        default_factory=list
    )
    verified_iteration: int = 0
    unverified: list[tuple[int, np.ndarray]] = dataclasses.field(default_factory=list)

    def add(self, loss: jax.Array, finite: jax.Array, iteration: int, indices: Any) -> None:
        """Queue one update's loss and flag, then wait until at most
        :data:`UPDATES_IN_FLIGHT` updates are still computing: JAX returns from a step before
        it has run, and a host that ran far ahead would make a stop request wait for every
        update it had queued (seconds to minutes), while two in flight keep the CPU busy.

        Args:
          loss: the update's loss, a device scalar.
          finite: its :func:`all_finite` flag, a device scalar boolean.
          iteration: the update's number, counting from 1.
          indices: the minibatch's example indices (kept for a report).
        """
        self.pending.append((loss, finite, iteration, indices))
        self.unverified.append((iteration, indices))
        if len(self.pending) > UPDATES_IN_FLIGHT:
            self.pending[-1 - UPDATES_IN_FLIGHT][0].block_until_ready()

    def read(self) -> list[tuple[float, bool, int, np.ndarray]]:
        """The pending ``(loss, finite, iteration, indices)`` as host values (one transfer),
        emptying the queue.

        Returns:
          One ``(loss, finite, iteration, indices)`` per queued update, oldest first:
          ``loss`` a Python ``float``, ``finite`` a ``bool``, ``iteration`` and ``indices``
          as given to :meth:`add`.
        """
        pending, self.pending = self.pending, []
        values = jax.device_get([(loss, ok) for loss, ok, _, _ in pending])
        return [
            (float(loss), bool(ok), it, idx)
            for (loss, ok), (_, _, it, idx) in zip(values, pending, strict=True)
        ]

    def verified(self, iteration: int) -> None:
        """The parameters after ``iteration`` are known to be finite.

        Args:
          iteration: the last update whose result was verified finite; the list of
            unverified updates is emptied.
        """
        self.verified_iteration = iteration
        self.unverified = []


def _json_float(v: float) -> float | None:
    return files.to_json_values(float(v))


def report(
    log: StepLog,
    *,
    iteration: int,
    loss: float,
    indices: Any,
    labels: Any,
    learning_rate: float,
    iterations_per_epoch: int,
    num_iterations: int,
    recent_losses: list[float],
    detected_after: int | None = None,
    params: bool = False,
    cause: BaseException | None = None,
    **context: Any,
) -> dict[str, Any]:
    """What a non-finite step looked like, as plain JSON values.

    ``params``: the loss was finite but the parameters or statistics after ``iteration``
    are not (found at a verification). ``context`` (e.g. ``update_rule``, ``seed``,
    ``last_good_checkpoint``) is recorded as given. Non-finite floats become None
    (:mod:`jcnn.files`' policy); the message of :func:`stop` names the value.

    Args:
      log: the run's :class:`StepLog` (its verified iteration and unverified minibatches are
        recorded, those up to ``iteration``).
      iteration: the update that was not finite, counting from 1.
      loss: its loss (may be NaN or inf).
      indices: the minibatch's example indices, shape ``(N,)``.
      labels: the minibatch's labels, shape ``(N,)``.
      learning_rate: the learning rate of that update.
      iterations_per_epoch: to give the epoch (counting from 1).
      num_iterations: updates in the whole run.
      recent_losses: the last losses read back before it.
      detected_after: the iteration at which it was found, if later than ``iteration``
        (None: at ``iteration``).
      params: True when the loss was finite but the parameters or statistics are not.
      cause: the exception that revealed it, if any (recorded as ``'Type: message'``).
      **context: further JSON-able entries, recorded as given.

    Returns:
      A ``dict`` of plain JSON values: ``error``, ``iteration``, ``epoch``,
      ``num_iterations``, ``loss``, ``learning_rate``, ``batch_indices``, ``batch_labels``,
      ``recent_losses``, ``detected_after_iteration``, ``params_verified_after_iteration``,
      ``unverified_batch_indices`` (iteration as a string → indices), the ``context``
      entries, ``jax_debug_nans``, ``cause`` and ``time``.

    Raises:
      TypeError: a ``context`` value has no JSON form (:func:`jcnn.files.to_json_values`).
    """
    what = "parameters after the update (finite loss)" if params else "loss"
    return files.to_json_values(
        {
            "error": f"non-finite {what}",
            "iteration": iteration,
            "epoch": (iteration - 1) // iterations_per_epoch + 1,
            "num_iterations": num_iterations,
            "loss": _json_float(loss),
            "learning_rate": learning_rate,
            "batch_indices": np.asarray(indices).tolist(),
            "batch_labels": np.asarray(labels).tolist(),
            "recent_losses": [_json_float(v) for v in recent_losses],
            "detected_after_iteration": iteration if detected_after is None else detected_after,
            # Params/state were verified finite after this iteration; any update since then
            # (their minibatches below) may be the one that made them non-finite.
            "params_verified_after_iteration": log.verified_iteration,
            "unverified_batch_indices": {
                str(t): np.asarray(i).tolist() for t, i in log.unverified if t <= iteration
            },
            **context,
            "jax_debug_nans": bool(jax.config.jax_debug_nans),  # type: ignore[attr-defined]
            "cause": None if cause is None else f"{type(cause).__name__}: {cause}",
            "time": dt.datetime.now().isoformat(timespec="seconds"),
        }
    )


def stop(
    found: Mapping[str, Any],
    *,
    loss: float,
    path: Path | None,
    write: bool = True,
    last_checkpoint: Path | None = None,
    cause: BaseException | None = None,
) -> None:
    """Write the :func:`report` ``found`` to ``path`` (if given and ``write``) and raise
    :class:`NonFiniteLossError` with a one-paragraph message naming the iteration, epoch,
    learning rate, loss and what was kept.

    Args:
      found: a :func:`report`.
      loss: the loss as read back (its ``repr`` goes in the message, e.g. ``nan``).
      path: where to write ``found`` (``nonfinite.json``), or None to write nothing.
      write: False to leave ``path`` unwritten (e.g. on a process other than the primary)
        while still naming it in the message.
      last_checkpoint: the last good checkpoint, named in the message as kept, or None.
      cause: the exception to chain the error to (``raise ... from cause``), or None.

    Returns:
      Never returns.

    Raises:
      NonFiniteLossError: always, carrying ``found`` and ``path``.
      OSError: ``path`` could not be written (then nothing else is raised).
    """

    if path is not None and write:
        files.write_json(path, found)
    iteration, verified = found["iteration"], found["params_verified_after_iteration"]
    where = f"; details in {path}" if path is not None else ""
    kept = (
        f"; the last good checkpoint, {last_checkpoint}, is kept"
        if last_checkpoint is not None
        else ""
    )
    since = (
        f"; parameters last verified finite after iteration {verified}"
        if iteration - verified > 1
        else ""
    )
    raise NonFiniteLossError(
        f"{found['error']} at iteration {iteration} / {found['num_iterations']} (epoch "
        f"{found['epoch']}, learning rate {found['learning_rate']:g}, loss {loss!r}){since}: "
        f"training stopped{where}{kept}",
        found,
        path,
    ) from cause
