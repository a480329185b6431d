"""Helpers for the experiment tests: a tiny fake CIFAR-10, subprocess environment."""

from __future__ import annotations

import os
import pickle
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
ROWS = 20  # per batch file: 5 x 20 = 100 training images, 20 test images


def write_fake_cifar(parent: Path, *, rows: int = ROWS, seed: int = 0) -> Path:
    """``parent/cifar-10-batches-py`` with five training batches, a test batch and
    batches.meta, pickled like the official files (dicts with bytes keys, protocol 2).
    Each class has its own mean colour, so a net can learn something."""
    rng = np.random.default_rng(seed)
    folder = parent / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    colours = rng.integers(40, 216, size=(10, 3))
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = rng.integers(0, 10, size=rows)
        images = colours[labels][:, :, None] + rng.normal(0, 30, size=(rows, 3, 1024))
        data = np.clip(images, 0, 255).astype(np.uint8).reshape(rows, 3072)
        batch = {b"batch_label": name.encode(), b"labels": labels.tolist(), b"data": data}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {b"label_names": [f"class{i}".encode() for i in range(10)], b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return parent


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment for running an app in a fresh interpreter from the repo root."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["JCNN_DATA_DIR"] = "/nonexistent/jcnn-test-data"  # never the user's real cache
    env.update(extra)
    return env


PYTHON = sys.executable


def fatal_message(text: str) -> str:
    """The app's failure message as one string, after checking its form: a first line
    ``FATAL ...`` of at most 200 characters, then at most one line indented by two spaces."""
    first, *rest = text.split("\n")
    assert first.startswith("FATAL ") and len(first) <= 200, text
    assert len(rest) <= 1 and all(line.startswith("  ") for line in rest), text
    return " ".join(text.split())


def fatal_messages(stderr: str) -> list[str]:
    """Every failure message in ``stderr`` (see :func:`fatal_message`), one string each."""
    lines = stderr.splitlines()
    return [
        fatal_message("\n".join([line, *[n for n in lines[i + 1 : i + 2] if n.startswith("  ")]]))
        for i, line in enumerate(lines)
        if line.startswith("FATAL")
    ]
