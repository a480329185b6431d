"""CIFAR-10: download, verify, extract, load and split (the cs231n way).

The python version of the dataset (``cifar-10-python.tar.gz``) holds a folder
``cifar-10-batches-py/`` with five training batches ``data_batch_1`` .. ``data_batch_5``,
one ``test_batch`` and ``batches.meta``, each a pickled dict. A batch's ``b'data'`` is a
uint8 array of shape (n, 3072): per row the 1024 red pixels, then the 1024 green, then the
1024 blue, each plane 32x32 in row-major order -- i.e. exactly NCHW after a reshape.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import re
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from numpy.typing import DTypeLike

from jcnn.data.dataset import RawDataset, check_split_sizes, split_and_preprocess
from jcnn.data.errors import DatasetError
from jcnn.files import file_digest

__all__ = [
    "CIFAR10_FOLDER",
    "CIFAR10_MD5",
    "CIFAR10_TARBALL",
    "CIFAR10_URL",
    "DATA_DIR_ENV",
    "DEFAULT_DATA_DIR",
    "download_cifar10",
    "get_cifar10_data",
    "load_cifar10_batches",
]

log = logging.getLogger(__name__)

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_TARBALL = "cifar-10-python.tar.gz"
CIFAR10_FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
META_FILE = "batches.meta"
REQUIRED_FILES = (*TRAIN_BATCHES, TEST_BATCH, META_FILE)

DATA_DIR_ENV = "JCNN_DATA_DIR"
DEFAULT_DATA_DIR = "~/.cache/jcnn"

NUM_CLASSES = 10
IMAGE_SHAPE = (3, 32, 32)
_ROW_SIZE = 3 * 32 * 32
_DOWNLOAD_TIMEOUT_S = 60
_CHUNK = 1 << 20


# --------------------------------------------------------------------------- download


def download_cifar10(
    data_dir: str | os.PathLike[str],
    *,
    md5: str = CIFAR10_MD5,
    url: str = CIFAR10_URL,
) -> Path:
    """Make sure ``data_dir/cifar-10-batches-py/`` exists and return its path.

    In order of preference:

    1. the folder already exists with all seven files: it is used as is;
    2. ``data_dir/cifar-10-python.tar.gz`` exists: its MD5 is checked against ``md5`` and it
       is extracted (into a temporary folder inside ``data_dir``, moved into place only once
       complete);
    3. otherwise the tarball is downloaded from ``url`` to ``data_dir/cifar-10-python.tar.gz.part``,
       checked, renamed, and extracted as in 2.

    Args:
        data_dir: folder that holds (or will hold) the tarball and the extracted folder;
            ``~`` is expanded and the folder is created if needed.
        md5: expected hex MD5 of the tarball (the published one by default). Checking
            cannot be skipped.
        url: where to download from.

    Returns:
        The path of the extracted folder, ``data_dir/cifar-10-batches-py`` (``~`` expanded),
        holding the five training batches, ``test_batch`` and ``batches.meta``.

    Raises:
        DatasetError: no data and the download failed (the message says where to put the
            files by hand), the checksum does not match (it says which file to delete), the
            tarball is corrupt or unsafe, or the existing folder is incomplete.
        ValueError: ``md5`` is not a 32-digit hex string.
    """
    if not isinstance(md5, str) or not re.fullmatch(r"[0-9a-fA-F]{32}", md5):
        raise ValueError(f"md5 must be a 32-digit hex string, got {md5!r}")
    md5 = md5.lower()
    data_dir = Path(data_dir).expanduser()
    folder = data_dir / CIFAR10_FOLDER
    tarball = data_dir / CIFAR10_TARBALL

    if folder.exists():
        _check_folder_complete(folder)
        return folder

    data_dir.mkdir(parents=True, exist_ok=True)
    if not tarball.exists():
        _download(url, tarball, md5, folder)
    else:
        actual = file_digest(tarball, "md5")
        if actual != md5:
            raise DatasetError(
                f"Checksum mismatch for {tarball}: MD5 is {actual}, expected {md5}. The file is "
                f"corrupt or incomplete; delete {tarball} and run again to re-download it "
                f"(or put a good copy from {url} there)."
            )
    _extract(tarball, data_dir)
    _check_folder_complete(folder)
    return folder


def _restore_advice(folder: Path) -> str:
    """How to get a good ``folder`` back: re-extract the tarball next to it if there is one,
    else get the data again."""
    tarball = folder.parent / CIFAR10_TARBALL
    if tarball.is_file():
        return f"Delete the folder {folder} and run again to re-extract it from {tarball}."
    return (
        f"Delete the folder {folder} and run again to download CIFAR-10 again (this needs "
        f"network access; or put {CIFAR10_TARBALL} in {folder.parent}), or point data_dir at "
        "a good copy."
    )


def _check_folder_complete(folder: Path) -> None:
    if not folder.is_dir():
        raise DatasetError(f"{folder} exists but is not a folder; delete it and run again.")
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if missing:
        raise DatasetError(
            f"CIFAR-10 folder {folder} is incomplete (missing {', '.join(missing)}). "
            + _restore_advice(folder)
        )


def _manual_instructions(tarball: Path, folder: Path, url: str) -> str:
    return (
        f"To set it up by hand, download {url} on a machine with network access and either "
        f"put the tarball at {tarball} (it is checked and extracted on the next run), or "
        f"extract it so that the folder {folder} holds {', '.join(REQUIRED_FILES)}."
    )


def _download(url: str, tarball: Path, md5: str, folder: Path) -> None:
    part = tarball.with_name(tarball.name + ".part")
    log.info("Downloading CIFAR-10 from %s to %s", url, tarball)
    digest = hashlib.md5()
    try:
        with urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as response:
            with open(part, "wb") as out:
                for chunk in iter(lambda: response.read(_CHUNK), b""):
                    digest.update(chunk)
                    out.write(chunk)
    except BaseException as e:
        part.unlink(missing_ok=True)  # never leave a partial download behind
        if not isinstance(e, urllib.error.URLError | OSError):
            raise
        raise DatasetError(
            f"CIFAR-10 is not in {tarball.parent} and downloading it from {url} failed "
            f"({e}). {_manual_instructions(tarball, folder, url)}"
        ) from e
    actual = digest.hexdigest()
    if actual != md5:
        part.unlink(missing_ok=True)
        raise DatasetError(
            f"Checksum mismatch for the download from {url}: MD5 is {actual}, expected {md5}. "
            f"The partial file {part} was deleted; run again to retry. "
            f"{_manual_instructions(tarball, folder, url)}"
        )
    os.replace(part, tarball)


def _safe_members(tar: tarfile.TarFile, tarball: Path) -> list[tarfile.TarInfo]:
    """The archive's members, refusing anything that could land outside the target folder."""
    members = []
    for member in tar.getmembers():
        path = PurePosixPath(member.name)
        if path.is_absolute() or ".." in path.parts or member.name.startswith(("/", "\\")):
            raise DatasetError(
                f"Refusing to extract {tarball}: member {member.name!r} has an absolute path "
                f"or '..'. The file is not a genuine CIFAR-10 archive; delete it."
            )
        if not (member.isfile() or member.isdir()):
            raise DatasetError(
                f"Refusing to extract {tarball}: member {member.name!r} is not a regular file "
                f"or folder (link or device). The file is not a genuine CIFAR-10 archive; "
                f"delete it."
            )
        members.append(member)
    return members


