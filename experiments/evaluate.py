"""Evaluate a finished CIFAR-10 run's best parameters again, with and without test-time
augmentation.

    python -m experiments.evaluate --workdir=runs/vgg_best
    python -m experiments.evaluate --workdir=runs/vgg_best --num_test=10000 --data_dir=DIR

Reads the run's flags and model from ``<workdir>/config.json``, its parameters from
``<workdir>/checkpoints/best.npz`` (written when the run ends), loads the same CIFAR-10
split, and measures the validation and test accuracy plainly and with ``test_time_flip``
(each image classified by its scores plus those of its left-right mirror; see
:class:`jcnn.solver.Solver`); for a run with ``--test_time_translate`` (the airbench
recipe) also with the flips and those shifts, as the run itself was scored. A run without
a validation split (``--num_val=0``) gets ``n/a`` there. ``--num_test`` evaluates on more
of the 10,000 test images than the run did (on 1,000 images the standard error is about
one point). ``--confidences=0.5,0.9`` also measures, for each confidence c, the run's
test-time augmentation given only to the test images whose plain prediction's softmax
confidence is below c (as ``--test_time_confidence=c`` does in a run): the accuracy, the
fraction augmented, and the seconds against those of augmenting every image (c = 1).
Prints a table and writes ``<workdir>/evaluation.json`` (one entry per number of test
images evaluated; nothing else in the workdir is touched).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from absl import flags

from experiments import recipes
from experiments.config import CIFAR10_TEST
from experiments.errors import UsageFailure, failures_in_one_line, run_app
from experiments.rundata import check_not_a_file, data_shape, load_data
from experiments.rundir import RunWriter
from experiments.train import build_model

RECIPES = recipes.RECIPE_CLASSES  # the recipe class of each training app's runs
# Key suffixes of the test-time augmentations measured (see `tta_views`).
PLAIN, FLIP, FLIP_SHIFT = "", "_flip", "_flip_shift"
EVALUATION_FILE = "evaluation.json"


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
    flags.DEFINE_string("workdir", None, "The run's workdir (holds config.json).", flag_values=fv)
    flags.mark_flag_as_required("workdir", flag_values=fv)
    flags.DEFINE_string(
        "data_dir", None, "Folder holding cifar-10-batches-py/ (default: the run's).",
        flag_values=fv,
    )  # fmt: skip
    flags.DEFINE_integer(
        "num_test", None, "Test images (the first of the test batch; default: the run's).",
        lower_bound=1, upper_bound=CIFAR10_TEST, flag_values=fv,
    )  # fmt: skip
    flags.DEFINE_list(
        "confidences", [], "Also measure the run's test-time augmentation given only to the "
        "test images whose plain prediction is less sure than each of these softmax "
        "confidences (e.g. 0.5,0.9): accuracy, fraction augmented and seconds.", flag_values=fv,
    )  # fmt: skip


def read_run(workdir: Path) -> dict[str, Any]:
    """The run's ``config.json``; one line (UsageFailure) if it is missing or not a run."""
    path = workdir / "config.json"
    try:
        started = json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageFailure(
            f"--workdir={workdir} holds no config.json: not the workdir of a "
            f"{' or '.join(RECIPES)} run"
        ) from None
    except (OSError, ValueError) as e:
        raise UsageFailure(f"--workdir={workdir}: cannot read {path.name}: {e}") from None
    if started.get("app") not in RECIPES or not isinstance(started.get("flags"), Mapping):
        raise UsageFailure(
            f"--workdir={workdir}: config.json is from app {started.get('app')!r}; "
            f"this evaluates runs of {', '.join(RECIPES)}"
        )
    return started


