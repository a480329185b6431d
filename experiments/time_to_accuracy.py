"""The time-to-accuracy table and plot of docs/results.md, drawn from the measured points
it lists (one row per recipe and setting; each figure's command is in docs/results.md).

    python -m experiments.time_to_accuracy                        # prints the table
    python -m experiments.time_to_accuracy --plot=docs/time_to_accuracy.png

``--points`` (default ``docs/time_to_accuracy.csv``) has one row per point: ``label`` (the
plot's), ``recipe`` (the flagfile and flags), ``seeds``, ``tta`` (test accuracy with
test-time augmentation, the mean over the seeds), ``tta_std`` (their sample standard
deviation; empty for one seed), ``plain`` (without test-time augmentation), ``wall_min``,
``train_min`` (minutes, means over the seeds), ``pflop`` (the training updates' arithmetic),
``peak_gb`` (peak resident memory; empty where not measured) and ``cpu``.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from absl import flags

from experiments.errors import UsageFailure, run_app

COLUMNS = ("label", "recipe", "seeds", "tta", "tta_std", "plain", "wall_min", "train_min",
           "pflop", "peak_gb", "cpu")  # fmt: skip
NUMBERS = ("tta", "tta_std", "plain", "wall_min", "train_min", "pflop", "peak_gb")
DEFAULT_POINTS = Path(__file__).resolve().parents[1] / "docs" / "time_to_accuracy.csv"


def read_points(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a points file, numbers as floats (None where empty).

    Raises:
        UsageFailure: the file is missing, lacks a column, or a number does not parse.
    """
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise UsageFailure(f"--points={path} cannot be read: {e.strerror}") from None
    points = []
    for i, row in enumerate(rows, start=2):  # line 1 is the header
        missing = [c for c in COLUMNS if c not in row]
        if missing:
            raise UsageFailure(f"--points={path} has no column(s) {missing}")
        try:
            point = {c: (float(row[c]) if row[c].strip() else None) for c in NUMBERS}
        except ValueError as e:
            raise UsageFailure(f"--points={path} line {i}: {e}") from None
        points.append({**row, **point})
    return points


def markdown_table(points: Sequence[dict[str, Any]]) -> str:
    """The points as docs/results.md's time-to-accuracy table."""

    def acc(p: dict[str, Any]) -> str:
        std = p["tta_std"]
        return f"{p['tta']:.4f}" if std is None else f"{p['tta']:.4f} ± {std:.4f}"

    def memory(p: dict[str, Any]) -> str:
        return "–" if p["peak_gb"] is None else f"{p['peak_gb']:.1f} GB"

    lines = [
        "| recipe | seeds | test acc (TTA) | without TTA | wall | training | PFLOP "
        "| peak memory | CPU |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for p in points:
        lines.append(
            f"| {p['recipe']} | {p['seeds']} | {acc(p)} | {p['plain']:.4f} | "
            f"{p['wall_min']:.1f} min | {p['train_min']:.1f} min | {p['pflop']:.3f} | "
            f"{memory(p)} | {p['cpu']} |"
        )
    return "\n".join(lines)


def plot(points: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Test accuracy (TTA, ± the seeds' standard deviation) against wall time (log scale),
    one point per row (its label in the legend), one marker shape per CPU, written to
    ``path``."""
    from jcnn.viz import new_figure, save_figure

    fig = new_figure((7.0, 4.2))
    ax = fig.add_subplot()
    cpus = list(dict.fromkeys(p["cpu"] for p in points))
    for p in points:
        std = 100 * (p["tta_std"] or 0.0)
        marker = "os^Dv"[cpus.index(p["cpu"]) % 5]
        ax.errorbar(
            p["wall_min"], 100 * p["tta"], yerr=std, fmt=marker, capsize=3, label=p["label"]
        )
    ax.legend(fontsize=7, loc="best")
    # Minutes on a log axis: recipes of 10 minutes and of 3 hours on one plot.
    ax.set_xscale("log")
    walls = [p["wall_min"] for p in points]
    ticks = [t for t in (5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 240, 360)
             if min(walls) / 1.5 <= t <= max(walls) * 1.5]  # fmt: skip
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.set_xticks([], minor=True)
    ax.set_xlabel("wall time (minutes, log scale; 2 CPU cores)")
    ax.set_ylabel("CIFAR-10 test accuracy, % (TTA)")
    ax.grid(alpha=0.3)
    return save_figure(fig, path, dpi=120)


def define_flags() -> None:
    flags.DEFINE_string("points", str(DEFAULT_POINTS), "The measured points (CSV).")
    flags.DEFINE_string("plot", None, "Also draw accuracy against wall time into this image.")


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise UsageFailure(f"unexpected argument(s) {argv[1:]!r}")
    points = read_points(flags.FLAGS.points)
    print(markdown_table(points))
    if flags.FLAGS.plot:
        print(f"wrote {plot(points, flags.FLAGS.plot)}")


if __name__ == "__main__":
    define_flags()
    run_app(main)