def _extract(tarball: Path, data_dir: Path) -> None:
    """Extract ``tarball`` into a temporary folder in ``data_dir``, then move the
    ``cifar-10-batches-py`` folder into place in one rename."""
    folder = data_dir / CIFAR10_FOLDER
    tmp = Path(tempfile.mkdtemp(dir=data_dir, prefix=".cifar-10-extract-"))
    try:
        try:
            with tarfile.open(tarball, "r:*") as tar:
                for member in _safe_members(tar, tarball):
                    target = tmp.joinpath(*PurePosixPath(member.name).parts)
                    if member.isdir():
                        target.mkdir(parents=True, exist_ok=True)
                        continue
                    target.parent.mkdir(parents=True, exist_ok=True)
                    source = tar.extractfile(member)
                    assert source is not None  # regular files always have data
                    with source, open(target, "wb") as out:
                        shutil.copyfileobj(source, out, _CHUNK)
        except (tarfile.TarError, EOFError, OSError) as e:
            raise DatasetError(
                f"Could not extract {tarball} ({e}); the file is corrupt. Delete it and run "
                f"again to re-download it."
            ) from e
        extracted = tmp / CIFAR10_FOLDER
        if not extracted.is_dir():
            raise DatasetError(
                f"{tarball} does not contain a {CIFAR10_FOLDER}/ folder; it is not the python "
                f"version of CIFAR-10. Delete it and run again to re-download it."
            )
        try:
            os.rename(extracted, folder)
        except OSError:
            if not folder.is_dir():  # another process may have won the race; else re-raise
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------- loading


