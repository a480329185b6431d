"""The run's data, as the training apps see it: which (CIFAR-10 or an image folder), the
model's size it implies (:func:`data_shape`, known before anything is loaded), loading and
splitting it (:func:`load_data`), and the paths checked before any of that
(:func:`check_paths`). Every problem stops the app with one line (:mod:`experiments.errors`).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from experiments.errors import UsageFailure


def data_shape(config: Mapping[str, Any]) -> dict[str, Any]:
    """The model's ``num_classes`` and ``input_dim`` for the run's data, known before the data
    are loaded: CIFAR-10's, or an image folder's (its class folders, and ``--image_size`` or
    its first image's size); a folder that cannot be used stops the app with one line."""
    if config.get("dataset", "cifar10") != "folder":
        return {"num_classes": 10, "input_dim": (3, 32, 32)}
    from jcnn.data import DatasetError, describe_image_folder

    try:
        classes, (h, w) = describe_image_folder(config["data_dir"], config.get("image_size"))
    except DatasetError as e:
        raise UsageFailure(f"--data_dir={config['data_dir']} (--dataset=folder): {e}") from None
    return {"num_classes": len(classes), "input_dim": (3, h, w)}


def load_data(config: Mapping[str, Any]) -> dict[str, Any]:
    """CIFAR-10, or an image folder (``--dataset=folder``), split the cs231n way (mean image
    subtracted, float32 NCHW); a problem with the data on disk or the split sizes stops the
    app with one line."""
    from jcnn.data import DatasetError, get_cifar10_data, load_image_folder, split_and_preprocess
    from jcnn.data.cifar10 import resolve_data_dir

    counts = config["num_train"], config["num_val"], config["num_test"]
    if config.get("dataset", "cifar10") == "folder":
        root = config["data_dir"]
        try:
            raw = load_image_folder(root, size=config.get("image_size"))
        except DatasetError as e:
            raise UsageFailure(f"could not load the image folder {root} (--data_dir): {e}") from e
        train, test = len(raw.X_train), len(raw.X_test)
        if counts[0] + counts[1] > train or counts[2] > test:
            raise UsageFailure(
                f"--num_train={counts[0]} + --num_val={counts[1]} and --num_test={counts[2]} do "
                f"not fit the image folder {root}, which has {train} training and {test} test "
                f"images: pass e.g. --num_train={max(1, train - train // 10)} "
                f"--num_val={train // 10} --num_test={test}"
            )
        return split_and_preprocess(raw, *counts)
    try:
        return get_cifar10_data(
            config["data_dir"], num_training=counts[0], num_validation=counts[1],
            num_test=counts[2],
        )  # fmt: skip
    except (DatasetError, ValueError) as e:
        where = resolve_data_dir(config["data_dir"])
        raise UsageFailure(f"could not load CIFAR-10 from {where} (--data_dir): {e}") from e


def _probe_writable(folder: Path) -> str | None:
    """Why ``folder`` cannot be written (None: it can): a probe file created and removed."""
    if not os.access(folder, os.W_OK | os.X_OK):
        return "permission denied"
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".jcnn-probe.", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        return e.strerror or str(e)
    return None


def check_not_a_file(flag: str, path: str | Path) -> None:
    """A folder flag (``--workdir``, ``--data_dir``) that names a file stops the app with one
    line naming the flag."""
    if Path(path).exists() and not Path(path).is_dir():
        raise UsageFailure(f"--{flag}={path} is a file, not a folder: choose a folder")


def check_paths(config: Mapping[str, Any]) -> None:
    """Before any data is loaded or training starts: ``--workdir`` and ``--data_dir`` must
    not name files, and the workdir (its checkpoints folder too, if any; else its nearest
    existing parent) must be writable. Each problem stops the app with one line."""
    from jcnn.data.cifar10 import resolve_data_dir

    workdir = Path(config["workdir"]) if config.get("workdir") else Path("runs")
    data_dir = (
        Path(config["data_dir"])
        if config.get("dataset") == "folder"
        else resolve_data_dir(config["data_dir"])
    )
    for flag, path in (("workdir", workdir), ("data_dir", data_dir)):
        check_not_a_file(flag, path)
    if (workdir / "checkpoints").exists() and not (workdir / "checkpoints").is_dir():
        raise UsageFailure(
            f"--workdir={workdir}: {workdir / 'checkpoints'} is a file, not the folder the run "
            "keeps its checkpoints in: move it away, or choose another --workdir"
        )
    folders = [p for p in (workdir, workdir / "checkpoints") if p.is_dir()]
    if not folders:  # created later: its nearest existing parent must take it
        parent = next((p for p in workdir.absolute().parents if p.exists()), None)
        if parent is not None and not parent.is_dir():
            raise UsageFailure(f"--workdir={workdir}: {parent} is a file, not a folder")
        folders = [parent] if parent is not None else []
    for folder in folders:
        why = _probe_writable(folder)
        if why is not None:
            raise UsageFailure(
                f"--workdir={workdir}: cannot write in {folder} ({why}): make it writable, or "
                "choose another --workdir"
            )


def for_images(config: Mapping[str, Any], shape: Mapping[str, Any]) -> str:
    """For a model that cannot be built: the image size it was built for, where that is the
    image folder's (resized with ``--image_size``), so that the message names it too."""
    if config.get("dataset") != "folder":
        return ""
    size = "x".join(str(n) for n in shape["input_dim"][1:])
    resized = f" (--image_size={config['image_size']})" if config.get("image_size") else ""
    return f" for the image folder's {size} images{resized}"
