"""Fixtures for the data tests: fake CIFAR-10 batches in the official format, and no network."""

from __future__ import annotations

import hashlib
import io
import pickle
import tarfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

LABEL_NAMES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]
ROWS = 20  # rows per fake batch: 5 x 20 = 100 training images, 20 test images
BATCH_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
# data_batch_1, row 0: R plane all 10, G plane all 20, B plane all 30.
PLAIN_RGB = (10, 20, 30)


@dataclass
class FakeCifar:
    folder: Path  # the cifar-10-batches-py folder
    X_train: np.ndarray  # uint8 (100, 3072), rows as written
    y_train: np.ndarray
    X_test: np.ndarray  # uint8 (20, 3072)
    y_test: np.ndarray


def pickle_batch(data: object, labels: object, name: str) -> bytes:
    """A batch pickled like the official files: a dict with bytes keys, protocol 2."""
    batch = {
        b"batch_label": name.encode(),
        b"labels": labels,
        b"data": data,
        b"filenames": [f"{name}_{i}.png".encode() for i in range(ROWS)],
    }
    return pickle.dumps(batch, protocol=2)


def write_fake_cifar(parent: Path, seed: int = 0) -> FakeCifar:
    """Write ``parent/cifar-10-batches-py`` with five training batches, a test batch and
    batches.meta, ROWS rows each."""
    rng = np.random.default_rng(seed)
    folder = parent / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    datas, labels = [], []
    for name in BATCH_FILES:
        data = rng.integers(0, 256, size=(ROWS, 3072), dtype=np.uint8)
        y = rng.integers(0, 10, size=ROWS).tolist()
        if name == "data_batch_1":
            data[0] = np.repeat(np.array(PLAIN_RGB, dtype=np.uint8), 1024)
        (folder / name).write_bytes(pickle_batch(data, y, name))
        datas.append(data)
        labels.append(np.array(y, dtype=np.int64))
    meta = {
        b"num_cases_per_batch": ROWS,
        b"label_names": [n.encode() for n in LABEL_NAMES],
        b"num_vis": 3072,
    }
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return FakeCifar(
        folder,
        np.concatenate(datas[:5]),
        np.concatenate(labels[:5]),
        datas[5],
        labels[5],
    )


def make_tarball(source_folder: Path, tarball: Path) -> str:
    """Pack ``source_folder`` as ``cifar-10-batches-py/`` into ``tarball``; return its MD5."""
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(source_folder, arcname="cifar-10-batches-py")
    return hashlib.md5(tarball.read_bytes()).hexdigest()


def tar_with_member(tarball: Path, name: str, payload: bytes = b"x") -> str:
    """A gzip tarball holding one regular file called ``name``; return its MD5."""
    with tarfile.open(tarball, "w:gz") as tar:
        info = tarfile.TarInfo(name)
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    return hashlib.md5(tarball.read_bytes()).hexdigest()


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every data test runs with urlopen failing (and records the URLs asked for)."""
    requested: list[str] = []

    def fail(url: object, *args: object, **kwargs: object) -> None:
        requested.append(str(url))
        raise urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(urllib.request, "urlopen", fail)
    return requested


@pytest.fixture
def fake_cifar(tmp_path: Path) -> FakeCifar:
    """A fake extracted CIFAR-10 in ``tmp_path/cifar-10-batches-py``."""
    return write_fake_cifar(tmp_path)


@pytest.fixture
def fakes() -> SimpleNamespace:
    """The helpers above, for tests (conftest modules are not meant to be imported)."""
    return SimpleNamespace(
        write_fake_cifar=write_fake_cifar,
        make_tarball=make_tarball,
        tar_with_member=tar_with_member,
        pickle_batch=pickle_batch,
        ROWS=ROWS,
        PLAIN_RGB=PLAIN_RGB,
        LABEL_NAMES=LABEL_NAMES,
    )
