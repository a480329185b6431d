"""Max pooling over ``pool_height × pool_width`` windows moved by ``stride``; NCHW in and out
(NHWC with ``layout='NHWC'``, fast impl).

Output size ``H' = 1 + (H − pool_height) // stride`` (rows the last window cannot reach are
left out and get zero gradient). Backward: each window's upstream gradient goes to the
first (row-major) position holding the window's maximum; overlapping windows add up.

- ``naive``: one output position at a time (a ``fori_loop``), the definition.
- ``fast``: one strided view per window tap, a running max/argmax over the taps (saved as
  int8); the backward places dout at each tap's winners with a strided pad, or, for
  square windows that tile the input (stride = window, e.g. 2×2 stride 2), broadcasts dout
  over each window in one pass. Also NHWC. A bfloat16 or float16 input is compared, and its
  gradient routed, in float32 (the same values: a maximum is one of its window's values;
  overlapping windows' shares are summed in float32 and rounded once).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from jcnn.layers._binding import cache_dataclass, with_vjp
from jcnn.layers._checks import (
    check_cache,
    check_choice,
    check_cotangent,
    check_floating,
    check_rank,
    positive_int,
)
from jcnn.layers._widen import widened
from jcnn.layers._windows import LAYOUTS, spatial_axes, tap, untap

IMPLS = ("naive", "fast")


@cache_dataclass(static=("pool_height", "pool_width", "stride"))
class PoolCache:
    """What :func:`max_pool_backward_naive` needs from the forward pass.

    Attributes:
        x: the input ``(N, C, H, W)``.
        pool_height: window height (static).
        pool_width: window width (static).
        stride: window step (static).
    """

    x: jax.Array
    pool_height: int
    pool_width: int
    stride: int


@cache_dataclass(static=("x_shape", "pool_height", "pool_width", "stride", "layout"))
class FastPoolCache:
    """What :func:`max_pool_backward_fast` needs from the forward pass (no copy of x).

    Attributes:
        argmax: int8 index ``kh·pool_width + kw`` of each window's first winning tap, shaped
            like out.
        x_shape: the input's shape (static).
        pool_height: window height (static).
        pool_width: window width (static).
        stride: window step (static).
        layout: ``'NCHW'`` or ``'NHWC'`` (static).
    """

    argmax: jax.Array  # int8 index of the winning tap of each window, shaped like out
    x_shape: tuple[int, ...]
    pool_height: int
    pool_width: int
    stride: int
    layout: str = "NCHW"


def check_pool_args(x, pool_height, pool_width, stride, layout: str = "NCHW") -> tuple[int, int]:
    """Validate a max_pool2d call; returns ``(H', W')``.

    Args:
        x (jax.Array): input ``(N, C, H, W)`` (``layout='NCHW'``) or ``(N, H, W, C)``.
        pool_height (int): height of the pooling window, a positive int.
        pool_width (int): width of the pooling window, a positive int.
        stride (int): step of the window, a positive int.
        layout: ``'NCHW'`` or ``'NHWC'``.

    Returns:
        ``(H', W')`` with ``H' = 1 + (H − pool_height) // stride``, likewise W'.

    Raises:
        ValueError: naming ``layout`` if not ``'NCHW'``/``'NHWC'``; naming ``x`` if it is
            not rank 4; naming ``pool_height``, ``pool_width`` or ``stride`` if not a
            positive int (bools refused); if the window has more than 127 taps or is larger
            than x's H or W.
    """
    check_choice("layout", layout, LAYOUTS)
    check_rank("x", x, 4, f"({', '.join(layout)})")
    check_floating("x", x)
    ph = positive_int("pool_height", pool_height)
    pw = positive_int("pool_width", pool_width)
    s = positive_int("stride", stride)
    if ph * pw > 127:
        raise ValueError(f"pooling window {ph}x{pw} has more than 127 taps")
    h, w = (x.shape[a] for a in spatial_axes(layout))
    if ph > h or pw > w:
        raise ValueError(
            f"pooling window {ph}x{pw} does not fit input of spatial size {h}x{w} "
            f"(x {tuple(x.shape)})"
        )
    return 1 + (h - ph) // s, 1 + (w - pw) // s


def _first_max_onehot(idx: jax.Array, taps: int, dtype) -> jax.Array:
    return (idx[..., None] == jnp.arange(taps, dtype=idx.dtype)).astype(dtype)


# ----------------------------------------------------------------------------------- naive


def max_pool_forward_naive(x, *, pool_height: int = 2, pool_width: int = 2, stride: int = 2):
    """For each output position (i, j): out[:, :, i, j] = max of the window.

    Args:
        x (jax.Array): input ``(N, C, H, W)``.
        pool_height: height of the pooling window, a positive int.
        pool_width: width of the pooling window, a positive int.
        stride: step of the window, a positive int.

    Returns:
        (tuple[jax.Array, PoolCache]): ``(out, cache)``, with out
            ``(N, C, H', W')`` with ``H' = 1 + (H − pool_height) // stride``
            (likewise W'), and the :class:`PoolCache` for :func:`max_pool_backward_naive`.

    Raises:
        ValueError: naming ``x`` if it is not rank 4; naming ``pool_height``,
            ``pool_width`` or ``stride`` if not a positive int; if the window has more than 127
            taps or does not fit x's spatial size (:func:`check_pool_args`).
    """
    h_out, w_out = check_pool_args(x, pool_height, pool_width, stride)
    n, c = x.shape[:2]

    def position(p, out):
        i, j = p // w_out, p % w_out
        window = lax.dynamic_slice(
            x, (0, 0, i * stride, j * stride), (n, c, pool_height, pool_width)
        )
        m = jnp.max(window, axis=(2, 3))
        return lax.dynamic_update_slice(out, m[:, :, None, None], (0, 0, i, j))

    out = lax.fori_loop(0, h_out * w_out, position, jnp.zeros((n, c, h_out, w_out), x.dtype))
    return out, PoolCache(x, pool_height, pool_width, stride)


def max_pool_backward_naive(dout, cache: PoolCache):
    """For each window: dx[first argmax] += dout[:, :, i, j].

    Args:
        dout (jax.Array): upstream gradient ``(N, C, H', W')``.
        cache: the :class:`PoolCache` from :func:`max_pool_forward_naive`.

    Returns:
        (tuple[jax.Array]): ``(dx,)``, dx ``(N, C, H, W)``: each window's dout at the first
            (row-major) position of its maximum, overlapping windows summed, 0 elsewhere.

    Raises:
        TypeError: naming ``cache`` if it is not the forward pass's cache.
        ValueError: naming ``dout`` if it is not shaped like the forward pass's output.
    """
    check_cache(cache, PoolCache)
    x, ph, pw, s = cache.x, cache.pool_height, cache.pool_width, cache.stride
    n, c = x.shape[:2]
    windows = ((x.shape[2] - ph) // s + 1, (x.shape[3] - pw) // s + 1)
    check_cotangent("dout", dout, (n, c, *windows))
    h_out, w_out = dout.shape[2:]

    def position(p, dx):
        i, j = p // w_out, p % w_out
        corner = (0, 0, i * s, j * s)
        window = lax.dynamic_slice(x, corner, (n, c, ph, pw)).reshape(n, c, ph * pw)
        d = lax.dynamic_slice(dout, (0, 0, i, j), (n, c, 1, 1)).reshape(n, c, 1)
        routed = (_first_max_onehot(jnp.argmax(window, axis=2), ph * pw, dout.dtype) * d).reshape(
            n, c, ph, pw
        )
        return lax.dynamic_update_slice(
            dx, lax.dynamic_slice(dx, corner, (n, c, ph, pw)) + routed, corner
        )

    dx = lax.fori_loop(0, h_out * w_out, position, jnp.zeros(x.shape, dout.dtype))
    return (dx,)


# ------------------------------------------------------------------------------------ fast


def max_pool_forward_fast(
    x, *, pool_height: int = 2, pool_width: int = 2, stride: int = 2, layout: str = "NCHW"
):
    """One strided view per window tap and a running (max, argmax) over the taps; a strict
    ``>`` keeps the first maximum, and a NaN is a window's maximum (its first NaN wins), as
    in ``jnp.max``. No patch buffer, no transpose; any window and stride.

    Args:
        x (jax.Array): input ``(N, C, H, W)`` (``layout='NCHW'``) or ``(N, H, W, C)``.
        pool_height: height of the pooling window, a positive int.
        pool_width: width of the pooling window, a positive int.
        stride: step of the window, a positive int.
        layout: ``'NCHW'`` or ``'NHWC'``, for x and out.

    Returns:
        (tuple[jax.Array, FastPoolCache]): ``(out, cache)``, with out
            ``(N, C, H', W')`` (``(N, H', W', C)`` for NHWC) with
            ``H' = 1 + (H − pool_height) // stride`` (likewise W'), and the
            :class:`FastPoolCache` for :func:`max_pool_backward_fast`.

    Raises:
        ValueError: naming ``x`` if it is not rank 4; naming ``pool_height``,
            ``pool_width`` or ``stride`` if not a positive int; if the window has more than 127
            taps or does not fit x's spatial size (:func:`check_pool_args`).
        ValueError: naming ``layout`` if not ``'NCHW'``/``'NHWC'``.
    """
    h_out, w_out = check_pool_args(x, pool_height, pool_width, stride, layout)
    ph, pw, s = pool_height, pool_width, stride
    xw = widened(x)  # exact: the maximum is one of the values
    best, idx = xw[tap(0, 0, h_out, w_out, s, layout)], None
    for k in range(1, ph * pw):
        candidate = xw[tap(k // pw, k % pw, h_out, w_out, s, layout)]
        # NaN counts as the largest value (as in jnp.max and the naive impl): the first NaN
        # wins, and nothing replaces it.
        better = (candidate > best) | (jnp.isnan(candidate) & ~jnp.isnan(best))
        idx = jnp.where(better, jnp.int8(k), jnp.int8(0) if idx is None else idx)
        best = jnp.where(better, candidate, best)
    if idx is None:  # a 1x1 window
        idx = jnp.zeros(best.shape, jnp.int8)
    return best.astype(x.dtype), FastPoolCache(idx, tuple(x.shape), ph, pw, s, layout)


def _tiled_backward(dout, cache: FastPoolCache):
    """Windows that tile the input (stride = window): every input pixel belongs to exactly
    one window, so dx is dout broadcast over each window's taps, kept where the tap won —
    one pass that writes dx in order (rows/columns no window reaches get zeros)."""
    ph, pw, layout = cache.pool_height, cache.pool_width, cache.layout
    h_axis, w_axis = spatial_axes(layout)
    # Insert a tap axis after each spatial axis: (..., H', ph, W', pw, ...).
    expand = lambda a: jnp.expand_dims(a, (h_axis + 1, w_axis + 2))  # noqa: E731
    taps = [1] * 6
    taps[h_axis + 1], taps[w_axis + 2] = ph, pw
    k = jnp.arange(ph * pw, dtype=cache.argmax.dtype).reshape(taps)
    dw = widened(dout)
    dx = jnp.where(expand(cache.argmax) == k, expand(dw), jnp.zeros((), dw.dtype))
    dx = dx.astype(dout.dtype)
    shape = list(dout.shape)
    shape[h_axis] *= ph
    shape[w_axis] *= pw
    dx = dx.reshape(shape)
    missing = [(0, full - have) for full, have in zip(cache.x_shape, shape, strict=True)]
    return jnp.pad(dx, missing) if any(hi for _, hi in missing) else dx


def max_pool_backward_fast(dout, cache: FastPoolCache):
    """dx = Σ_taps place(dout where the tap won); each placement is a strided pad. Windows
    that tile the input (stride = window size, the usual 2×2/2) take one broadcast pass.

    Args:
        dout (jax.Array): upstream gradient ``(N, C, H', W')`` (``(N, H', W', C)`` for NHWC).
        cache: the :class:`FastPoolCache` from :func:`max_pool_forward_fast`.

    Returns:
        (tuple[jax.Array]): ``(dx,)``, dx shaped like x (``cache.x_shape``): each window's
            dout at its first winning tap, overlapping windows summed, 0 elsewhere.

    Raises:
        TypeError: naming ``cache`` if it is not the forward pass's cache.
        ValueError: naming ``dout`` if it is not shaped like the forward pass's output.
    """
    check_cache(cache, FastPoolCache)
    check_cotangent("dout", dout, cache.argmax.shape)
    ph, pw, s, layout = cache.pool_height, cache.pool_width, cache.stride, cache.layout
    if s == ph == pw:
        return (_tiled_backward(dout, cache),)
    dw = widened(dout)  # overlapping windows' shares summed in float32, rounded once
    zero = jnp.zeros_like(dw)
    dx = jnp.zeros(cache.x_shape, dw.dtype)
    for k in range(ph * pw):
        routed = jnp.where(cache.argmax == k, dw, zero)
        dx = dx + untap(routed, k // pw, k % pw, cache.x_shape, s, layout)
    return (dx.astype(dout.dtype),)


# ------------------------------------------------------------------------------ public API

PAIRS: dict[str, tuple[Callable[..., Any], Callable[..., Any]]] = {
    "naive": (max_pool_forward_naive, max_pool_backward_naive),
    "fast": (max_pool_forward_fast, max_pool_backward_fast),
}
_BOUND = {name: with_vjp(*pair) for name, pair in PAIRS.items()}


def _layout_kwargs(impl: str, layout: str) -> dict:
    check_choice("layout", layout, LAYOUTS)
    if layout == "NCHW":
        return {}
    if impl != "fast":
        raise ValueError(f"layout={layout!r} needs impl='fast'; impl={impl!r} is NCHW only")
    return {"layout": layout}


def max_pool_forward(
    x, *, pool_height=2, pool_width=2, stride=2, impl: str = "fast", layout: str = "NCHW"
):
    """cs231n-style pair half: ``(out, cache)``.

    Args:
        x (jax.Array): input ``(N, C, H, W)`` (``layout='NCHW'``) or ``(N, H, W, C)``.
        pool_height (int): height of the pooling window, a positive int.
        pool_width (int): width of the pooling window, a positive int.
        stride (int): step of the window, a positive int.
        impl: ``'naive'`` or ``'fast'``.
        layout: ``'NCHW'`` or ``'NHWC'`` (``impl='fast'`` only), for x and out.

    Returns:
        (tuple[jax.Array, PoolCache | FastPoolCache]): ``(out, cache)``, with out
            ``(N, C, H', W')`` (``(N, H', W', C)`` for NHWC) with
            ``H' = 1 + (H − pool_height) // stride``, and the cache for :func:`max_pool_backward`
            with the same ``impl``.

    Raises:
        ValueError: naming ``impl`` if not ``'naive'``/``'fast'``; naming ``layout`` if not
            ``'NCHW'``/``'NHWC'``, or ``'NHWC'`` with ``impl='naive'``.
        ValueError: naming ``x`` if it is not rank 4; naming ``pool_height``,
            ``pool_width`` or ``stride`` if not a positive int; if the window has more than 127
            taps or does not fit x's spatial size (:func:`check_pool_args`).
    """
    check_choice("impl", impl, IMPLS)
    kw = _layout_kwargs(impl, layout)
    return PAIRS[impl][0](x, pool_height=pool_height, pool_width=pool_width, stride=stride, **kw)


def max_pool_backward(dout, cache, *, impl: str = "fast"):
    """cs231n-style pair half: ``(dx,)``.

    Args:
        dout (jax.Array): upstream gradient, shaped like out.
        cache (PoolCache | FastPoolCache): from :func:`max_pool_forward` with the same ``impl``.
        impl: ``'naive'`` or ``'fast'``.

    Returns:
        (tuple[jax.Array]): ``(dx,)``, dx shaped like x.

    Raises:
        ValueError: naming ``impl`` if not ``'naive'``/``'fast'``.
    """
    check_choice("impl", impl, IMPLS)
    return PAIRS[impl][1](dout, cache)


def max_pool2d(
    x: jax.Array,
    *,
    pool_height: int = 2,
    pool_width: int = 2,
    stride: int = 2,
    impl: str = "fast",
    layout: str = "NCHW",
) -> jax.Array:
    """Max pooling with a hand-written VJP; x ``(N, C, H, W)`` -> ``(N, C, H', W')``
    (``layout='NHWC'``, ``impl='fast'`` only: channels-last in and out).

    Args:
        x: input ``(N, C, H, W)`` (``layout='NCHW'``) or ``(N, H, W, C)``.
        pool_height: height of the pooling window, a positive int.
        pool_width: width of the pooling window, a positive int.
        stride: step of the window, a positive int.
        impl: ``'naive'`` (one output position at a time) or ``'fast'`` (strided taps).
        layout: ``'NCHW'`` or ``'NHWC'`` (``impl='fast'`` only), for x and out.

    Returns:
        ``(N, C, H', W')`` (``(N, H', W', C)`` for NHWC) with
            ``H' = 1 + (H − pool_height) // stride``, likewise W'; the VJP routes each window's
            gradient to its first maximum.

    Raises:
        ValueError: naming ``impl`` if not ``'naive'``/``'fast'``; naming ``layout`` if not
            ``'NCHW'``/``'NHWC'``, or ``'NHWC'`` with ``impl='naive'``.
        ValueError: naming ``x`` if it is not rank 4; naming ``pool_height``,
            ``pool_width`` or ``stride`` if not a positive int; if the window has more than 127
            taps or does not fit x's spatial size (:func:`check_pool_args`).
    """
    check_choice("impl", impl, IMPLS)
    ph = positive_int("pool_height", pool_height)
    pw = positive_int("pool_width", pool_width)
    s = positive_int("stride", stride)
    return _BOUND[impl](x, pool_height=ph, pool_width=pw, stride=s, **_layout_kwargs(impl, layout))
