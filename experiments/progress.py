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
import time
from collections.abc import Callable
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

    Args:
      batch_size: images per update.
      outside_s: seconds spent outside training steps so far (accuracy checks, checkpoints,
        plots; e.g. :attr:`experiments.rundir.RunLogger.outside_training_s`), left out of
        the throughput.
      stream: where to print (default stdout); a terminal gets the bar.
      enabled: False prints nothing (processes other than 0).
    """

    def __init__(
        self,
        batch_size: int,
        outside_s: Callable[[], float] = lambda: 0.0,
        *,
        stream: TextIO | None = None,
        enabled: bool = True,
    ):
        self.batch_size = int(batch_size)
        self.outside_s = outside_s
        self.stream = stream
        self.enabled = enabled
        self.t0 = time.perf_counter()
        self.outside0 = 0.0
        self.start_iteration = 0
        self.warm = False

    def start(self, solver: Any) -> None:
        """Count from the first progress line after now (a resumed run too)."""
        self._count_from(solver.iteration)
        self.warm = False

    def _count_from(self, iteration: int) -> None:
        self.t0 = time.perf_counter()
        self.outside0 = self.outside_s()
        self.start_iteration = iteration

    def images_per_s(self, iteration: int) -> float | None:
        """Training images per second of training time since :meth:`start`."""
        seconds = time.perf_counter() - self.t0 - (self.outside_s() - self.outside0)
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
            self.images_per_s(iteration) if self.warm else None,
            self.batch_size,
            bar=stream.isatty(),
        )
        print(line, file=stream, flush=True)
        if not self.warm:  # the first line follows the compilation: count from here on
            self._count_from(iteration)
            self.warm = True
