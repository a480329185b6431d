"""Throughput and time left during a training run, beside the cs231n progress lines.

After each ``(Iteration t / T) loss: ...`` line the apps print one more line::

    [######--------------]  31.2%  412 img/s  12:05 left

on a terminal (the bar), and the same figures without the bar in a log file or under CI::

    31.2% done, 412 img/s, 12:05 left

Throughput counts training images over training time in this process from its first
progress line on (so the step's compilation is left out; that first line says "measuring
speed"); accuracy checks, checkpoints and plots are left out too. Time left is the remaining
updates at that rate (accuracy checks come on top).
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

BAR_WIDTH = 20


def format_duration(seconds: float) -> str:
    """``'1:02:03'`` for an hour or more, else ``'02:03'``."""
    s = max(0, round(seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def progress_line(
    done: int, total: int, images_per_s: float | None, batch_size: int, *, bar: bool
) -> str:
    """The line printed after an iteration line (see the module docs): ``done`` of ``total``
    updates of ``batch_size`` images at ``images_per_s`` (None: not known yet)."""
    frac = done / total if total else 1.0
    pct = f"{100 * frac:.1f}%"
    if images_per_s is None or images_per_s <= 0:
        speed, left = "measuring speed", ""
    else:
        speed = f"{images_per_s:,.0f} img/s"
        left = format_duration(max(total - done, 0) * batch_size / images_per_s)
    if bar:
        filled = round(BAR_WIDTH * frac)
        text = f"[{'#' * filled}{'-' * (BAR_WIDTH - filled)}] {pct:>6}  {speed}"
        return text + (f"  {left} left" if left else "")
    return f"{pct} done, {speed}" + (f", {left} left" if left else "")


class Progress:
    """The Solver's ``on_progress`` hook for the apps (printing on process 0 only).

    Throughput is read from the run's clock (:meth:`jcnn.run_state.RunState.training_s`),
    which leaves out accuracy checks, checkpoints and plots.

    Args:
      batch_size: images per update.
      stream: where to print (default stdout); a terminal gets the bar.
      enabled: False prints nothing (processes other than 0).
    """

    def __init__(self, batch_size: int, *, stream: TextIO | None = None, enabled: bool = True):
        self.batch_size = int(batch_size)
        self.stream = stream
        self.enabled = enabled
        self.start_training_s = 0.0
        self.start_iteration = 0
        self.warm = False

    def start(self, solver: Any) -> None:
        """Count from the first progress line after now (a resumed run too)."""
        self._count_from(solver, solver.iteration)
        self.warm = False

    def _count_from(self, solver: Any, iteration: int) -> None:
        self.start_training_s = solver.run.training_s()
        self.start_iteration = iteration

    def images_per_s(self, solver: Any, iteration: int) -> float | None:
        """Training images per second of training time since :meth:`start`."""
        seconds = solver.run.training_s() - self.start_training_s
        updates = iteration - self.start_iteration
        if updates <= 0 or seconds <= 0:
            return None
        return updates * self.batch_size / seconds

    def __call__(self, solver: Any, iteration: int) -> None:
        if not self.enabled:
            return
        stream = self.stream or sys.stdout
        line = progress_line(
            iteration,
            solver.num_iterations,
            self.images_per_s(solver, iteration) if self.warm else None,
            self.batch_size,
            bar=stream.isatty(),
        )
        print(line, file=stream, flush=True)
        if not self.warm:  # the first line follows the compilation: count from here on
            self._count_from(solver, iteration)
            self.warm = True