class _BatchUnpickler(pickle.Unpickler):
    """Unpickler that only builds numpy arrays and bytes (what the CIFAR batches contain),
    so a tampered file cannot run arbitrary code."""

    _ALLOWED = {
        ("_codecs", "encode"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"unexpected object {module}.{name} in the pickle")
        return super().find_class(module, name)


def _unpickle(path: Path, folder: Path) -> dict[bytes, Any]:
    try:
        with open(path, "rb") as f:
            obj = _BatchUnpickler(f, encoding="bytes").load()
    except FileNotFoundError as e:
        raise DatasetError(f"CIFAR-10 file {path} is missing. " + _restore_advice(folder)) from e
    except Exception as e:  # corrupt pickles raise almost anything
        raise DatasetError(
            f"CIFAR-10 file {path} is corrupt or truncated ({type(e).__name__}: {e}). "
            + _restore_advice(folder)
        ) from e
    if not isinstance(obj, dict):
        raise _bad_content(path, folder, f"expected a pickled dict, got {type(obj).__name__}")
    return obj


def _bad_content(path: Path, folder: Path, what: str) -> DatasetError:
    return DatasetError(
        f"CIFAR-10 file {path} has unexpected content: {what}. " + _restore_advice(folder)
    )


def _load_batch(path: Path, folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """One batch file -> (uint8 (n, 3, 32, 32), int64 (n,))."""
    batch = _unpickle(path, folder)
    if b"data" not in batch or b"labels" not in batch:
        raise _bad_content(path, folder, f"keys b'data' and b'labels' expected, got {list(batch)}")
    data, labels = batch[b"data"], batch[b"labels"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        raise _bad_content(path, folder, "b'data' must be a uint8 array of shape (n, 3072)")
    if data.shape[1] != _ROW_SIZE:
        raise _bad_content(path, folder, f"b'data' has shape {data.shape}, expected (n, 3072)")
    try:
        y = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError, OverflowError):
        raise _bad_content(path, folder, "b'labels' must be a list of integers") from None
    if y.shape != (len(data),):
        raise _bad_content(
            path, folder, f"b'labels' has shape {y.shape}, expected ({len(data)},) to match b'data'"
        )
    if y.size and (y.min() < 0 or y.max() >= NUM_CLASSES):
        raise _bad_content(path, folder, f"labels must be in [0, {NUM_CLASSES})")
    return data.reshape(len(data), *IMAGE_SHAPE), y


def _load_label_names(path: Path, folder: Path) -> tuple[str, ...]:
    meta = _unpickle(path, folder)
    names = meta.get(b"label_names")
    if not isinstance(names, list) or len(names) != NUM_CLASSES:
        raise _bad_content(path, folder, f"b'label_names' must be a list of {NUM_CLASSES} names")
    try:
        return tuple(n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names)
    except UnicodeDecodeError as e:
        raise _bad_content(path, folder, f"label names are not UTF-8 ({e})") from e


def load_cifar10_batches(folder: str | os.PathLike[str]) -> RawDataset:
    """Load an extracted ``cifar-10-batches-py`` folder.

    Batches may hold any number of rows (the real ones hold 10000 each).

    Args:
        folder: the extracted folder (``~`` is expanded), as :func:`download_cifar10`
            returns it.

    Returns:
        ``RawDataset(X_train, y_train, X_test, y_test, label_names)``: ``X_train`` uint8
        (50000, 3, 32, 32) NCHW with channels R, G, B; ``y_train`` int64 (50000,);
        ``X_test`` uint8 (10000, 3, 32, 32); ``y_test`` int64 (10000,); ``label_names``
        the 10 class names. Unpacks like a tuple in that order.

    Raises:
        DatasetError: a file is missing, truncated, corrupt or has the wrong content; the
            message names the file. Nothing is returned unless every file loaded cleanly.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise DatasetError(
            f"CIFAR-10 folder {folder} does not exist; it should hold {', '.join(REQUIRED_FILES)}."
        )
    label_names = _load_label_names(folder / META_FILE, folder)
    train = [_load_batch(folder / name, folder) for name in TRAIN_BATCHES]
    X_test, y_test = _load_batch(folder / TEST_BATCH, folder)
    X_train = np.concatenate([X for X, _ in train])
    y_train = np.concatenate([y for _, y in train])
    return RawDataset(X_train, y_train, X_test, y_test, label_names)


# --------------------------------------------------------------------------- cs231n split


def resolve_data_dir(data_dir: str | os.PathLike[str] | None) -> Path:
    """``data_dir`` if given, else ``$JCNN_DATA_DIR`` if set, else ``~/.cache/jcnn``;
    with ``~`` expanded.

    Args:
        data_dir: the folder, or None for the default.

    Returns:
        The folder as a :class:`pathlib.Path` (not created, not checked).
    """
    if data_dir is None:
        data_dir = os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR
    return Path(data_dir).expanduser()


def get_cifar10_data(
    data_dir: str | os.PathLike[str] | None = None,
    num_training: int = 49000,
    num_validation: int = 1000,
    num_test: int = 1000,
    subtract_mean: bool = True,
    dtype: DTypeLike = np.float32,
) -> dict[str, Any]:
    """CIFAR-10 split and preprocessed as in cs231n (downloading it first if needed).

    Args:
        data_dir: folder for the tarball and extracted data; default ``$JCNN_DATA_DIR`` if
            set, else ``~/.cache/jcnn``.
        num_training: training images: the first ``num_training`` of the 50000.
        num_validation: validation images: the ones right after the training images.
        num_test: test images: the first ``num_test`` of the 10000.
        subtract_mean: subtract the training split's mean image from all splits.
        dtype: floating-point dtype of the returned images.

    Returns:
        dict with ``X_train`` (num_training, 3, 32, 32), ``X_val`` (num_validation, 3, 32, 32),
        ``X_test`` (num_test, 3, 32, 32) of ``dtype``; ``y_train``, ``y_val``, ``y_test`` int64;
        ``mean_image`` (3, 32, 32) and ``label_names`` -- see :func:`split_and_preprocess`.

    Raises:
        ValueError: a size or ``dtype`` is invalid (the message names the argument).
        DatasetError: see :func:`download_cifar10` and :func:`load_cifar10_batches`.
    """
    check_split_sizes(num_training, num_validation, num_test)  # fail before any download
    folder = download_cifar10(resolve_data_dir(data_dir))
    raw = load_cifar10_batches(folder)
    return split_and_preprocess(raw, num_training, num_validation, num_test, subtract_mean, dtype)
