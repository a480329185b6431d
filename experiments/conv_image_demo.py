"""Image processing with a convolution: the assignment's grayscale and edge-detection cell.

    python -m experiments.conv_image_demo [--out=conv_image_demo.png] [--size=200]
                                          [--images=a.jpg,b.png]

Two filters, applied with ``jcnn.layers.conv2d`` (3×3, stride 1, pad 1) to two photos
resized to ``size × size``:

- grayscale: the centre taps are 0.3 / 0.6 / 0.1 of red / green / blue (a weighted sum of the
  channels at each pixel), bias 0;
- edges: the horizontal Sobel filter ``[[1, 2, 1], [0, 0, 0], [-1, -2, -1]]`` on the blue
  channel only, bias 128.

The figure has one row per photo: original | grayscale | edges, each output rescaled to the
full grey range for display as cs231n's ``imshow_noax`` does. The default photos are in
``experiments/assets/`` (see its README for their sources and licences).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

import jcnn.layers as L
from experiments import errors
from jcnn import viz

ASSETS = Path(__file__).resolve().parent / "assets"
DEFAULT_IMAGES = (ASSETS / "grace_hopper.jpg", ASSETS / "present.jpg")
SOBEL = ((1.0, 2.0, 1.0), (0.0, 0.0, 0.0), (-1.0, -2.0, -1.0))
GRAY_TAPS = (0.3, 0.6, 0.1)


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
    flags.DEFINE_string(
        "out", "conv_image_demo.png", "Where to write the PNG figure.", flag_values=fv
    )
    flags.DEFINE_integer(
        "size", 200, "Photos are centre-cropped and resized to size x size.", lower_bound=3,
        flag_values=fv,
    )  # fmt: skip
    flags.DEFINE_list(
        "images", [str(p) for p in DEFAULT_IMAGES], "Photos to filter (comma-separated paths).",
        flag_values=fv,
    )  # fmt: skip


def load_image(path: str | os.PathLike, size: int) -> np.ndarray:
    """The photo at ``path`` as float32 ``(3, size, size)`` RGB in [0, 255]: centre-cropped
    to a square, then resized."""
    try:
        from PIL import Image
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("the demo needs Pillow: pip install 'jcnn[plots]'") from e
    with Image.open(path) as im:
        im = im.convert("RGB")
        w, h = im.size
        s = min(w, h)
        left, top = (w - s) // 2, (h - s) // 2
        im = im.crop((left, top, left + s, top + s)).resize((size, size), Image.Resampling.BICUBIC)
        return np.asarray(im, dtype=np.float32).transpose(2, 0, 1).copy()


def demo_filters(dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
    """``w`` (2, 3, 3, 3) and ``b`` (2,): filter 0 grayscale, filter 1 Sobel on blue."""
    w = np.zeros((2, 3, 3, 3), dtype=dtype)
    w[0, :, 1, 1] = GRAY_TAPS
    w[1, 2] = SOBEL
    b = np.array([0.0, 128.0], dtype=dtype)
    return w, b


@jax.jit
def apply_filters(x: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
    """``conv2d(x, w, b)`` with stride 1 and pad 1: same height and width as ``x``."""
    return L.conv2d(x, w, b, stride=1, pad=1)


def to_display(img: np.ndarray) -> np.ndarray:
    """Rescale to [0, 1] for ``imshow`` (a constant image becomes 0)."""
    img = np.asarray(img, dtype=np.float64)
    lo, hi = img.min(), img.max()
    return (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)


def render(x: np.ndarray, out: np.ndarray):
    """Figure with one row per image: original | grayscale | edges."""
    n = x.shape[0]
    fig = viz.new_figure((9.0, 3.0 * n))
    axes = fig.subplots(n, 3, squeeze=False)
    for i in range(n):
        panels = (
            (x[i].transpose(1, 2, 0) / 255.0, None, "original"),
            (to_display(out[i, 0]), "gray", "grayscale"),
            (to_display(out[i, 1]), "gray", "edges (Sobel on blue)"),
        )
        for ax, (img, cmap, title) in zip(axes[i], panels, strict=True):
            ax.imshow(np.clip(img, 0.0, 1.0), cmap=cmap)
            ax.set_axis_off()
            if i == 0:
                ax.set_title(title)
    return fig


def run(images: Sequence[str | os.PathLike], size: int, out: str | os.PathLike) -> np.ndarray:
    """Filter ``images`` and write the figure to ``out``; returns the conv output
    ``(len(images), 2, size, size)``."""
    x = np.stack([load_image(p, size) for p in images])
    w, b = demo_filters()
    y = np.asarray(apply_filters(jnp.asarray(x), jnp.asarray(w), jnp.asarray(b)))
    viz.save_figure(render(x, y), out)
    return y


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise SystemExit(f"FATAL unexpected arguments: {' '.join(argv[1:])}")
    fv = flags.FLAGS
    if not fv.images:
        raise SystemExit("FATAL --images: give at least one photo")
    missing = [p for p in fv.images if not Path(p).is_file()]
    if missing:
        raise SystemExit(f"FATAL --images: no such file: {', '.join(missing)}")
    run(fv.images, fv.size, fv.out)
    print(f"wrote {fv.out}")


if __name__ == "__main__":
    define_flags()
    errors.run_app(main)
