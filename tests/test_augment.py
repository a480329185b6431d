"""jcnn.augment: every output image is a shifted (zero- or reflect-filled) and maybe mirrored
input."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jcnn.augment import (
    alternating_flip_crop,
    cutout,
    random_crop,
    random_crop_flip,
    random_flip,
)


def _images(n=6, c=3, h=8, w=8, dtype=np.float32):
    rng = np.random.default_rng(0)
    # Strictly positive, so a zero can only come from the padding.
    return (rng.uniform(0.5, 1.5, size=(n, c, h, w))).astype(dtype)


def _candidates(img: np.ndarray, pad: int, mode: str = "constant"):
    """Every (dy, dx, flip) crop of ``img`` padded with ``pad`` pixels per side (numpy's
    ``mode``: zeros by default)."""
    c, h, w = img.shape
    padded = np.pad(img, ((0, 0), (pad, pad), (pad, pad)), mode=mode)
    for dy, dx, flip in itertools.product(range(2 * pad + 1), range(2 * pad + 1), (False, True)):
        crop = padded[:, dy : dy + h, dx : dx + w]
        yield (dy, dx, flip), (crop[:, :, ::-1] if flip else crop)


def _match(out: np.ndarray, img: np.ndarray, pad: int, mode: str = "constant"):
    found = [k for k, cand in _candidates(img, pad, mode) if np.array_equal(out, cand)]
    assert found, "output image is no crop/flip of its input"
    return found[0]


@pytest.mark.parametrize("pad", [0, 1, 4])
def test_each_image_is_a_crop_and_maybe_a_flip_of_its_input(pad):
    X = _images()
    out = np.asarray(random_crop_flip(jax.random.key(3), X, pad=pad))
    assert out.shape == X.shape and out.dtype == X.dtype
    for o, x in zip(out, X, strict=True):
        _match(o, x, pad)


def test_offsets_and_flips_cover_their_range_and_differ_per_image():
    X = _images(n=400, c=1, h=6, w=6)
    out = np.asarray(random_crop_flip(jax.random.key(0), X, pad=2))
    seen = [_match(o, x, 2) for o, x in zip(out, X, strict=True)]
    dys = {s[0] for s in seen}
    dxs = {s[1] for s in seen}
    flips = np.mean([s[2] for s in seen])
    assert dys == set(range(5)) and dxs == set(range(5))
    assert 0.4 < flips < 0.6
    assert len(set(seen)) > 20  # images draw their own transforms


def test_same_key_same_batch_other_key_other_batch():
    X = _images(n=16)
    a = random_crop_flip(jax.random.key(1), X)
    b = random_crop_flip(jax.random.key(1), X)
    c = random_crop_flip(jax.random.key(2), X)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_jit_and_vmap_agree_with_eager():
    X = _images(n=4)
    key = jax.random.key(7)
    eager = random_crop_flip(key, X)
    jitted = jax.jit(random_crop_flip, static_argnames="pad")
    np.testing.assert_array_equal(eager, jitted(key, X, pad=4))
    keys = jax.random.split(key, 3)
    stacked = jnp.stack([X, X + 1, X * 2])
    batched = jax.vmap(random_crop_flip)(keys, stacked)
    for i in range(3):
        np.testing.assert_array_equal(batched[i], jitted(keys[i], stacked[i]))


def test_crop_only_and_flip_only():
    X = _images()
    cropped = np.asarray(random_crop(jax.random.key(0), X, pad=3))
    for o, x in zip(cropped, X, strict=True):
        assert any(np.array_equal(o, c) for (_, _, f), c in _candidates(x, 3) if not f)
    flipped = np.asarray(random_flip(jax.random.key(0), X))
    for o, x in zip(flipped, X, strict=True):
        assert np.array_equal(o, x) or np.array_equal(o, x[:, :, ::-1])


def test_keeps_dtype():
    X = _images(dtype=np.float64)
    assert random_crop_flip(jax.random.key(0), X).dtype == jnp.float64


@pytest.mark.parametrize(
    "X, pad, match",
    [
        (np.zeros((3, 8, 8)), 4, "N, C, H, W"),
        (np.zeros((2, 3, 8, 8)), -1, "pad"),
        (np.zeros((2, 3, 8, 8)), 1.5, "pad"),
        (np.zeros((2, 3, 8, 8)), True, "pad"),
    ],
)
def test_bad_input(X, pad, match):
    with pytest.raises(ValueError, match=match):
        random_crop_flip(jax.random.key(0), X, pad=pad)


def test_reflect_padding_shifts_in_the_mirrored_border_instead_of_zeros():
    X = _images(n=200, c=1, h=6, w=6)
    key = jax.random.key(2)
    out = np.asarray(random_crop_flip(key, X, pad=2, padding="reflect"))
    seen = [_match(o, x, 2, "reflect") for o, x in zip(out, X, strict=True)]
    assert not np.any(out == 0)  # the images are > 0: no zero came in from the border
    assert {s[0] for s in seen} == set(range(5)) and 0.3 < np.mean([s[2] for s in seen]) < 0.7
    # the same draws as with zeros: only what fills the border differs
    zeros = np.asarray(random_crop_flip(key, X, pad=2))
    assert [_match(o, x, 2) for o, x in zip(zeros, X, strict=True)] == seen
    crop = np.asarray(random_crop(key, X, pad=1, padding="reflect"))
    for o, x in zip(crop, X, strict=True):
        assert not _match(o, x, 1, "reflect")[2]  # shifted, never mirrored


def test_bad_padding_raises_naming_it():
    X = _images(n=2)
    with pytest.raises(ValueError, match="padding must be one of"):
        random_crop_flip(jax.random.key(0), X, padding="edge")
    with pytest.raises(ValueError, match="pad=8 must be smaller"):
        random_crop(jax.random.key(0), X, pad=8, padding="reflect")


# ------------------------------------------------------------------------------ cutout


def _zeroed_box(img: np.ndarray) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the zeros of ``img`` (C, H, W), checking they form one
    full-channel rectangle."""
    zero = img == 0
    assert (zero == zero[0]).all(), "cutout must zero every channel alike"
    rows, cols = np.flatnonzero(zero[0].any(1)), np.flatnonzero(zero[0].any(0))
    box = (rows[0], rows[-1] + 1, cols[0], cols[-1] + 1)
    assert zero[0, box[0] : box[1], box[2] : box[3]].all() and zero[0].sum() == (
        (box[1] - box[0]) * (box[3] - box[2])
    ), "the zeros are not one rectangle"
    return box


