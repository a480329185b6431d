"""Index helper shared by the window-based layers (conv, max-pool)."""

from __future__ import annotations


def tap(kh: int, kw: int, h_out: int, w_out: int, stride: int) -> tuple[slice, ...]:
    """Index of NCHW input pixels that window tap ``(kh, kw)`` sees at every output position."""
    return (
        slice(None),
        slice(None),
        slice(kh, kh + stride * (h_out - 1) + 1, stride),
        slice(kw, kw + stride * (w_out - 1) + 1, stride),
    )
