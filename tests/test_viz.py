"""jcnn.viz: the filter grid (numpy) and that every plot renders to a PNG."""

from __future__ import annotations

import numpy as np
import pytest

from jcnn import viz

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_filter_grid_rgb_layout_and_scaling():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(5, 3, 4, 4))
    grid = viz.filter_grid(w, padding=1)
    # 5 filters -> 3 columns x 2 rows of 4x4 tiles with 1 pixel between them.
    assert grid.shape == (2 * 4 + 1, 3 * 4 + 2, 3)
    assert grid.min() >= 0.0 and grid.max() <= 1.0
    tile = grid[0:4, 5:9]  # filter 1, as (HH, WW, C), rescaled to [0, 1] on its own
    f1 = w[1].transpose(1, 2, 0)
    np.testing.assert_allclose(tile, (f1 - f1.min()) / (f1.max() - f1.min()))
    assert np.all(grid[4, :] == 0) and np.all(grid[:, 4] == 0)  # padding rows/cols


def test_filter_grid_grey_and_constant_filters():
    w = np.zeros((2, 2, 3, 3))
    w[0, 0] = np.arange(9).reshape(3, 3)
    grid = viz.filter_grid(w, padding=0)
    assert grid.shape == (2 * 3, 2 * 3)  # 4 grey tiles (2 filters x 2 channels)
    np.testing.assert_allclose(grid[:3, :3], np.arange(9).reshape(3, 3) / 8)
    np.testing.assert_allclose(grid[:3, 3:], 0.5)  # a constant tile is mid-grey


@pytest.mark.parametrize(
    "w, kw, match",
    [
        (np.zeros((3, 3, 3)), {}, "F, C, HH, WW"),
        (np.zeros((0, 3, 3, 3)), {}, "empty"),
        (np.zeros((1, 3, 3, 3)), {"padding": -1}, "padding"),
    ],
)
def test_filter_grid_bad_input(w, kw, match):
    with pytest.raises(ValueError, match=match):
        viz.filter_grid(w, **kw)


def test_every_plot_writes_a_png(tmp_path):
    rng = np.random.default_rng(0)
    loss = 2.3 * np.exp(-np.linspace(0, 3, 200)) + 0.1 * rng.random(200)
    figs = {
        "loss.png": viz.plot_loss(loss, iterations_per_epoch=20),
        "loss_short.png": viz.plot_loss([2.3]),
        "loss_empty.png": viz.plot_loss([]),
        "accuracy.png": viz.plot_accuracy([0.1, 0.5, 0.8], [0.1, 0.4, 0.5]),
        "filters.png": viz.plot_filters(rng.normal(size=(32, 3, 7, 7))),
        "filters_grey.png": viz.plot_filters(rng.normal(size=(4, 1, 5, 5))),
    }
    for name, fig in figs.items():
        path = viz.save_figure(fig, tmp_path / "sub" / name)
        assert path.read_bytes()[:8] == PNG_MAGIC, name


def test_plot_accuracy_checks_lengths():
    with pytest.raises(ValueError, match="differ in length"):
        viz.plot_accuracy([0.1, 0.2], [0.1])
    with pytest.raises(ValueError, match="epochs"):
        viz.plot_accuracy([0.1, 0.2], [0.1, 0.2], epochs=[0])


def test_no_pyplot_state():
    """Figures are built without pyplot: drawing many leaves no open figures behind."""
    import sys

    for _ in range(3):
        viz.plot_loss([1.0, 0.5])
    if "matplotlib.pyplot" in sys.modules:
        import matplotlib.pyplot as plt

        assert plt.get_fignums() == []
