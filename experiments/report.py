"""What a training run says and writes around its training: the line before it (app,
recipe, model, data, devices, workdir) and, after it, the test accuracy (with and without
test-time augmentation), best.npz, the final plots, summary.json and the closing line."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from experiments import errors, rundir
from experiments.rundir import RunWriter
from experiments.trained import save_best
from jcnn import files


def printer(primary: bool) -> Callable[..., None]:
    """``print`` on the process that reports (process 0), a no-op elsewhere."""
    return print if primary else (lambda *args, **kwargs: None)


def recipe_names(argv: Sequence[str]) -> list[str]:
    """The flagfiles on a command line, by name (``vgg_seed.cfg``), in order."""
    names, it = [], iter(argv)
    for arg in it:
        if arg.startswith("--flagfile="):
            names.append(Path(arg.split("=", 1)[1]).name)
        elif arg == "--flagfile":
            names.append(Path(next(it, "")).name)
    return [n for n in names if n]


def describe_run(
    app_name: str, model: Any, solver: Any, data: Mapping[str, Any], mesh: Any, workdir: Path
) -> str:
    """The line an app prints before training: app and recipe (its flagfiles), model, data,
    schedule, devices (the CPU's model and jcnn's compiled kernels on a CPU), workdir."""
    dev = rundir.describe_device(mesh)
    procs = f" in {dev['process_count']} processes" if dev["process_count"] > 1 else ""
    where = f"{dev['platform']} ({dev['device_kind']})"
    if dev["platform"] == "cpu":
        from experiments.benchmark.machine import cpu_model
        from jcnn import native

        built = [
            name for name, lib in (("oneDNN", "onednn"), ("jcnn", "kernels")) if native.load(lib)
        ]
        kernels = " and ".join(built) + " kernels" if built else "XLA only"
        where = f"cpu ({cpu_model() or 'unknown model'}, {os.cpu_count()} cores; {kernels})"
    recipes = recipe_names(sys.argv[1:])
    recipe = f" ({', '.join(recipes)})" if recipes else ""
    return (
        f"{app_name}{recipe}: {type(model).__name__}, {rundir.num_params(solver.params):,} "
        "parameters; "
        f"{solver.num_train} train / {len(data['y_val'])} val images; "
        f"{solver.num_epochs} epochs x {solver.iterations_per_epoch} iterations of "
        f"{solver.batch_size}; {where} x {dev['mesh_devices']}{procs}; writing to {workdir}"
    )


def accuracies_on_test(
    solver: Any, data: Mapping[str, Any], confidence: float | None = None
) -> dict[str, Any]:
    """The best parameters' accuracy on the test split: ``test_acc`` (None without a test
    split) with the run's test-time augmentation if it has one (given only to images less
    sure than ``confidence``, if set), and then also ``test_acc_without_tta`` and
    ``test_time_augmented`` (the fraction of the test images that got it)."""
    X_test = data.get("X_test")
    if X_test is None or not len(X_test):
        return {"test_acc": None}
    y = np.asarray(data["y_test"])
    if not (solver.test_time_flip or solver.test_time_translate):
        return {"test_acc": solver.check_accuracy(X_test, y)}
    found = solver.test_time_predictions(X_test, confidence=confidence)
    return {
        "test_acc": float(np.mean(found.labels == y)),
        "test_acc_without_tta": float(np.mean(found.plain == y)),
        "test_time_augmented": float(np.mean(found.unsure)),
    }


def finish_run(
    solver: Any,
    model: Any,
    data: Mapping[str, Any],
    writer: RunWriter,
    *,
    app_name: str,
    config: Mapping[str, Any],
    plots: bool,
    start_iteration: int,
    timings: Mapping[str, float],
) -> dict[str, Any]:
    """After training: the test accuracy, best.npz, the final plots, summary.json and the
    closing line; returns the summary. ``timings``: the run's start (``start``, a
    ``perf_counter``), the seconds spent loading the data (``data_s``), and this session's
    seconds of training and outside it (``train_s``, ``outside_training_s``: what
    :func:`experiments.train.run_training` returns)."""
    from jcnn.parallel import is_primary

    accuracies = accuracies_on_test(solver, data, config.get("test_time_confidence"))
    test_acc, plain_acc = accuracies["test_acc"], accuracies.get("test_acc_without_tta")
    save_best(writer, solver, model, test_acc, data)
    if plots:
        rundir.write_plots(writer, solver)
    timings = {
        "wall_s": time.perf_counter() - timings["start"],
        "data_s": timings["data_s"],
        "train_s": max(timings["train_s"], 1e-9),
        "outside_training_s": timings["outside_training_s"],
    }
    summary = rundir.make_summary(
        solver, app_name=app_name, model=model, config=config, test_acc=test_acc,
        timings=timings, start_iteration=start_iteration,
    )  # fmt: skip
    summary.update({k: v for k, v in accuracies.items() if k != "test_acc"})
    summary = files.to_json_values(summary)  # plain JSON values, exactly what the file holds
    writer.write_json("summary.json", summary)
    errors.results_written()  # a signal from here on ends no run
    test = "n/a" if test_acc is None else f"{test_acc:f}"
    if plain_acc is not None:
        test += f" ({plain_acc:f} without test-time augmentation)"
    chosen = (
        f"best val_acc: {solver.best_val_acc:f} (epoch {solver.best_epoch}); test acc of the "
        "best parameters"
        if len(solver.y_val)
        else f"no validation split: the final parameters (epoch {solver.best_epoch}); test acc"
    )
    speed = summary["images_per_s"]  # None: no update left to time in this session
    speed = "no updates left to train" if speed is None else f"{speed} training images/s"
    printer(is_primary())(
        f"{chosen}: {test}; {speed}; "
        f"wall time {summary['wall_time_s']:.1f} s; files in {writer.workdir}",
        flush=True,
    )
    return summary
