"""CIFAR-10 download/verify/extract/load on small fake batches (never the network)."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import shutil
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from jcnn.data import (
    DatasetError,
    RawDataset,
    download_cifar10,
    get_cifar10_data,
    load_cifar10_batches,
)

FOLDER = "cifar-10-batches-py"
TARBALL = "cifar-10-python.tar.gz"


def packed(tmp_path: Path, fakes) -> tuple[Path, str, object]:
    """A data dir holding only the tarball of a fake CIFAR-10; returns (data_dir, md5, fake)."""
    fake = fakes.write_fake_cifar(tmp_path / "src")
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    md5 = fakes.make_tarball(fake.folder, data_dir / TARBALL)
    return data_dir, md5, fake


# --------------------------------------------------------------------------- extracted folder


def test_extracted_folder_is_used_as_is(tmp_path, fake_cifar, fakes, no_network):
    assert download_cifar10(tmp_path) == fake_cifar.folder
    assert no_network == []  # nothing was downloaded

    raw = load_cifar10_batches(fake_cifar.folder)
    assert isinstance(raw, RawDataset)
    n = fakes.ROWS
    assert raw.X_train.shape == (5 * n, 3, 32, 32) and raw.X_train.dtype == np.uint8
    assert raw.y_train.shape == (5 * n,) and raw.y_train.dtype == np.int64
    assert raw.X_test.shape == (n, 3, 32, 32) and raw.X_test.dtype == np.uint8
    assert raw.y_test.shape == (n,) and raw.y_test.dtype == np.int64
    np.testing.assert_array_equal(raw.y_train, fake_cifar.y_train)
    np.testing.assert_array_equal(raw.y_test, fake_cifar.y_test)
    assert raw.label_names == tuple(fakes.LABEL_NAMES)

    X_train, y_train, X_test, y_test, names = raw  # unpacks like a tuple
    assert X_train is raw.X_train and names == raw.label_names


def test_nchw_channel_order(fake_cifar, fakes):
    raw = load_cifar10_batches(fake_cifar.folder)
    r, g, b = fakes.PLAIN_RGB
    assert (raw.X_train[0, 0] == r).all()
    assert (raw.X_train[0, 1] == g).all()
    assert (raw.X_train[0, 2] == b).all()
    # Row layout: channel plane, then 32x32 row-major inside the plane.
    row = fake_cifar.X_train[7]
    for c, h, w in [(0, 0, 1), (0, 1, 0), (1, 5, 31), (2, 31, 30), (2, 17, 3)]:
        assert raw.X_train[7, c, h, w] == row[c * 1024 + h * 32 + w]


def test_incomplete_folder_is_reported(tmp_path, fake_cifar):
    (fake_cifar.folder / "data_batch_4").unlink()
    with pytest.raises(DatasetError, match="data_batch_4") as info:
        download_cifar10(tmp_path)
    assert str(fake_cifar.folder) in str(info.value)


# --------------------------------------------------------------------------- tarball


def test_tarball_is_verified_and_extracted(tmp_path, fakes, no_network):
    data_dir, md5, fake = packed(tmp_path, fakes)
    folder = download_cifar10(data_dir, md5=md5)
    assert folder == data_dir / FOLDER
    assert sorted(os.listdir(data_dir)) == [FOLDER, TARBALL]  # no temporary folder left
    raw = load_cifar10_batches(folder)
    np.testing.assert_array_equal(raw.X_train.reshape(len(raw.X_train), -1), fake.X_train)
    np.testing.assert_array_equal(raw.y_test, fake.y_test)
    assert no_network == []


def test_wrong_md5_names_the_file_to_delete(tmp_path, fakes):
    data_dir, _, _ = packed(tmp_path, fakes)
    with pytest.raises(DatasetError, match="[Cc]hecksum") as info:
        download_cifar10(data_dir, md5="0" * 32)
    message = str(info.value)
    assert str(data_dir / TARBALL) in message and "delete" in message
    assert os.listdir(data_dir) == [TARBALL]  # nothing extracted, no temporary folder


def test_default_md5_is_the_published_one(tmp_path, fakes):
    data_dir, _, _ = packed(tmp_path, fakes)  # a fake tarball cannot match it
    with pytest.raises(DatasetError, match="c58f30108f718f92721af3b95e74349a"):
        download_cifar10(data_dir)


@pytest.mark.parametrize("md5", [None, "", "abc", "g" * 32])
def test_md5_check_cannot_be_skipped(tmp_path, md5):
    with pytest.raises(ValueError, match="md5"):
        download_cifar10(tmp_path, md5=md5)


@pytest.mark.parametrize("member", ["../evil.txt", "/tmp/evil.txt", "cifar-10-batches-py/../../x"])
def test_unsafe_tar_members_are_refused(tmp_path, fakes, member):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    md5 = fakes.tar_with_member(data_dir / TARBALL, member)
    with pytest.raises(DatasetError, match="Refusing"):
        download_cifar10(data_dir, md5=md5)
    assert os.listdir(data_dir) == [TARBALL]
    assert not (tmp_path / "evil.txt").exists()


def test_corrupt_tarball_says_delete(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    junk = b"this is not a tarball" * 10
    (data_dir / TARBALL).write_bytes(junk)
    with pytest.raises(DatasetError, match="delete|Delete") as info:
        download_cifar10(data_dir, md5=hashlib.md5(junk).hexdigest())
    assert str(data_dir / TARBALL) in str(info.value)
    assert os.listdir(data_dir) == [TARBALL]


# --------------------------------------------------------------------------- download


def test_no_data_and_no_network_says_where_to_put_files(tmp_path, no_network):
    data_dir = tmp_path / "nothing here"
    with pytest.raises(DatasetError) as info:
        download_cifar10(data_dir)
    message = str(info.value)
    assert str(data_dir / TARBALL) in message
    assert str(data_dir / FOLDER) in message
    assert no_network == ["https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"]
    assert os.listdir(data_dir) == []  # no .part file left behind


def test_download_is_checked_then_extracted(tmp_path, fakes, monkeypatch):
    source, md5, fake = packed(tmp_path, fakes)
    payload = (source / TARBALL).read_bytes()
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: io.BytesIO(payload))
    data_dir = tmp_path / "fresh"
    folder = download_cifar10(data_dir, md5=md5)
    assert sorted(os.listdir(data_dir)) == [FOLDER, TARBALL]
    assert (data_dir / TARBALL).read_bytes() == payload
    np.testing.assert_array_equal(load_cifar10_batches(folder).y_train, fake.y_train)


def test_bad_download_is_deleted(tmp_path, monkeypatch):
    monkeypatch.setattr(
        urllib.request, "urlopen", lambda url, timeout=None: io.BytesIO(b"<html>proxy</html>")
    )
    with pytest.raises(DatasetError, match="[Cc]hecksum"):
        download_cifar10(tmp_path / "d")
    assert os.listdir(tmp_path / "d") == []


# --------------------------------------------------------------------------- corrupt batches


def test_truncated_pickle_names_the_file(fake_cifar):
    path = fake_cifar.folder / "data_batch_3"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(DatasetError, match="data_batch_3") as info:
        load_cifar10_batches(fake_cifar.folder)
    assert "Delete the folder" in str(info.value)


def test_corrupt_batch_advice_depends_on_whether_a_tarball_can_restore_it(fake_cifar):
    path = fake_cifar.folder / "data_batch_3"
    path.write_bytes(b"garbage")
    with pytest.raises(DatasetError) as info:
        load_cifar10_batches(fake_cifar.folder)
    assert "download CIFAR-10 again" in str(info.value) and "good copy" in str(info.value)
    (fake_cifar.folder.parent / TARBALL).write_bytes(b"a tarball")
    with pytest.raises(DatasetError) as info:
        load_cifar10_batches(fake_cifar.folder)
    assert "re-extract it from" in str(info.value) and "download" not in str(info.value)


@pytest.mark.parametrize(
    "data, labels",
    [
        (np.zeros((20, 3071), np.uint8), [0] * 20),  # wrong row size
        (np.zeros((20, 3072), np.float32), [0] * 20),  # wrong dtype
        (np.zeros((20, 3072), np.uint8), [0] * 19),  # labels too short
        (np.zeros((20, 3072), np.uint8), [0] * 19 + [10]),  # label out of range
        (np.zeros((20, 3072), np.uint8), [0] * 19 + [-1]),
        ([[0] * 3072] * 20, [0] * 20),  # not an array
    ],
)
def test_wrong_batch_content_names_the_file(fake_cifar, fakes, data, labels):
    path = fake_cifar.folder / "test_batch"
    path.write_bytes(fakes.pickle_batch(data, labels, "test_batch"))
    with pytest.raises(DatasetError, match="test_batch"):
        load_cifar10_batches(fake_cifar.folder)


def test_pickle_cannot_run_code(fake_cifar):
    class Evil:
        def __reduce__(self):
            return (shutil.rmtree, (str(fake_cifar.folder),))

    path = fake_cifar.folder / "data_batch_2"
    path.write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}, protocol=2))
    with pytest.raises(DatasetError, match="data_batch_2"):
        load_cifar10_batches(fake_cifar.folder)
    assert fake_cifar.folder.is_dir()


def test_missing_folder(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_cifar10_batches(tmp_path / FOLDER)


# --------------------------------------------------------------------------- cs231n split


def test_split_sizes_and_mean_subtraction(tmp_path, fake_cifar):
    data = get_cifar10_data(tmp_path, num_training=70, num_validation=20, num_test=15)
    assert data["X_train"].shape == (70, 3, 32, 32)
    assert data["X_val"].shape == (20, 3, 32, 32)
    assert data["X_test"].shape == (15, 3, 32, 32)
    for key in ("X_train", "X_val", "X_test", "mean_image"):
        assert data[key].dtype == np.float32
    for key in ("y_train", "y_val", "y_test"):
        assert data[key].dtype == np.int64
    np.testing.assert_array_equal(data["y_train"], fake_cifar.y_train[:70])
    np.testing.assert_array_equal(data["y_val"], fake_cifar.y_train[70:90])
    np.testing.assert_array_equal(data["y_test"], fake_cifar.y_test[:15])

    raw_train = fake_cifar.X_train.reshape(-1, 3, 32, 32).astype(np.float64)
    raw_test = fake_cifar.X_test.reshape(-1, 3, 32, 32).astype(np.float64)
    mean = raw_train[:70].mean(axis=0)
    np.testing.assert_allclose(data["mean_image"], mean, rtol=1e-6)
    np.testing.assert_allclose(data["X_train"].mean(axis=0), 0, atol=1e-3)
    # Validation and test images have the *training* mean subtracted.
    np.testing.assert_allclose(data["X_val"], raw_train[70:90] - mean, atol=1e-4)
    np.testing.assert_allclose(data["X_test"], raw_test[:15] - mean, atol=1e-4)
    assert data["label_names"][0] == "airplane"


def test_defaults_need_at_least_50000_images(tmp_path, fake_cifar):
    with pytest.raises(ValueError, match="num_training"):
        get_cifar10_data(tmp_path)  # 49000 + 1000 > 100


def test_no_mean_subtraction_keeps_pixels(tmp_path, fake_cifar, fakes):
    data = get_cifar10_data(
        tmp_path, num_training=10, num_validation=5, num_test=5, subtract_mean=False
    )
    assert (data["mean_image"] == 0).all()
    r, g, b = fakes.PLAIN_RGB
    assert (data["X_train"][0, 0] == r).all() and (data["X_train"][0, 2] == b).all()
    np.testing.assert_array_equal(
        data["X_test"], fake_cifar.X_test[:5].reshape(-1, 3, 32, 32).astype(np.float32)
    )


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"num_training": 0}, "num_training"),
        ({"num_training": -5}, "num_training"),
        ({"num_training": 2.5}, "num_training"),
        ({"num_training": 95, "num_validation": 10}, "num_training"),
        ({"num_validation": -1}, "num_validation"),
        ({"num_test": 21}, "num_test"),
        ({"dtype": np.int32}, "dtype"),
    ],
)
def test_invalid_arguments_name_the_argument(tmp_path, fake_cifar, kwargs, name):
    args = {"num_training": 50, "num_validation": 10, "num_test": 10, **kwargs}
    with pytest.raises(ValueError, match=name):
        get_cifar10_data(tmp_path, **args)


def test_bad_sizes_fail_before_downloading(tmp_path, no_network):
    with pytest.raises(ValueError, match="num_training"):
        get_cifar10_data(tmp_path / "empty", num_training=-1)
    assert no_network == []


def test_data_dir_from_environment_and_home(tmp_path, monkeypatch, fakes):
    fakes.write_fake_cifar(tmp_path / "env")
    monkeypatch.setenv("JCNN_DATA_DIR", str(tmp_path / "env"))
    assert get_cifar10_data(None, 50, 10, 10)["X_train"].shape == (50, 3, 32, 32)

    fakes.write_fake_cifar(tmp_path / "home" / "cifar", seed=1)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    data = get_cifar10_data("~/cifar", 50, 10, 10, dtype=np.float64)
    assert data["X_train"].dtype == np.float64


def test_interrupted_download_leaves_no_part_file(tmp_path, monkeypatch):
    class Dropped(io.BytesIO):
        def read(self, *args):
            if self.tell() > 0:
                raise ConnectionResetError("connection reset by peer")
            return super().read(10)

    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: Dropped(b"x" * 100))
    with pytest.raises(DatasetError, match="connection reset"):
        download_cifar10(tmp_path / "d")
    assert os.listdir(tmp_path / "d") == []
