"""Plots of a training run: loss, train/val accuracy per epoch, first-layer filters.

>>> fig = plot_loss(solver.loss_history)                                     # doctest: +SKIP
>>> save_figure(plot_filters(solver.params['conv1']['w']), 'filters.png')    # doctest: +SKIP

matplotlib is an optional dependency (``pip install jcnn[plots]``), imported only when a plot
is drawn. Figures are built on matplotlib's object API with the Agg canvas, never through
``pyplot``: no global figure state, no GUI backend, safe in scripts, threads and servers (in
a notebook, ``display(fig)`` shows one). :func:`filter_grid` is plain numpy and needs no
matplotlib.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "filter_grid",
    "new_figure",
    "plot_accuracy",
    "plot_filters",
    "plot_loss",
    "save_figure",
]


def new_figure(figsize: tuple[float, float] = (6.4, 4.0)):
    """A matplotlib ``Figure`` attached to an Agg canvas (no pyplot involved).

    Args:
        figsize: ``(width, height)`` in inches.

    Returns:
        A ``matplotlib.figure.Figure`` with constrained layout.

    Raises:
        ImportError: if matplotlib is not installed (the message says how to install it).
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "jcnn.viz needs matplotlib: pip install 'jcnn[plots]' (or pip install matplotlib)"
        ) from e
    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path: str | os.PathLike, *, dpi: int = 100) -> Path:
    """Write ``fig`` as an image (format from the suffix, e.g. ``.png``) and return the path.
    The folder is created if needed.

    Args:
        fig: a matplotlib ``Figure`` (e.g. from :func:`plot_loss`).
        path: the file to write; its suffix picks the format.
        dpi: resolution in dots per inch.

    Returns:
        ``path`` as a :class:`pathlib.Path`.

    Raises:
        OSError: if the folder cannot be created or the file cannot be written.
        ValueError: from matplotlib if the suffix is not a format it can write.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path


def _moving_average(values: np.ndarray, window: int) -> np.ndarray:
    kernel = np.ones(window) / window
    return np.convolve(values, kernel, mode="valid")


def plot_loss(
    loss_history: Sequence[float],
    *,
    iterations_per_epoch: int | None = None,
    smooth: int | None = None,
    title: str = "Training loss",
):
    """The loss of every iteration (faint dots, as cs231n plots them) and its moving average
    over ``smooth`` iterations (default: about 1/50 of the run, at least 1). With
    ``iterations_per_epoch`` the x axis is in epochs.

    Args:
        loss_history: the loss of each iteration, any shape (flattened), e.g.
            ``solver.loss_history``; empty gives empty axes.
        iterations_per_epoch: if given (and nonzero), the x axis is ``iteration / this``.
        smooth: moving-average window in iterations; None: ``max(1, len // 50)``. No average
            is drawn for a window of 1 or longer than the history.
        title: the axes' title.

    Returns:
        A matplotlib ``Figure`` (see :func:`new_figure`).

    Raises:
        ImportError: if matplotlib is not installed.
    """
    loss = np.asarray(loss_history, dtype=np.float64).reshape(-1)
    fig = new_figure()
    ax = fig.add_subplot()
    if loss.size:
        x = np.arange(1, loss.size + 1, dtype=np.float64)
        xlabel = "iteration"
        if iterations_per_epoch:
            x = x / iterations_per_epoch
            xlabel = "epoch"
        ax.plot(x, loss, "o", markersize=2, alpha=0.3, color="tab:blue", label="loss")
        window = smooth if smooth else max(1, loss.size // 50)
        if 1 < window <= loss.size:
            avg = _moving_average(loss, window)
            ax.plot(x[window - 1 :], avg, color="tab:orange", label=f"mean of {window}")
        ax.set_xlabel(xlabel)
        ax.legend(loc="upper right")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    return fig


def plot_accuracy(
    train_acc_history: Sequence[float],
    val_acc_history: Sequence[float],
    epochs: Sequence[float] | None = None,
    *,
    title: str = "Classification accuracy",
):
    """Train and validation accuracy at each check; ``epochs`` (default 0, 1, 2, ...) gives
    the x position of each check.

    Args:
        train_acc_history: training accuracy at each check, shape ``(K,)`` (flattened).
        val_acc_history: validation accuracy at each check, shape ``(K,)``.
        epochs: x position of each check, shape ``(K,)``; None: ``0, 1, ..., K − 1``.
        title: the axes' title.

    Returns:
        A matplotlib ``Figure`` (see :func:`new_figure`), y axis from 0 to 1.

    Raises:
        ValueError: if the two histories differ in length, or ``epochs`` is not ``(K,)``.
        ImportError: if matplotlib is not installed.
    """
    train = np.asarray(train_acc_history, dtype=np.float64).reshape(-1)
    val = np.asarray(val_acc_history, dtype=np.float64).reshape(-1)
    if train.shape != val.shape:
        raise ValueError(
            f"train_acc_history and val_acc_history differ in length: {train.size} vs {val.size}"
        )
    x = np.arange(train.size) if epochs is None else np.asarray(epochs, dtype=np.float64)
    if x.shape != train.shape:
        raise ValueError(f"epochs has {x.size} entries, the histories have {train.size}")
    fig = new_figure()
    ax = fig.add_subplot()
    ax.plot(x, train, "-o", label="train")
    ax.plot(x, val, "-o", label="val")
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0.0, 1.0)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right")
    return fig


def filter_grid(w: Any, *, padding: int = 1) -> np.ndarray:
    """Filters ``w`` (F, C, HH, WW) tiled into one image, as cs231n's ``visualize_grid``.

    Each filter is rescaled on its own to [0, 1] (a constant filter becomes 0.5) and laid out
    on a ``ceil(sqrt(F))``-wide grid with ``padding`` pixels of background (0) between tiles.
    Returns float64 ``(H, W, 3)`` for RGB filters (C = 3) and ``(H, W)`` otherwise; for C
    other than 1 and 3 every channel of every filter gets its own grey tile.

    Args:
        w: filter bank ``(F, C, HH, WW)``, array-like.
        padding: pixels of background between tiles, >= 0.

    Returns:
        float64 ``(rows·HH + (rows − 1)·padding, cols·WW + (cols − 1)·padding)``, with
        a last axis of 3 when C = 3, where ``n`` tiles (F, or F·C when C is not 3) are laid
        out in ``cols = ceil(sqrt(n))`` columns and ``rows = ceil(n / cols)`` rows.

    Raises:
        ValueError: if ``w`` is not rank 4, has an empty axis, or ``padding`` is negative.
    """
    w = np.asarray(w, dtype=np.float64)
    if w.ndim != 4:
        raise ValueError(f"w must be a filter bank (F, C, HH, WW), got shape {w.shape}")
    if min(w.shape) == 0:
        raise ValueError(f"w has an empty axis: shape {w.shape}")
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    f, c, hh, ww = w.shape
    if c == 3:
        tiles = w.transpose(0, 2, 3, 1)  # (F, HH, WW, 3)
    else:
        tiles = w.reshape(f * c, hh, ww)
    n = tiles.shape[0]
    lo = tiles.reshape(n, -1).min(axis=1)
    hi = tiles.reshape(n, -1).max(axis=1)
    span = hi - lo
    shape = (n,) + (1,) * (tiles.ndim - 1)
    scaled = np.where(
        span.reshape(shape) > 0,
        (tiles - lo.reshape(shape)) / np.where(span > 0, span, 1.0).reshape(shape),
        0.5,
    )
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.zeros(
        (rows * hh + (rows - 1) * padding, cols * ww + (cols - 1) * padding) + tiles.shape[3:]
    )
    for i in range(n):
        r, q = divmod(i, cols)
        y, x = r * (hh + padding), q * (ww + padding)
        grid[y : y + hh, x : x + ww] = scaled[i]
    return grid


def plot_filters(w: Any, *, title: str = "First-layer filters", padding: int = 1):
    """The filter bank ``w`` (F, C, HH, WW) as an image grid (see :func:`filter_grid`).

    Args:
        w: filter bank ``(F, C, HH, WW)``, e.g. ``params['conv1']['w']``.
        title: the axes' title.
        padding: pixels of background between tiles, >= 0.

    Returns:
        A 5 × 5 inch matplotlib ``Figure``: the grid in colour for C = 3, in grey otherwise.

    Raises:
        ValueError: as :func:`filter_grid`.
        ImportError: if matplotlib is not installed.
    """
    grid = filter_grid(w, padding=padding)
    fig = new_figure((5.0, 5.0))
    ax = fig.add_subplot()
    if grid.ndim == 3:
        ax.imshow(grid, interpolation="nearest")
    else:
        ax.imshow(grid, cmap="gray", interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(title)
    return fig
