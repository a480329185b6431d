"""Export a trained run's classifier as a portable program that runs with plain jax.

    python -m experiments.export --workdir=runs/vgg_seed --out=vgg_seed.jaxexport

Writes ``--out``: :func:`jax.export` of the classifier (uint8 images ``(batch, H, W, 3)`` in,
class probabilities ``(batch, num_classes)`` out, any batch size; the preprocessing and the
run's test-time augmentation included, ``--notta`` leaves it out), lowered with XLA's own
kernels so that it needs neither jcnn nor its compiled kernels; and ``<out>.json`` naming the
classes, the input and the augmentation. To run it anywhere jax is installed::

    import json, jax, numpy as np
    program = jax.export.deserialize(open("vgg_seed.jaxexport", "rb").read())
    classes = json.load(open("vgg_seed.jaxexport.json"))["classes"]
    probs = program.call(images)  # images: np.uint8 (N, H, W, 3)
    print([classes[i] for i in np.argmax(probs, axis=1)])
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

from absl import flags

from experiments.errors import UsageFailure, failures_in_one_line, run_app
from experiments.predict import load
from jcnn.classifier import EXPORT_FORMAT


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
    flags.DEFINE_string("workdir", None, "The finished run's workdir.", flag_values=fv)
    flags.mark_flag_as_required("workdir", flag_values=fv)
    flags.DEFINE_string("out", None, "The file to write (and <out>.json).", flag_values=fv)
    flags.mark_flag_as_required("out", flag_values=fv)
    flags.DEFINE_bool(
        "tta", None, "Test-time augmentation (default: as the run was scored).", flag_values=fv
    )


def export(workdir: Path, out: Path, tta: bool | None) -> tuple[Path, Path]:
    """Write the program and its description; returns their paths."""
    from jcnn.classifier import export_classifier
    from jcnn.files import atomic_write

    if out.is_dir():
        raise UsageFailure(f"--out={out} is a folder: name a file")
    if not out.parent.is_dir():
        raise UsageFailure(f"--out={out}: the folder {out.parent} does not exist")
    described = out.with_name(out.name + ".json")
    _check_replaceable(out, described)
    classifier = load(workdir)
    if "still training" in classifier.source:  # as predict says it
        print(f"export: using {classifier.source}", file=sys.stderr, flush=True)
    program, description = export_classifier(classifier, tta=tta)
    try:
        atomic_write(out, lambda f: f.write(program))
        atomic_write(described, lambda f: f.write(description.encode()))
    except FileNotFoundError as e:  # a folder where no file can be made (/proc, /sys)
        raise UsageFailure(f"--out={out}: no file can be written there ({e.strerror})") from None
    return out, described


def _is_export_description(path: Path) -> bool:
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(record, dict) and str(record.get("format", "")).startswith(EXPORT_FORMAT)


def _check_replaceable(out: Path, described: Path) -> None:
    """An export replaces only an earlier export: ``out`` and ``<out>.json`` are new files, or
    ``<out>.json`` describes an exported classifier (so a run's best.npz, its config.json or
    any other file is never overwritten)."""
    if (out.exists() or described.exists()) and not _is_export_description(described):
        taken = out if out.exists() else described
        raise UsageFailure(
            f"--out={out}: {taken} exists and is not an exported classifier (no {described.name} "
            "describing one): name a new file, or remove it first"
        )


def main(argv: Sequence[str]) -> None:
    fv = flags.FLAGS
    if len(argv) > 1:
        raise UsageFailure(f"unexpected argument(s) {argv[1:]!r}")
    with failures_in_one_line():
        if not fv.out.strip():  # Path("") would be the current folder
            raise UsageFailure("--out= is empty: name the file to write")
        program, described = export(Path(fv.workdir), Path(fv.out), fv.tta)
    print(f"wrote {program} ({program.stat().st_size:,} bytes) and {described}", flush=True)


if __name__ == "__main__":
    define_flags()
    run_app(main)