def tta_views(config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The test-time augmentations to measure for a run with ``config``: plain, flipped,
    and (for a run with ``test_time_translate``) flipped and shifted, as Solver arguments
    (each with the run's ``compute_dtype``, as the run itself was scored)."""
    dtype = {"compute_dtype": config.get("compute_dtype")}
    out: dict[str, dict[str, Any]] = {PLAIN: dtype, FLIP: {"test_time_flip": True, **dtype}}
    shift = int(config.get("test_time_translate") or 0)
    if shift:
        out[FLIP_SHIFT] = {"test_time_flip": True, "test_time_translate": shift, **dtype}
    return out


def evaluate(
    model: Any,
    tree: Mapping[str, Any],
    data: Mapping[str, Any],
    views: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, float | None]:
    """Val and test accuracy of ``tree['params']``/``tree['state']`` under each of
    ``views`` (key suffix -> Solver arguments; default plain and flipped):
    ``val_acc<suffix>``, ``test_acc<suffix>``, None for an empty split."""
    from jcnn.solver import Solver

    if views is None:
        views = tta_views({})

    def accuracy(solver: Solver, X: Any, y: Any) -> float | None:
        return solver.check_accuracy(X, y) if X is not None and len(X) else None

    out: dict[str, float | None] = {}
    for suffix, options in views.items():
        solver = Solver(
            model, data, params=tree["params"], state=tree["state"], select_best=False,
            verbose=False, **options,
        )  # fmt: skip
        out["val_acc" + suffix] = accuracy(solver, data["X_val"], data["y_val"])
        out["test_acc" + suffix] = accuracy(solver, data.get("X_test"), data.get("y_test"))
    return out


def where_unsure(
    model: Any,
    tree: Mapping[str, Any],
    data: Mapping[str, Any],
    options: Mapping[str, Any],
    confidences: Sequence[float],
) -> list[dict[str, float]]:
    """For each confidence c: the test accuracy with the test-time augmentation ``options``
    given only to images whose plain prediction is less sure than c, the fraction of them,
    and the seconds it took (after a first, compiling pass)."""
    import numpy as np

    from jcnn.solver import Solver

    X, y = data.get("X_test"), data.get("y_test")
    if X is None or not len(X) or not confidences:
        return []
    solver = Solver(
        model, data, params=tree["params"], state=tree["state"], select_best=False,
        verbose=False, **options,
    )  # fmt: skip
    solver.test_time_predictions(X[:200], confidence=None)  # compile both steps
    rows = []
    for c in confidences:
        t0 = time.perf_counter()
        found = solver.test_time_predictions(X, confidence=c)
        seconds = time.perf_counter() - t0
        rows.append(
            {"confidence": c, "test_acc": float(np.mean(found.labels == y)),
             "augmented": float(np.mean(found.unsure)), "seconds": round(seconds, 2)}
        )  # fmt: skip
    return rows


def _confidences(values: Sequence[str]) -> list[float]:
    try:
        out = [float(v) for v in values]
    except ValueError:
        raise UsageFailure(f"--confidences must be numbers in [0, 1], got {list(values)}") from None
    if any(not 0.0 <= c <= 1.0 for c in out):
        raise UsageFailure(f"--confidences must be numbers in [0, 1], got {list(values)}")
    return out


def run(fv: flags.FlagValues = flags.FLAGS) -> dict[str, Any]:
    """Evaluate the checkpoint ``fv`` names; returns (and records) the result."""
    import jax
    import numpy as np

    from jcnn.checkpoint import load_checkpoint, verify_checkpoint
    from jcnn.solver_checkpoints import check_values

    workdir = Path(fv.workdir)
    confidences = _confidences(fv.confidences)
    started = read_run(workdir)
    config = dict(started["flags"])
    if fv.data_dir is not None:
        check_not_a_file("data_dir", fv.data_dir)
        config["data_dir"] = fv.data_dir
    if fv.num_test is not None:
        config["num_test"] = fv.num_test
    try:
        model = build_model(RECIPES[started["app"]], {**config, **data_shape(config)})
    except (KeyError, ValueError) as e:
        raise UsageFailure(f"--workdir={workdir}: config.json's model: {e}") from None
    path = workdir / "checkpoints" / "best.npz"
    if not path.is_file():
        raise UsageFailure(
            f"--workdir={workdir} holds no checkpoints/best.npz: the run has not finished "
            "(running its command again resumes it)"
        )
    like = dict(zip(("params", "state"), model.init(jax.random.key(0)), strict=True))
    try:
        if "classifier" in verify_checkpoint(path):  # the mean image is beside them
            like["mean_image"] = np.zeros(model.input_shape, np.float32)
        tree, meta = load_checkpoint(path, like)
        check_values(tree)  # without its checksums a file is only as good as its values
    except ValueError as e:  # corrupt, parameters of another model, or values no run writes
        raise UsageFailure(f"--workdir={workdir}: {path.name}: {e}") from None
    data = load_data(config)
    t0 = time.perf_counter()
    result = {
        "checkpoint": str(path.relative_to(workdir)),
        "epoch": meta.get("best_epoch"),
        "num_val": int(len(data["y_val"])),
        "num_test": int(len(data.get("y_test", ()))),
        **evaluate(model, tree, data, tta_views(config)),
    }
    result["seconds"] = round(time.perf_counter() - t0, 1)
    views = tta_views(config)
    if len(views) > 1:  # the run's own augmentation is the last view
        result["where_unsure"] = where_unsure(
            model, tree, data, views[list(views)[-1]], confidences
        )
    writer = RunWriter(workdir)
    records = []
    if writer.path(EVALUATION_FILE).is_file():
        records = json.loads(writer.path(EVALUATION_FILE).read_text())
    key = (result["num_val"], result["num_test"])
    records = [r for r in records if (r["num_val"], r["num_test"]) != key]
    writer.write_json(EVALUATION_FILE, [*records, result])
    return result


ROWS = {PLAIN: "plain", FLIP: "test-time flip", FLIP_SHIFT: "test-time flip and shifts"}


def format_result(result: Mapping[str, Any]) -> str:
    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.4f}"

    lines = [
        f"{result['checkpoint']} (best epoch {result['epoch']}): "
        f"{result['num_val']} val / {result['num_test']} test images",
        "| | val | test |",
        "| --- | ---: | ---: |",
    ]
    for suffix, row in ROWS.items():
        if "test_acc" + suffix in result:
            val, test = result["val_acc" + suffix], result["test_acc" + suffix]
            lines.append(f"| {row} | {pct(val)} | {pct(test)} |")
    if result.get("where_unsure"):
        lines += [
            "",
            "| test-time augmentation where the plain confidence is below | test | augmented | "
            "seconds |",
            "| ---: | ---: | ---: | ---: |",
        ]
        for r in result["where_unsure"]:
            lines.append(
                f"| {r['confidence']} | {r['test_acc']:.4f} | {r['augmented']:.1%} | "
                f"{r['seconds']:.1f} |"
            )
    return "\n".join(lines)


def main(argv: Sequence[str]) -> None:
    import jcnn.cpu

    jcnn.cpu.tune()
    if len(argv) > 1:
        raise UsageFailure(f"unexpected argument(s) {argv[1:]!r}")
    with failures_in_one_line():
        print(format_result(run()), flush=True)


if __name__ == "__main__":
    define_flags()
    run_app(main)
