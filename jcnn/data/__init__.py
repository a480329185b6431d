"""Datasets for jcnn: CIFAR-10 and folders of images, split the cs231n way.

Everything goes through one path::

    raw = load_cifar10_batches(download_cifar10(data_dir))  # or load_image_folder(root)
    data = split_and_preprocess(raw, num_training, num_validation, num_test)

``get_cifar10_data()`` does both steps for CIFAR-10 with the cs231n defaults (49000 train,
1000 validation, 1000 test, mean image subtracted, float32 NCHW). Raw images are uint8
arrays of shape (N, 3, H, W) with channels R, G, B; labels are int64 of shape (N,).

Problems with the data on disk raise :class:`DatasetError`, whose message names the file
at fault and says what to do.
"""

from jcnn.data.cifar10 import (
    CIFAR10_MD5,
    CIFAR10_URL,
    DATA_DIR_ENV,
    download_cifar10,
    get_cifar10_data,
    load_cifar10_batches,
)
from jcnn.data.dataset import RawDataset, split_and_preprocess
from jcnn.data.errors import DatasetError
from jcnn.data.folder import describe_image_folder, load_image_folder, read_image

__all__ = [
    "CIFAR10_MD5",
    "CIFAR10_URL",
    "DATA_DIR_ENV",
    "DatasetError",
    "RawDataset",
    "describe_image_folder",
    "download_cifar10",
    "get_cifar10_data",
    "load_cifar10_batches",
    "load_image_folder",
    "read_image",
    "split_and_preprocess",
]
