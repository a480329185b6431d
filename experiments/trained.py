"""What a training run keeps for using its network afterwards: ``checkpoints/best.npz`` (the
best parameters, the mean image and the classifier record) at the end, and
``preprocessing.npz`` (the mean image and the record) when it starts, so that a run still
training can be used too (:func:`jcnn.classifier.load_classifier`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from experiments import rundir
from experiments.rundir import RunWriter


def save_best(
    writer: RunWriter, solver: Any, model: Any, test_acc: float | None, data: Mapping[str, Any]
) -> None:
    """checkpoints/best.npz: the parameters with the best validation accuracy and, where the
    data say how images were prepared (``mean_image``, ``label_names``), what using them
    needs (:func:`jcnn.classifier.classifier_record`: load it with ``load_classifier``)."""
    tree = {"params": solver.params, "state": solver.state}
    meta = {
        "best_epoch": solver.best_epoch,
        "best_val_acc": solver.best_val_acc,
        "test_acc": test_acc,
        "model": rundir.model_config(model),
        "jax_version": jax.__version__,
    }
    record = _classifier_record(solver, model, data)
    if record is not None:
        tree["mean_image"] = np.asarray(data["mean_image"], np.float32)
        meta["classifier"] = record
    writer.save_checkpoint("checkpoints/best.npz", tree, meta)


def repair_best(
    writer: RunWriter, solver: Any, model: Any, summary: Mapping[str, Any],
    data: Mapping[str, Any],
) -> str:  # fmt: skip
    """For a finished run found again: write ``checkpoints/best.npz`` anew from the final
    checkpoint's best parameters if it is missing or fails its checks (predict, evaluate
    and export read it); returns what was done, as `` (...)`` ("" when it was intact)."""
    from jcnn.checkpoint import CorruptCheckpointError, verify_checkpoint

    path = writer.path("checkpoints/best.npz")
    try:
        if not path.is_file():
            raise FileNotFoundError
        verify_checkpoint(path)
        return ""
    except (FileNotFoundError, CorruptCheckpointError):
        missing = not path.is_file()
    solver.train()  # no updates left: it only makes the best parameters the current ones
    save_best(writer, solver, model, summary.get("test_acc"), data)
    how = "missing" if missing else "damaged"
    return f" ({path} was {how}: written again from the run's last checkpoint)"


def _classifier_record(solver: Any, model: Any, data: Mapping[str, Any]) -> dict | None:
    """The run's :func:`jcnn.classifier.classifier_record` (None: the data do not say how
    their images were prepared)."""
    from jcnn.classifier import classifier_record

    mean, names = data.get("mean_image"), data.get("label_names")
    if mean is None or names is None:
        return None
    return classifier_record(
        model, class_names=names, mean_image=mean, test_time_flip=solver.test_time_flip,
        test_time_translate=solver.test_time_translate,
    )  # fmt: skip


def save_preprocessing(writer: RunWriter, solver: Any, model: Any, data: Mapping[str, Any]) -> None:
    """``preprocessing.npz``, before training: the mean image and the classifier record, so
    that a run still training can be used with its best parameters so far
    (:func:`jcnn.classifier.load_classifier`)."""
    from jcnn.classifier import PREPROCESSING

    record = _classifier_record(solver, model, data)
    if record is not None:
        mean = np.asarray(data["mean_image"], np.float32)
        writer.save_checkpoint(str(PREPROCESSING), {"mean_image": mean}, {"classifier": record})
