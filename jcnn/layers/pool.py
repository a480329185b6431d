"""Max pooling over ``pool_height × pool_width`` windows moved by ``stride``; NCHW in and out.

Output size ``H' = 1 + (H − pool_height) // stride`` (rows the last window cannot reach are
left out and get zero gradient). Backward: each window's upstream gradient goes to the
first (row-major) position holding the window's maximum; overlapping windows add up.

- ``naive``: one output position at a time (a ``fori_loop``), the definition.
- ``fast``: when windows tile the input (``pool_height == pool_width == stride``) a reshape;
  otherwise one strided slice per window tap. Both save the argmax tap for the backward.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from jcnn.layers._binding import cache_dataclass, with_vjp
from jcnn.layers._checks import check_choice, check_rank, positive_int
from jcnn.layers._windows import tap

IMPLS = ("naive", "fast")


@cache_dataclass(static=("pool_height", "pool_width", "stride"))
class PoolCache:
    x: jax.Array
    pool_height: int
    pool_width: int
    stride: int


@cache_dataclass(static=("x_shape", "pool_height", "pool_width", "stride"))
class FastPoolCache:
    argmax: jax.Array  # index of the winning tap in each window, (N, C, H', W')
    x_shape: tuple[int, ...]
    pool_height: int
    pool_width: int
    stride: int


def check_pool_args(x, pool_height, pool_width, stride) -> tuple[int, int]:
    """Validate a max_pool2d call; returns ``(H', W')``."""
    check_rank("x", x, 4, "(N, C, H, W)")
    ph = positive_int("pool_height", pool_height)
    pw = positive_int("pool_width", pool_width)
    s = positive_int("stride", stride)
    h, w = x.shape[2:]
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
    """For each output position (i, j): out[:, :, i, j] = max of the window."""
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
    """For each window: dx[first argmax] += dout[:, :, i, j]."""
    x, ph, pw, s = cache.x, cache.pool_height, cache.pool_width, cache.stride
    n, c = x.shape[:2]
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


def _tiles(ph: int, pw: int, s: int) -> bool:
    return ph == pw == s


def max_pool_forward_fast(x, *, pool_height: int = 2, pool_width: int = 2, stride: int = 2):
    """Reshape into tiles when windows tile the input, else stack one strided slice per tap."""
    h_out, w_out = check_pool_args(x, pool_height, pool_width, stride)
    ph, pw, s = pool_height, pool_width, stride
    n, c = x.shape[:2]
    if _tiles(ph, pw, s):
        tiles = x[:, :, : h_out * ph, : w_out * pw].reshape(n, c, h_out, ph, w_out, pw)
        windows = tiles.transpose(0, 1, 2, 4, 3, 5).reshape(n, c, h_out, w_out, ph * pw)
    else:
        taps = [x[tap(kh, kw, h_out, w_out, s)] for kh in range(ph) for kw in range(pw)]
        windows = jnp.stack(taps, axis=-1)
    idx = jnp.argmax(windows, axis=-1).astype(jnp.int32)
    out = jnp.max(windows, axis=-1)
    return out, FastPoolCache(idx, tuple(x.shape), ph, pw, s)


def max_pool_backward_fast(dout, cache: FastPoolCache):
    """Route dout to the saved argmax tap: a one-hot and a reshape, or one strided add per tap."""
    n, c, h, w = cache.x_shape
    ph, pw, s = cache.pool_height, cache.pool_width, cache.stride
    h_out, w_out = dout.shape[2:]
    if _tiles(ph, pw, s):
        routed = _first_max_onehot(cache.argmax, ph * pw, dout.dtype) * dout[..., None]
        dx = routed.reshape(n, c, h_out, w_out, ph, pw).transpose(0, 1, 2, 4, 3, 5)
        dx = dx.reshape(n, c, h_out * ph, w_out * pw)
        return (jnp.pad(dx, ((0, 0), (0, 0), (0, h - h_out * ph), (0, w - w_out * pw))),)
    dx = jnp.zeros(cache.x_shape, dout.dtype)
    for kh in range(ph):
        for kw in range(pw):
            routed = jnp.where(cache.argmax == kh * pw + kw, dout, jnp.zeros_like(dout))
            dx = dx.at[tap(kh, kw, h_out, w_out, s)].add(routed)
    return (dx,)


# ------------------------------------------------------------------------------ public API

PAIRS = {
    "naive": (max_pool_forward_naive, max_pool_backward_naive),
    "fast": (max_pool_forward_fast, max_pool_backward_fast),
}
_BOUND = {name: with_vjp(*pair) for name, pair in PAIRS.items()}


def max_pool_forward(x, *, pool_height=2, pool_width=2, stride=2, impl: str = "fast"):
    """cs231n-style pair half: ``(out, cache)``."""
    check_choice("impl", impl, IMPLS)
    return PAIRS[impl][0](x, pool_height=pool_height, pool_width=pool_width, stride=stride)


def max_pool_backward(dout, cache, *, impl: str = "fast"):
    """cs231n-style pair half: ``(dx,)``."""
    check_choice("impl", impl, IMPLS)
    return PAIRS[impl][1](dout, cache)


def max_pool2d(
    x: jax.Array,
    *,
    pool_height: int = 2,
    pool_width: int = 2,
    stride: int = 2,
    impl: str = "fast",
) -> jax.Array:
    """Max pooling with a hand-written VJP; x ``(N, C, H, W)`` -> ``(N, C, H', W')``."""
    check_choice("impl", impl, IMPLS)
    ph = positive_int("pool_height", pool_height)
    pw = positive_int("pool_width", pool_width)
    s = positive_int("stride", stride)
    return _BOUND[impl](x, pool_height=ph, pool_width=pw, stride=s)
