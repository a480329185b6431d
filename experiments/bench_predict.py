"""How fast a trained run classifies images: PNG files decoded, jcnn's classifier with and
without test-time augmentation, and the exported program, side by side in one process.

    python -m experiments.bench_predict --workdir=runs/vgg_seed --num_images=1000

Writes ``--num_images`` PNG files of the run's image size (random pixels, seeded) to a
temporary folder, then times, each ``--repeats`` times after one untimed call (compilation):
reading and converting the files (:func:`experiments.predict.read_images`), the classifier
(:meth:`jcnn.classifier.Classifier.predict`, batches of ``--batch_size``) with the run's
test-time augmentation and without it, and the program :mod:`experiments.export` writes
(deserialised, batches of the same size) with the same augmentation. Prints images/s
(median) per row and the CPU.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from absl import flags

from experiments.errors import UsageFailure, failures_in_one_line, run_app

FLAGS = flags.FLAGS


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
    flags.DEFINE_string("workdir", None, "A finished run's workdir.", flag_values=fv)
    flags.mark_flag_as_required("workdir", flag_values=fv)
    flags.DEFINE_integer(
        "num_images", 1000, "PNG files to classify.", lower_bound=1, flag_values=fv
    )
    flags.DEFINE_integer("batch_size", 100, "Images per call.", lower_bound=1, flag_values=fv)
    flags.DEFINE_integer(
        "repeats", 3, "Timed passes over the images.", lower_bound=1, flag_values=fv
    )


def _median_rate(n: int, run: Callable[[], Any], repeats: int) -> float:
    run()  # compiles
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return n / statistics.median(times)


def _batched(fn: Callable[[np.ndarray], Any], images: np.ndarray, size: int) -> Callable[[], Any]:
    def run() -> list[np.ndarray]:
        return [np.asarray(fn(images[i : i + size])) for i in range(0, len(images), size)]

    return run


def measure(
    workdir: Path, num_images: int, batch_size: int, repeats: int
) -> list[tuple[str, float]]:
    """``[(row, images/s)]`` for the four rows."""
    import jax
    from PIL import Image

    from experiments.predict import load, read_images
    from jcnn.classifier import export_classifier

    clf = load(workdir)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as folder:
        paths = []
        for i in range(num_images):
            paths.append(Path(folder) / f"{i:05d}.png")
            Image.fromarray(rng.integers(0, 256, (*clf.image_size, 3), dtype=np.uint8)).save(
                paths[-1]
            )
        decode = _median_rate(num_images, lambda: read_images(paths, clf.image_size), repeats)
        images = read_images(paths, clf.image_size)
    tta = clf.test_time_flip or clf.test_time_translate > 0
    program = jax.export.deserialize(bytearray(export_classifier(clf, tta=None)[0]))
    augmented = "with the run's test-time augmentation" if tta else "(the run used none)"

    def rate(fn: Callable[[np.ndarray], Any]) -> float:
        return _median_rate(num_images, _batched(fn, images, batch_size), repeats)

    return [
        (f"read and convert {num_images} PNG files", decode),
        (f"jcnn classifier, {augmented}", rate(lambda x: clf.predict(x, tta=True))),
        ("jcnn classifier, no test-time augmentation", rate(lambda x: clf.predict(x, tta=False))),
        (f"exported program (plain jax), {augmented}", rate(program.call)),
    ]


def main(argv: Sequence[str]) -> None:
    from experiments.benchmark.machine import cpu_model

    if len(argv) > 1:
        raise UsageFailure(f"unexpected argument(s) {argv[1:]!r}")
    with failures_in_one_line():
        rows = measure(Path(FLAGS.workdir), FLAGS.num_images, FLAGS.batch_size, FLAGS.repeats)
    print(f"{FLAGS.workdir}: batches of {FLAGS.batch_size}, median of {FLAGS.repeats}; "
          f"cpu {cpu_model() or 'unknown'}")  # fmt: skip
    print("| what | images/s |\n| --- | ---: |")
    for row, rate in rows:
        print(f"| {row} | {rate:,.0f} |")


if __name__ == "__main__":
    define_flags()
    run_app(main)
