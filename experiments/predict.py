"""Classify image files with a trained run: the top classes of each, with probabilities.

    python -m experiments.predict --workdir=runs/vgg_seed cat.png dog.jpg
    python -m experiments.predict --workdir=runs/vgg_seed --top_k=1 --json photos/

Works on the finished run of any training app (its ``checkpoints/best.npz`` and the
preprocessing recorded beside it: :func:`jcnn.classifier.load_classifier`), and on a run
still training (its best parameters so far, from its newest checkpoint; it says so). Each
argument is an image file or a folder (its ``.png``/``.jpg``/``.jpeg`` files, recursively, in
name order).
Every image is converted as the run's training images were: 8-bit RGB (grayscale repeated,
alpha dropped, 16-bit values scaled), resized (bilinear) to the run's image size, minus the
training split's mean image. ``--tta`` applies the test-time augmentation the run was scored
with (the default), ``--notta`` classifies each image as it is. An image that cannot be read
stops the app with one line naming it, before any is classified.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from absl import flags

from experiments.errors import UsageFailure, failures_in_one_line, run_app

BATCH = 100


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
    flags.DEFINE_string("workdir", None, "The finished run's workdir.", flag_values=fv)
    flags.mark_flag_as_required("workdir", flag_values=fv)
    flags.DEFINE_integer(
        "top_k", 3, "Classes to show per image (most probable first).", lower_bound=1,
        flag_values=fv,
    )  # fmt: skip
    flags.DEFINE_bool("json", False, "Print one JSON document instead of lines.", flag_values=fv)
    flags.DEFINE_bool(
        "tta", None, "Test-time augmentation (default: as the run was scored).", flag_values=fv
    )


def image_files(args: Sequence[str]) -> list[Path]:
    """The files the arguments name: files as given, folders' images recursively, sorted."""
    from jcnn.data.folder import IMAGE_SUFFIXES

    found: list[Path] = []
    for arg in args:
        path = Path(arg)
        if path.is_dir():
            inside = [p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES]
            if not inside:
                raise UsageFailure(f"{path} holds no {'/'.join(IMAGE_SUFFIXES)} images")
            found += sorted(p for p in inside if p.is_file())
        elif path.is_file():
            found.append(path)
        elif path.exists():
            raise UsageFailure(f"{path} is not a regular file (a device, FIFO or socket)")
        elif path.is_symlink():
            raise UsageFailure(f"{path} is a link to {os.readlink(path)}, which does not exist")
        else:
            raise UsageFailure(f"{path}: no such file or folder")
    if not found:
        raise UsageFailure("give at least one image file or folder after the flags")
    return found


def load(workdir: Path) -> Any:
    """The run's classifier; one line if the workdir holds none."""
    from jcnn.classifier import load_classifier

    if not workdir.is_dir():
        raise UsageFailure(f"--workdir={workdir} does not exist (or is not a folder)")
    try:
        return load_classifier(workdir)
    except FileNotFoundError:
        raise UsageFailure(
            f"--workdir={workdir} holds no trained network: neither checkpoints/best.npz (a "
            "finished run) nor a checkpoint of a run in progress"
        ) from None
    except ValueError as e:
        raise UsageFailure(f"--workdir={workdir}: {e}") from None


def read_images(paths: Sequence[Path], size_hw: tuple[int, int]) -> np.ndarray:
    """uint8 ``(N, H, W, 3)``; one line naming the first file that cannot be read."""
    from jcnn.data import DatasetError, read_image

    images = []
    for path in paths:
        try:
            images.append(read_image(path, size_hw))
        except DatasetError as e:
            raise UsageFailure(str(e)) from None
    return np.stack(images)


def classify(
    classifier: Any, paths: Sequence[Path], *, top_k: int, tta: bool | None
) -> list[dict[str, Any]]:
    """Per image: ``{'image': path, 'top': [{'class', 'probability'}, ...]}``."""
    images = read_images(paths, classifier.image_size)
    probs = np.concatenate(
        [classifier.predict(images[i : i + BATCH], tta=tta) for i in range(0, len(images), BATCH)]
    )
    k = min(top_k, probs.shape[1])
    out = []
    for path, p in zip(paths, probs, strict=True):
        best = np.argsort(-p, kind="stable")[:k]
        top = [{"class": classifier.class_names[i], "probability": float(p[i])} for i in best]
        out.append({"image": str(path), "top": top})
    return out


def format_lines(results: Sequence[dict[str, Any]]) -> str:
    return "\n".join(
        f"{r['image']}: " + ", ".join(f"{t['class']} {t['probability']:.3f}" for t in r["top"])
        for r in results
    )


def main(argv: Sequence[str]) -> None:
    fv = flags.FLAGS
    with failures_in_one_line():
        paths = image_files(argv[1:])  # before the model: a typo stops at once
        classifier = load(Path(fv.workdir))
        if "still training" in classifier.source:
            print(f"predict: using {classifier.source}", file=sys.stderr, flush=True)
        results = classify(classifier, paths, top_k=fv.top_k, tta=fv.tta)
    print(json.dumps(results, indent=1) if fv.json else format_lines(results), flush=True)


if __name__ == "__main__":
    define_flags()
    run_app(main)
