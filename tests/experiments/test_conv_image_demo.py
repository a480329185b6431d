"""experiments.conv_image_demo: the filters do what the assignment says; the figure is written."""

from __future__ import annotations

import subprocess

import numpy as np

from experiments import conv_image_demo as demo
from tests.experiments.util import PYTHON, ROOT, subprocess_env

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_assets_are_small_photos():
    for path in demo.DEFAULT_IMAGES:
        assert path.is_file() and path.stat().st_size <= 50_000, path
        img = demo.load_image(path, 40)
        assert img.shape == (3, 40, 40) and img.dtype == np.float32
        assert 0 <= img.min() and img.max() <= 255 and img.std() > 10


def test_filters_grayscale_and_sobel_on_blue(tmp_path):
    out_png = tmp_path / "fig.png"
    y = demo.run(demo.DEFAULT_IMAGES, 32, out_png)
    assert y.shape == (2, 2, 32, 32)
    assert out_png.read_bytes()[:8] == PNG_MAGIC
    x = np.stack([demo.load_image(p, 32) for p in demo.DEFAULT_IMAGES]).astype(np.float64)
    gray = 0.3 * x[:, 0] + 0.6 * x[:, 1] + 0.1 * x[:, 2]
    np.testing.assert_allclose(y[:, 0], gray, rtol=1e-5, atol=1e-3)
    blue = np.pad(x[:, 2], ((0, 0), (1, 1), (1, 1)))
    sobel = np.asarray(demo.SOBEL)
    edges = np.zeros((2, 32, 32))
    for i in range(3):
        for j in range(3):
            edges += sobel[i, j] * blue[:, i : i + 32, j : j + 32]
    np.testing.assert_allclose(y[:, 1], edges + 128.0, rtol=1e-5, atol=1e-2)


def test_cli(tmp_path):
    out = tmp_path / "demo.png"
    proc = subprocess.run(
        [PYTHON, "-m", "experiments.conv_image_demo", f"--out={out}", "--size=48"],
        capture_output=True, text=True, timeout=120, cwd=ROOT, env=subprocess_env(),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert out.read_bytes()[:8] == PNG_MAGIC
    bad = subprocess.run(
        [PYTHON, "-m", "experiments.conv_image_demo", f"--images={tmp_path / 'nope.jpg'}"],
        capture_output=True, text=True, timeout=120, cwd=ROOT, env=subprocess_env(),
    )  # fmt: skip
    assert bad.returncode == 1 and "nope.jpg" in bad.stderr
