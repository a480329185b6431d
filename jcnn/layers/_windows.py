"""Index helpers shared by the window-based layers (conv, max-pool)."""

from __future__ import annotations

import jax
from jax import lax

LAYOUTS = ("NCHW", "NHWC")


def spatial_axes(layout: str) -> tuple[int, int]:
    return (2, 3) if layout == "NCHW" else (1, 2)


def channel_axis(layout: str) -> int:
    return 1 if layout == "NCHW" else 3


def tap(
    kh: int, kw: int, h_out: int, w_out: int, stride: int, layout: str = "NCHW"
) -> tuple[slice, ...]:
    """Index of the input pixels that window tap ``(kh, kw)`` sees at every output position."""
    index = [slice(None)] * 4
    h_axis, w_axis = spatial_axes(layout)
    index[h_axis] = slice(kh, kh + stride * (h_out - 1) + 1, stride)
    index[w_axis] = slice(kw, kw + stride * (w_out - 1) + 1, stride)
    return tuple(index)


def untap(
    values: jax.Array, kh: int, kw: int, x_shape: tuple[int, ...], stride: int, layout: str = "NCHW"
) -> jax.Array:
    """The adjoint of ``x[tap(...)]``: ``values`` placed at tap ``(kh, kw)``'s pixels of a
    zero array shaped ``x_shape`` (one ``lax.pad`` with interior padding, no scatter)."""
    config = [(0, 0, 0)] * 4
    for axis, k in zip(spatial_axes(layout), (kh, kw), strict=True):
        n_out = values.shape[axis]
        config[axis] = (k, x_shape[axis] - k - stride * (n_out - 1) - 1, stride - 1)
    return lax.pad(values, lax.full((), 0, values.dtype), config)
