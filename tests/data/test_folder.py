"""Image-folder loading and its .npy cache, on tiny PNG trees."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from jcnn.data import DatasetError, RawDataset, load_image_folder, split_and_preprocess

Image = pytest.importorskip("PIL.Image")

CLASSES = ("cat", "dog")
N_TRAIN, N_TEST = 3, 2  # images per class


def color(label: int, index: int, split: str) -> tuple[int, int, int]:
    """A distinct solid colour per image: R = 100*label + index, G marks the split."""
    return (100 * label + index, 1 if split == "train" else 2, 50 + label)


def save(path: Path, rgb: tuple[int, int, int], size: tuple[int, int] = (8, 8)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, rgb).save(path)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """root/{train,test}/{cat,dog}/NN.png, 8x8 solid colours."""
    root = tmp_path / "pets"
    for split, count in (("train", N_TRAIN), ("test", N_TEST)):
        for label, name in enumerate(CLASSES):
            for i in range(count):
                save(root / split / name / f"{i:02d}.png", color(label, i, split))
    return root


@pytest.fixture
def count_opens(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Records every image Pillow is asked to open."""
    opened: list[Path] = []
    real_open = Image.open

    def spy(path, *args, **kwargs):
        opened.append(Path(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(Image, "open", spy)
    return opened


def test_load_shapes_labels_and_names(tree):
    raw = load_image_folder(tree, shuffle_seed=None)
    assert isinstance(raw, RawDataset)
    assert raw.label_names == CLASSES
    assert raw.X_train.shape == (2 * N_TRAIN, 3, 8, 8) and raw.X_train.dtype == np.uint8
    assert raw.X_test.shape == (2 * N_TEST, 3, 8, 8) and raw.X_test.dtype == np.uint8
    assert raw.y_train.dtype == np.int64 and raw.y_test.dtype == np.int64
    np.testing.assert_array_equal(raw.y_train, [0, 0, 0, 1, 1, 1])
    np.testing.assert_array_equal(raw.y_test, [0, 0, 1, 1])
    # Sorted order: class by class, file name order; pixels in NCHW with R, G, B planes.
    for k, (label, i) in enumerate([(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]):
        for c, value in enumerate(color(label, i, "train")):
            assert (raw.X_train[k, c] == value).all()


def test_default_order_is_shuffled_but_consistent(tree):
    raw = load_image_folder(tree)
    assert sorted(raw.y_train.tolist()) == [0, 0, 0, 1, 1, 1]
    # Each image still carries its own label: R // 100 is the label, G marks the split.
    np.testing.assert_array_equal(raw.X_train[:, 0, 0, 0] // 100, raw.y_train)
    np.testing.assert_array_equal(raw.X_test[:, 0, 0, 0] // 100, raw.y_test)
    assert (raw.X_test[:, 1] == 2).all()
    again = load_image_folder(tree)
    np.testing.assert_array_equal(again.X_train, raw.X_train)


def test_cache_is_written_and_reused(tree, count_opens, monkeypatch):
    first = load_image_folder(tree)
    assert len(count_opens) == 2 * (N_TRAIN + N_TEST)
    cache = tree / ".jcnn_cache"
    for name in ("train_X", "train_y", "test_X", "test_y"):
        assert (cache / f"{name}.npy").is_file()
    assert (cache / "meta.json").is_file()
    assert not [p for p in cache.iterdir() if p.name.endswith(".tmp")]

    def no_pillow(*args, **kwargs):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(Image, "open", no_pillow)
    second = load_image_folder(tree)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)


def test_cache_hit_does_not_need_pillow(tree, monkeypatch):
    load_image_folder(tree)
    monkeypatch.setitem(sys.modules, "PIL", None)
    monkeypatch.setitem(sys.modules, "PIL.Image", None)
    assert load_image_folder(tree).X_train.shape == (6, 3, 8, 8)


def test_adding_a_file_invalidates_the_cache(tree, count_opens):
    load_image_folder(tree)
    save(tree / "train" / "dog" / "03.png", color(1, 3, "train"))
    count_opens.clear()
    raw = load_image_folder(tree, shuffle_seed=None)
    assert len(count_opens) == 2 * (N_TRAIN + N_TEST) + 1
    assert raw.X_train.shape == (7, 3, 8, 8)
    assert raw.y_train.tolist() == [0, 0, 0, 1, 1, 1, 1]
    assert (raw.X_train[-1, 0] == 103).all()


def test_a_same_size_replacement_with_its_old_time_invalidates_the_cache(tree):
    """``cp -p`` / ``rsync -a`` keep size and time: the cache keys on contents."""
    import os

    load_image_folder(tree)
    image = tree / "train" / "cat" / "01.png"
    stat = image.stat()
    other = tree / "other.png"
    save(other, (9, 9, 9))
    assert other.stat().st_size == stat.st_size  # solid 8x8 PNGs compress alike
    os.replace(other, image)
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    raw = load_image_folder(tree, shuffle_seed=None)
    assert (raw.X_train[1] == 9).all()


def test_damaged_cache_is_rebuilt(tree, count_opens):
    expected = load_image_folder(tree)
    path = tree / ".jcnn_cache" / "train_X.npy"
    path.write_bytes(path.read_bytes()[:100])
    count_opens.clear()
    raw = load_image_folder(tree)
    assert count_opens  # decoded again
    np.testing.assert_array_equal(raw.X_train, expected.X_train)


def test_mixed_sizes_name_the_file(tree):
    odd = tree / "test" / "dog" / "01.png"
    save(odd, (1, 2, 3), size=(9, 8))
    with pytest.raises(DatasetError, match="size") as info:
        load_image_folder(tree)
    assert str(odd) in str(info.value)


def test_size_resizes_everything(tree):
    save(tree / "test" / "dog" / "01.png", (1, 2, 3), size=(9, 8))
    raw = load_image_folder(tree, size=(4, 6))
    assert raw.X_train.shape == (6, 3, 4, 6) and raw.X_test.shape == (4, 3, 4, 6)
    assert load_image_folder(tree, size=5).X_train.shape == (6, 3, 5, 5)


@pytest.mark.parametrize("size", [0, -1, (4,), (4, 0), "8", 2.0])
def test_bad_size_is_rejected(tree, size):
    with pytest.raises(ValueError, match="size"):
        load_image_folder(tree, size=size)


@pytest.mark.parametrize("size", [10**6, (10**5, 10**5)])
def test_a_size_whose_images_cannot_fit_in_memory_is_refused_before_any_file_is_read(
    tree, count_opens, size
):
    """Resizing to such a size used to fill the machine's memory until the kernel killed the
    process."""
    with pytest.raises(ValueError, match=r"size=.* makes train images \(6, 3, .*of memory"):
        load_image_folder(tree, size=size)
    assert not count_opens and not (tree / ".jcnn_cache").exists()


def test_grayscale_and_jpeg_become_rgb_and_other_files_are_ignored(tree):
    gray = tree / "train" / "cat" / "gray.png"
    Image.new("L", (8, 8), 77).save(gray)
    Image.new("RGB", (8, 8), (0, 0, 0)).save(tree / "train" / "cat" / "photo.JPG", format="JPEG")
    (tree / "train" / "cat" / "notes.txt").write_text("not an image")
    (tree / "train" / "cat" / ".hidden.png").write_bytes(b"junk")
    (tree / "train" / ".secret").mkdir()
    raw = load_image_folder(tree, shuffle_seed=None)
    assert raw.label_names == CLASSES
    assert raw.X_train.shape == (8, 3, 8, 8)
    # Sorted names: 00, 01, 02, gray, photo.
    assert (raw.X_train[3] == 77).all()
    assert raw.X_train[4].max() < 10  # black JPEG, up to compression noise


def test_sixteen_bit_alpha_and_palette_images_keep_their_values(tree):
    """Pillow's own RGB conversion clips 16-bit values, so 30000/65535 came out white."""
    folder = tree / "train" / "cat"
    Image.fromarray(np.full((8, 8), 30000, np.uint16)).save(folder / "g16.png")  # mode I;16
    Image.new("RGBA", (8, 8), (10, 20, 30, 0)).save(folder / "h_alpha.png")
    palette = Image.new("P", (8, 8), 1)
    palette.putpalette([0, 0, 0, 200, 100, 50])
    palette.save(folder / "i_palette.png")
    raw = load_image_folder(tree, shuffle_seed=None)
    # Sorted names: 00, 01, 02, g16, h_alpha, i_palette.
    assert (raw.X_train[3] == round(30000 * 255 / 65535)).all()  # 117
    assert raw.X_train[4].reshape(3, -1)[:, 0].tolist() == [10, 20, 30]  # alpha dropped
    assert raw.X_train[5].reshape(3, -1)[:, 0].tolist() == [200, 100, 50]


def test_floating_point_pixels_are_refused_naming_the_file(tree):
    bad = tree / "train" / "dog" / "float.png"  # a TIFF inside: Pillow reads the contents
    Image.fromarray(np.full((8, 8), 0.5, np.float32)).save(bad, format="TIFF")
    with pytest.raises(DatasetError, match="floating-point pixels") as info:
        load_image_folder(tree)
    assert "float.png" in str(info.value)


def test_corrupt_image_names_the_file(tree):
    bad = tree / "train" / "dog" / "01.png"
    bad.write_bytes(b"\x89PNG not really")
    with pytest.raises(DatasetError, match="decode") as info:
        load_image_folder(tree)
    assert str(bad) in str(info.value)


def test_test_classes_must_match_train(tree):
    save(tree / "test" / "bird" / "00.png", (0, 0, 0))
    with pytest.raises(DatasetError, match="bird"):
        load_image_folder(tree)


def test_layout_errors(tmp_path, tree):
    with pytest.raises(DatasetError, match="no train/"):
        load_image_folder(tree / "train")  # no train/ and test/ inside
    (tree / "train" / "fish").mkdir()
    (tree / "test" / "fish").mkdir()
    with pytest.raises(DatasetError, match="fish"):
        load_image_folder(tree)  # a train class without images


def test_missing_pillow_says_how_to_install(tree, monkeypatch):
    monkeypatch.setitem(sys.modules, "PIL", None)
    monkeypatch.setitem(sys.modules, "PIL.Image", None)
    with pytest.raises(ImportError, match="pip install pillow"):
        load_image_folder(tree)


def test_goes_through_the_same_split(tree):
    data = split_and_preprocess(load_image_folder(tree), 4, 2, 3)
    assert data["X_train"].shape == (4, 3, 8, 8) and data["X_train"].dtype == np.float32
    assert data["X_val"].shape == (2, 3, 8, 8) and data["X_test"].shape == (3, 3, 8, 8)
    np.testing.assert_allclose(data["X_train"].mean(axis=0), 0, atol=1e-4)
    assert data["label_names"] == CLASSES
    with pytest.raises(ValueError, match="num_test"):
        split_and_preprocess(load_image_folder(tree), 4, 2, 5)


@pytest.mark.parametrize("kind", ["dangling link", "fifo"])
def test_a_file_named_as_an_image_that_is_not_one_is_refused_not_skipped(tree, kind):
    """A dangling link or a FIFO named *.png in a class folder was left out silently (the
    dataset one image shorter); now it stops the load naming it."""
    import os

    odd = tree / "train" / "cat" / "odd.png"
    if kind == "fifo":
        os.mkfifo(odd)
    else:
        odd.symlink_to(tree / "deleted.png")
    with pytest.raises(DatasetError, match=r"odd.png is named as an image but is not a file"):
        load_image_folder(tree)
