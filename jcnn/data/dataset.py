"""The raw dataset container and the one train/validation/test split used for all sources."""

from __future__ import annotations

import numbers
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import DTypeLike

__all__ = ["RawDataset", "split_and_preprocess"]


@dataclass(frozen=True)
class RawDataset:
    """Decoded images and labels exactly as stored on disk, before any split or scaling.

    Attributes:
        X_train: uint8 array of shape (N_train, C, H, W) (NCHW; channels R, G, B).
        y_train: int64 array of shape (N_train,), values in ``[0, len(label_names))``.
        X_test: uint8 array of shape (N_test, C, H, W), same C, H, W as ``X_train``.
        y_test: int64 array of shape (N_test,).
        label_names: class names; ``label_names[k]`` is the name of label ``k``.

    Iterating yields the fields in the order above, so
    ``X_train, y_train, X_test, y_test, label_names = raw`` works.

    Raises:
        ValueError: on construction, naming the field: an ``X`` that is not a uint8 numpy
            array of rank 4; a ``y`` that is not an int64 numpy array ``(N,)`` matching its
            ``X``; a label outside ``[0, len(label_names))``; non-empty ``X_test`` images of
            another ``(C, H, W)`` than ``X_train``'s.
    """

    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    label_names: tuple[str, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "label_names", tuple(self.label_names))
        num_classes = len(self.label_names)
        for split in ("train", "test"):
            X = getattr(self, f"X_{split}")
            y = getattr(self, f"y_{split}")
            if not isinstance(X, np.ndarray) or X.dtype != np.uint8 or X.ndim != 4:
                raise ValueError(
                    f"X_{split} must be a uint8 array of shape (N, C, H, W); got {_describe(X)}"
                )
            if not isinstance(y, np.ndarray) or y.dtype != np.int64 or y.shape != (len(X),):
                raise ValueError(
                    f"y_{split} must be an int64 array of shape ({len(X)},) to match X_{split}; "
                    f"got {_describe(y)}"
                )
            if y.size and (y.min() < 0 or y.max() >= num_classes):
                raise ValueError(
                    f"y_{split} must hold labels in [0, {num_classes}) "
                    f"(one per label name); found values in [{y.min()}, {y.max()}]"
                )
        if self.X_test.shape[1:] != self.X_train.shape[1:] and len(self.X_test):
            raise ValueError(
                f"X_test images have shape {self.X_test.shape[1:]} but X_train images have "
                f"shape {self.X_train.shape[1:]}; they must match"
            )

    def __iter__(self) -> Iterator[Any]:
        return iter((self.X_train, self.y_train, self.X_test, self.y_test, self.label_names))


def _describe(a: object) -> str:
    if isinstance(a, np.ndarray):
        return f"{a.dtype} array of shape {a.shape}"
    return type(a).__name__


def _check_count(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_split_sizes(num_training: object, num_validation: object, num_test: object) -> None:
    """Check the split sizes on their own (before any data is loaded); ValueError if bad.

    Args:
        num_training: training images, an int >= 1.
        num_validation: validation images, an int >= 0.
        num_test: test images, an int >= 0.

    Raises:
        ValueError: naming the argument, if it is not an integer (bools refused) or below its
            minimum.
    """
    _check_count("num_training", num_training, 1)
    _check_count("num_validation", num_validation, 0)
    _check_count("num_test", num_test, 0)


def split_and_preprocess(
    raw: RawDataset,
    num_training: int,
    num_validation: int,
    num_test: int,
    subtract_mean: bool = True,
    dtype: DTypeLike = np.float32,
) -> dict[str, Any]:
    """Split ``raw`` the cs231n way and convert the images to floats.

    * train: the first ``num_training`` training images;
    * val: the ``num_validation`` training images right after those;
    * test: the first ``num_test`` test images.

    With ``subtract_mean`` the per-pixel mean image of the *training split* is subtracted
    from all three splits (pixel values stay on the 0..255 scale otherwise).

    Args:
        raw: the dataset, e.g. from :func:`~jcnn.data.load_cifar10_batches` or
            :func:`~jcnn.data.load_image_folder`; images ``(N, C, H, W)`` uint8.
        num_training: training images, >= 1.
        num_validation: validation images, >= 0; ``num_training + num_validation`` at most
            ``len(raw.X_train)``.
        num_test: test images, >= 0 and at most ``len(raw.X_test)``.
        subtract_mean: subtract the training split's mean image from all splits.
        dtype: floating-point dtype of the returned images and mean image.

    Returns:
        A dict with ``X_train`` (num_training, C, H, W), ``X_val`` (num_validation, C, H, W),
        ``X_test`` (num_test, C, H, W), all of ``dtype``; ``y_train``, ``y_val``, ``y_test``
        int64 of matching lengths; ``mean_image`` (C, H, W) of ``dtype``, the image that was
        subtracted (all zeros when ``subtract_mean`` is false, so ``X + mean_image`` always
        gives back the pixel values); and ``label_names`` (tuple of str).

    Raises:
        ValueError: naming the argument, if a size is negative, not an integer, or asks for
            more images than ``raw`` holds, or if ``dtype`` is not a floating-point type.
    """
    check_split_sizes(num_training, num_validation, num_test)
    available = len(raw.X_train)
    if num_training + num_validation > available:
        raise ValueError(
            f"num_training + num_validation must be <= {available} (the number of training "
            f"images available); got {num_training} + {num_validation} = "
            f"{num_training + num_validation}"
        )
    if num_test > len(raw.X_test):
        raise ValueError(
            f"num_test must be <= {len(raw.X_test)} (the number of test images available); "
            f"got {num_test}"
        )
    try:
        float_dtype = np.dtype(dtype)
    except TypeError as e:
        raise ValueError(f"dtype must be a floating-point dtype, got {dtype!r}") from e
    if float_dtype.kind != "f":
        raise ValueError(f"dtype must be a floating-point dtype, got {float_dtype}")

    train_u8 = raw.X_train[:num_training]
    X_train = train_u8.astype(float_dtype)
    X_val = raw.X_train[num_training : num_training + num_validation].astype(float_dtype)
    X_test = raw.X_test[:num_test].astype(float_dtype)
    if subtract_mean:
        # Accumulate in float64 straight from the uint8 pixels: exact enough, no big copy.
        mean_image = train_u8.mean(axis=0, dtype=np.float64).astype(float_dtype)
        X_train -= mean_image
        X_val -= mean_image
        X_test -= mean_image
    else:
        mean_image = np.zeros(raw.X_train.shape[1:], dtype=float_dtype)

    return {
        "X_train": X_train,
        "y_train": raw.y_train[:num_training].copy(),
        "X_val": X_val,
        "y_val": raw.y_train[num_training : num_training + num_validation].copy(),
        "X_test": X_test,
        "y_test": raw.y_test[:num_test].copy(),
        "mean_image": mean_image,
        "label_names": raw.label_names,
    }
