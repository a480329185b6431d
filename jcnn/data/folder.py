"""Image-folder datasets: ``root/train/<class>/*.png`` and ``root/test/<class>/*.png``.

Images are decoded once with Pillow (an optional dependency) and cached as ``.npy`` files in
``root/.jcnn_cache/``; the cache is keyed by a fingerprint of the file list (names and the
SHA-256 of each file's contents) and the ``size`` argument, so adding, removing or changing
an image re-decodes the folder.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from jcnn._validate import check_fits_in_memory
from jcnn.data.dataset import RawDataset
from jcnn.data.errors import DatasetError
from jcnn.files import atomic_write

__all__ = [
    "CACHE_DIR_NAME",
    "IMAGE_SUFFIXES",
    "describe_image_folder",
    "load_image_folder",
    "read_image",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
CACHE_DIR_NAME = ".jcnn_cache"
_CACHE_FORMAT = 2  # 2: keyed on each file's contents, not its size and time
_SPLITS = ("train", "test")
_META = "meta.json"


def load_image_folder(
    root: str | os.PathLike[str],
    *,
    size: int | tuple[int, int] | None = None,
    shuffle_seed: int | None = 0,
) -> RawDataset:
    """Load ``root/train/<class>/*`` and ``root/test/<class>/*`` (.png, .jpg, .jpeg).

    Classes are the sorted names of the sub-folders of ``root/train``; ``root/test`` must
    have the same sub-folders. Images are converted to 8-bit RGB (grayscale repeated, alpha
    dropped, 16-bit values scaled to 0..255). Hidden files and folders and
    files with other suffixes are ignored.

    Args:
        root: the dataset folder.
        size: ``None`` to require every image to have the same size; otherwise resize every
            image to ``(height, width)`` (an int means a square).
        shuffle_seed: images are returned in a fixed pseudo-random order drawn from this
            seed (per split), so that taking the first N images (as
            :func:`~jcnn.data.split_and_preprocess` does) gives a mix of classes. ``None``
            keeps the sorted class-by-class, file-name order.

    Returns:
        ``RawDataset``: ``X_train`` uint8 (N_train, 3, H, W) NCHW, ``y_train`` int64
        (N_train,), ``X_test`` uint8 (N_test, 3, H, W), ``y_test`` int64 (N_test,),
        ``label_names`` the class names (label ``k`` is ``label_names[k]``).

    Raises:
        DatasetError: the layout is wrong, a train class has no images, test and train
            classes differ, an image cannot be decoded, or images differ in size while
            ``size`` is None (the message names the file).
        ImportError: Pillow is needed (the cache is missing or stale) but not installed.
        ValueError: ``size`` is not a positive int or a pair of them, or the images at that
            size would need more memory than this machine has.
    """
    root = Path(root).expanduser()
    size_hw = _check_size(size)
    classes, files = _list_files(root)
    if size_hw is not None:  # before reading any file: one that cannot fit is refused
        check_fits_in_memory(
            f"size={size!r}",
            {f"{split} images": (len(files[split]), 3, *size_hw) for split in _SPLITS},
            np.uint8,
        )
    fingerprint = _fingerprint(files, size_hw)
    cache_dir = root / CACHE_DIR_NAME

    arrays = _read_cache(cache_dir, fingerprint, classes)
    if arrays is None:
        arrays = _decode_all(files, size_hw)
        _write_cache(cache_dir, fingerprint, classes, arrays)

    if shuffle_seed is not None:
        rng = np.random.default_rng(shuffle_seed)
        for split in _SPLITS:
            order = rng.permutation(len(arrays[f"{split}_y"]))
            arrays[f"{split}_X"] = arrays[f"{split}_X"][order]
            arrays[f"{split}_y"] = arrays[f"{split}_y"][order]
    return RawDataset(
        arrays["train_X"], arrays["train_y"], arrays["test_X"], arrays["test_y"], classes
    )


def _check_size(size: object) -> tuple[int, int] | None:
    if size is None:
        return None
    pair = (size, size) if isinstance(size, int) else size
    if (
        not isinstance(pair, tuple | list)
        or len(pair) != 2
        or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in pair)
    ):
        raise ValueError(f"size must be None, a positive int or (height, width), got {size!r}")
    return int(pair[0]), int(pair[1])


# --------------------------------------------------------------------------- listing


def _visible_subdirs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _list_files(root: Path) -> tuple[tuple[str, ...], dict[str, list[tuple[Path, int]]]]:
    """Class names and, per split, the (image path, label) pairs in sorted order."""
    for split in _SPLITS:
        if not (root / split).is_dir():
            raise DatasetError(
                f"Image folder {root} has no {split}/ sub-folder; expected the layout "
                f"{root}/train/<class>/*.png and {root}/test/<class>/*.png"
            )
    classes = tuple(_visible_subdirs(root / "train"))
    if not classes:
        raise DatasetError(f"{root / 'train'} has no class sub-folders; expected train/<class>/")
    test_classes = tuple(_visible_subdirs(root / "test"))
    if test_classes != classes:
        only_train = sorted(set(classes) - set(test_classes))
        only_test = sorted(set(test_classes) - set(classes))
        raise DatasetError(
            f"{root / 'test'} must have the same class folders as {root / 'train'}; "
            f"only in train: {only_train}, only in test: {only_test}"
        )
    files: dict[str, list[tuple[Path, int]]] = {}
    for split in _SPLITS:
        files[split] = []
        for label, name in enumerate(classes):
            class_dir = root / split / name
            named = [
                p
                for p in class_dir.iterdir()
                if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
            ]
            for p in named:  # a broken link, a FIFO, a device: not left out silently
                if not p.is_file() and not p.is_dir():
                    raise DatasetError(
                        f"{p} is named as an image but is not a file (a broken link, a FIFO "
                        "or a device): remove it, or make it the image it stands for"
                    )
            images = sorted(p for p in named if p.is_file())
            if split == "train" and not images:
                raise DatasetError(
                    f"Class folder {class_dir} has no images ({', '.join(IMAGE_SUFFIXES)})"
                )
            files[split].extend((p, label) for p in images)
    return classes, files


def _fingerprint(files: dict[str, list[tuple[Path, int]]], size_hw: tuple[int, int] | None) -> str:
    """What the cache is keyed on: every file's split, class, name and the SHA-256 of its
    bytes (reading them is far cheaper than decoding; a size-and-time key would miss a file
    replaced by another of the same size with its old time kept, as ``cp -p`` does)."""
    entries: list[Any] = [_CACHE_FORMAT, size_hw]
    for split in _SPLITS:
        for path, label in files[split]:
            with open(path, "rb") as f:
                digest = hashlib.file_digest(f, "sha256").hexdigest()
            entries.append([split, label, path.parent.name, path.name, digest])
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()


# --------------------------------------------------------------------------- decoding


def _import_pillow() -> Any:
    try:
        from PIL import Image
    except ImportError as e:
        raise ImportError(
            "load_image_folder needs Pillow to decode images: pip install pillow "
            "(or pip install jcnn[plots])"
        ) from e
    return Image


def _decode_all(
    files: dict[str, list[tuple[Path, int]]], size_hw: tuple[int, int] | None
) -> dict[str, np.ndarray]:
    Image = _import_pillow()
    arrays: dict[str, np.ndarray] = {}
    first: tuple[Path, tuple[int, int]] | None = None  # the image that fixed the size
    for split in _SPLITS:
        images = []
        for path, _ in files[split]:
            image = _decode(Image, path, size_hw)
            if first is None:
                first = (path, image.shape[1:])
            elif image.shape[1:] != first[1]:
                raise DatasetError(
                    f"Image {path} is {image.shape[2]}x{image.shape[1]} (width x height) but "
                    f"{first[0]} is {first[1][1]}x{first[1][0]}; all images must have the same "
                    f"size, or pass size=(height, width) to resize them"
                )
            images.append(image)
        if images:
            arrays[f"{split}_X"] = np.stack(images)
        else:
            assert first is not None  # train is never empty
            arrays[f"{split}_X"] = np.zeros((0, 3, *first[1]), dtype=np.uint8)
        arrays[f"{split}_y"] = np.array([label for _, label in files[split]], dtype=np.int64)
    return arrays


# Pillow's modes for one channel of more than 8 bits (16-bit PNGs and TIFFs).
_WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def _to_rgb(Image: Any, im: Any, path: Path) -> Any:
    """An opened image as 8-bit RGB: grayscale repeated, alpha dropped, a palette expanded,
    and 16-bit values (0..65535) scaled to 0..255 (Pillow's own conversion clips them, so a
    16-bit image would come out white)."""
    if im.mode in _WIDE_MODES:
        values = np.asarray(im, dtype=np.float64)
        gray = np.clip(np.rint(values * (255 / 65535)), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    if im.mode == "F":
        raise DatasetError(
            f"Image {path} has floating-point pixels (mode F), whose range is unknown; "
            "save it with 8- or 16-bit integer pixels"
        )
    return im.convert("RGB")


def _decode(Image: Any, path: Path, size_hw: tuple[int, int] | None) -> np.ndarray:
    """One image file -> uint8 (3, H, W)."""
    try:
        with Image.open(path) as im:
            rgb = _to_rgb(Image, im, path)
        if size_hw is not None and rgb.size != (size_hw[1], size_hw[0]):
            rgb = rgb.resize((size_hw[1], size_hw[0]), Image.Resampling.BILINEAR)
        pixels = np.asarray(rgb, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise DatasetError(f"Could not decode image {path} ({e}); fix or remove the file") from e
    return pixels.transpose(2, 0, 1)


def describe_image_folder(
    root: str | os.PathLike[str], size: int | tuple[int, int] | None = None
) -> tuple[tuple[str, ...], tuple[int, int]]:
    """What :func:`load_image_folder` would return, without decoding it: the class names and
    the image size ``(height, width)`` (``size`` if given, else the first training image's).

    Args:
        root: the dataset folder (``root/train/<class>/*``, ``root/test/<class>/*``).
        size: as :func:`load_image_folder`'s.

    Returns:
        ``(class_names, (height, width))``.

    Raises:
        DatasetError: the layout is wrong (as :func:`load_image_folder` says), fewer than two
            classes, or the first image cannot be read.
        ValueError: ``size`` is not a positive int or a pair of them.
    """
    root = Path(root).expanduser()
    size_hw = _check_size(size)
    classes, files = _list_files(root)
    if len(classes) < 2:
        raise DatasetError(
            f"{root / 'train'} has {len(classes)} class folder(s) ({', '.join(classes)}): a "
            "classifier needs at least two"
        )
    if size_hw is not None:
        return classes, size_hw
    first = files["train"][0][0]
    return classes, tuple(read_image(first).shape[:2])


def read_image(path: str | Path, size_hw: tuple[int, int] | None = None) -> np.ndarray:
    """One image file as the folder loader decodes it: 8-bit RGB (grayscale repeated, alpha
    dropped, a palette expanded, 16-bit values scaled from 0..65535), resized (bilinear) to
    ``size_hw`` if given.

    Args:
        path: the image file (any format Pillow reads).
        size_hw: ``(height, width)`` to resize to, or None to keep its size.

    Returns:
        uint8 ``(H, W, 3)``.

    Raises:
        DatasetError: the file cannot be read or decoded, or has floating-point pixels; the
            message names the file and why.
        ImportError: Pillow is not installed.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"Image {path} does not exist or is not a file")
    return _decode(_import_pillow(), path, size_hw).transpose(1, 2, 0)


# --------------------------------------------------------------------------- cache


def _read_cache(
    cache_dir: Path, fingerprint: str, classes: tuple[str, ...]
) -> dict[str, np.ndarray] | None:
    """The cached arrays if the cache matches ``fingerprint`` and is intact, else None."""
    try:
        meta = json.loads((cache_dir / _META).read_text())
        if meta.get("fingerprint") != fingerprint or tuple(meta.get("label_names", ())) != classes:
            return None
        arrays = {
            f"{split}_{kind}": np.load(cache_dir / f"{split}_{kind}.npy", allow_pickle=False)
            for split in _SPLITS
            for kind in ("X", "y")
        }
        for split in _SPLITS:
            if len(arrays[f"{split}_y"]) != meta["counts"][split]:
                return None
        RawDataset(  # validates dtypes, shapes and label range
            arrays["train_X"], arrays["train_y"], arrays["test_X"], arrays["test_y"], classes
        )
    except (OSError, EOFError, ValueError, KeyError, TypeError, AttributeError):
        return None  # missing, stale or damaged: decode again
    return arrays


def _write_cache(
    cache_dir: Path, fingerprint: str, classes: tuple[str, ...], arrays: dict[str, np.ndarray]
) -> None:
    """Write the arrays, then ``meta.json`` last (it marks the cache valid); every file is
    replaced atomically. A read-only dataset folder only gives a warning."""
    meta = {
        "format": _CACHE_FORMAT,
        "fingerprint": fingerprint,
        "label_names": list(classes),
        "counts": {split: len(arrays[f"{split}_y"]) for split in _SPLITS},
    }
    try:
        cache_dir.mkdir(exist_ok=True)
        (cache_dir / _META).unlink(missing_ok=True)  # invalid until everything is rewritten
        for name, array in arrays.items():
            atomic_write(cache_dir / f"{name}.npy", functools.partial(_save_npy, array=array))
        payload = json.dumps(meta, indent=1).encode()
        atomic_write(cache_dir / _META, lambda f: f.write(payload))
    except OSError as e:
        warnings.warn(
            f"Could not write the image cache in {cache_dir} ({e}); images will be decoded "
            f"again next time",
            RuntimeWarning,
            stacklevel=3,
        )


def _save_npy(f: Any, *, array: np.ndarray) -> None:
    np.save(f, array)