def test_cutout_zeroes_one_square_per_image_clipped_at_the_borders():
    X = _images(n=200, h=8, w=8)
    out = np.asarray(cutout(jax.random.key(4), X, size=4))
    sides, clipped = set(), 0
    for img, o in zip(X, out, strict=True):
        top, bottom, left, right = _zeroed_box(o)
        keep = o != 0
        np.testing.assert_array_equal(o[keep], img[keep])  # everything else untouched
        sides.add((bottom - top, right - left))
        clipped += (bottom - top, right - left) != (4, 4)
    assert (4, 4) in sides and all(h <= 4 and w <= 4 for h, w in sides)
    assert clipped > 0  # centres near an edge lose part of the square
    centres = {(t, l) for t, _, l, _ in map(_zeroed_box, out)}
    assert len(centres) > 20  # each image draws its own place


def test_random_crop_flip_with_cutout_and_without():
    X = _images()
    key = jax.random.key(5)
    plain = np.asarray(random_crop_flip(key, X, pad=2))
    np.testing.assert_array_equal(np.asarray(random_crop_flip(key, X, pad=2, cutout=0)), plain)
    cut = np.asarray(random_crop_flip(key, X, pad=0, cutout=3))
    for img, o in zip(X, cut, strict=True):
        _zeroed_box(o)  # one square of zeros (no padding: pad=0)
        keep = o != 0
        assert np.array_equal(o[keep], img[keep]) or np.array_equal(o[keep], img[..., ::-1][keep])
    with pytest.raises(ValueError, match="cutout"):
        random_crop_flip(key, X, cutout=-1)
    with pytest.raises(ValueError, match="size"):
        cutout(key, X, size=2.5)
    jitted = jax.jit(lambda k, x: random_crop_flip(k, x, pad=1, cutout=3))
    np.testing.assert_array_equal(jitted(key, X), random_crop_flip(key, X, pad=1, cutout=3))


def test_alternating_flip_crop_mirrors_each_image_in_every_other_epoch():
    X = np.random.default_rng(3).normal(size=(64, 3, 8, 8)).astype(np.float32)
    key = jax.random.key(0)
    epochs = [
        np.asarray(alternating_flip_crop(key, X, step=s, steps_per_epoch=4, pad=0))
        for s in (0, 3, 4, 9)  # epochs 0, 0, 1, 2
    ]
    flipped = [np.all(e == X[..., ::-1], axis=(1, 2, 3)) for e in epochs]
    kept = [np.all(e == X, axis=(1, 2, 3)) for e in epochs]
    for f, k in zip(flipped, kept, strict=True):
        assert np.all(f ^ k)  # each image exactly one way
    np.testing.assert_array_equal(flipped[0], flipped[1])  # same epoch, same choice
    np.testing.assert_array_equal(flipped[2], ~flipped[0])  # the next epoch: the other way
    np.testing.assert_array_equal(flipped[3], flipped[0])
    assert 16 < flipped[0].sum() < 48  # about half start mirrored


def test_alternating_flip_crop_translates_with_reflect_padding():
    X = _images(n=8)
    out = np.asarray(alternating_flip_crop(jax.random.key(1), X, step=0, steps_per_epoch=1, pad=2))
    for img, o in zip(X, out, strict=True):
        padded = np.pad(img, ((0, 0), (2, 2), (2, 2)), mode="reflect")
        views = [padded[:, dy : dy + 8, dx : dx + 8] for dy in range(5) for dx in range(5)]
        assert any(np.array_equal(o, v) or np.array_equal(o, v[:, :, ::-1]) for v in views)
    assert not np.any(out == 0)  # reflect, not zeros


def test_alternating_flip_crop_with_cutout_zeroes_a_square_after_the_same_crops_and_flips():
    X = _images(n=8) + 1.0  # no zero pixels before the cutout
    key = jax.random.key(4)
    plain = np.asarray(alternating_flip_crop(key, X, step=1, steps_per_epoch=1, pad=2))
    cut = np.asarray(alternating_flip_crop(key, X, step=1, steps_per_epoch=1, pad=2, cutout=3))
    zeroed = cut == 0
    assert zeroed.any(axis=(1, 2, 3)).all()  # a square in every image
    assert zeroed.all(axis=1).sum(axis=(1, 2)).max() <= 9  # at most 3 x 3 pixels each
    np.testing.assert_array_equal(cut[~zeroed], plain[~zeroed])  # the rest: the same draws


def test_alternating_flip_crop_checks_its_arguments():
    X = _images(n=2)
    with pytest.raises(ValueError, match="cutout"):
        alternating_flip_crop(jax.random.key(0), X, step=0, steps_per_epoch=1, cutout=-1)
    with pytest.raises(ValueError, match="pad"):
        alternating_flip_crop(jax.random.key(0), X, step=0, steps_per_epoch=1, pad=8)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        alternating_flip_crop(jax.random.key(0), X, step=0, steps_per_epoch=0)
