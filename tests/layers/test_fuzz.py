"""Fuzzed gradients: random shapes, strides, pads, pool sizes, modes and dtypes for every
layer. Each valid draw checks that the hand-written VJP equals ``jax.vjp`` of the autodiff
twin (:mod:`jcnn.reference`) with the same random cotangent, in the primal's dtype; each
invalid draw must raise the layer's ValueError while tracing, never an XLA or shape error.

Shapes are tiny (each new one compiles). The default hypothesis profile draws a few hundred
examples in all; ``HYPOTHESIS_PROFILE=long`` draws 40 times as many (see tests/conftest.py).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import jcnn.layers as L
import jcnn.reference as R
from jcnn.gradcheck import of_args


def budget(n: int) -> int:
    """``n`` examples under the default profile (25), proportionally more under others."""
    return max(1, n * settings.default.max_examples // 25)


DTYPES = (np.float32, np.float64)
# Relative to the size of the gradient (or of the term it cancels from, see ``gain``).
TOL = {np.dtype(np.float32): 2e-4, np.dtype(np.float64): 1e-10}
dtypes = st.sampled_from(DTYPES)
seeds = st.integers(0, 2**32 - 1)
small = st.integers(1, 3)


def normal(rng, shape, dtype, scale=1.0, shift=0.0):
    return jnp.asarray(rng.standard_normal(shape) * scale + shift, dtype)


def check_vjp(f, twin, args, argnums, *, seed, gain=0.0):
    """Forward outputs and VJPs (w.r.t. ``argnums``) of ``f`` and ``twin`` agree, under jit,
    for one random cotangent (on every output, if there are several); gradients have their
    primal's shape and dtype. ``gain`` times max|dout| is a floor for the scale of the
    tolerance (for gradients that cancel down from larger terms, as batchnorm's do)."""
    args = list(args)

    diff = [args[i] for i in argnums]
    out_shapes = jax.eval_shape(of_args(f, args, argnums), *diff)
    rng = np.random.default_rng(seed ^ 0x5EED)
    dout = jax.tree_util.tree_map(lambda s: normal(rng, s.shape, s.dtype), out_shapes)

    @jax.jit
    def both(diff, dout):
        out, vjp = jax.vjp(of_args(f, args, argnums), *diff)
        out_t, vjp_t = jax.vjp(of_args(twin, args, argnums), *diff)
        return out, out_t, vjp(dout), vjp_t(dout)

    out, out_t, grads, grads_t = jax.device_get(both(diff, dout))
    tol = TOL[np.dtype(jax.tree_util.tree_leaves(out_shapes)[0].dtype)]
    assert jax.tree_util.tree_structure(out) == jax.tree_util.tree_structure(out_t)
    for o, ot, s in zip(*map(jax.tree_util.tree_leaves, (out, out_t, out_shapes)), strict=True):
        assert o.shape == ot.shape == s.shape and o.dtype == ot.dtype == s.dtype
        scale = max(float(np.max(np.abs(ot), initial=0.0)), 1e-30)
        np.testing.assert_allclose(o, ot, rtol=tol, atol=tol * scale)
    big = max(float(np.max(np.abs(d), initial=0.0)) for d in jax.tree_util.tree_leaves(dout))
    for i, g, gt in zip(argnums, grads, grads_t, strict=True):
        primal = args[i]
        assert g.shape == primal.shape and g.dtype == primal.dtype, (i, g.dtype, primal.dtype)
        scale = max(float(np.max(np.abs(gt), initial=0.0)), gain * big, 1e-30)
        np.testing.assert_allclose(g, gt, rtol=tol, atol=tol * scale, err_msg=f"argument {i}")


def raises_value_error(fn, *arrays):
    """``fn(*arrays)`` raises ValueError while tracing (``jax.eval_shape``: nothing runs)."""
    with pytest.raises(ValueError):
        jax.eval_shape(fn, *arrays)


def zeros(*shape, dtype=np.float32):
    return np.zeros(shape, dtype)


# ---------------------------------------------------------------------------------- affine


@settings(max_examples=budget(10))
@given(n=small, dims=st.lists(small, min_size=1, max_size=3), m=st.integers(1, 4), dtype=dtypes,
       seed=seeds)  # fmt: skip
def test_affine_vjp(n, dims, m, dtype, seed):
    rng = np.random.default_rng(seed)
    d = math.prod(dims)
    args = (normal(rng, (n, *dims), dtype), normal(rng, (d, m), dtype), normal(rng, (m,), dtype))
    check_vjp(L.affine, R.affine, args, (0, 1, 2), seed=seed)


@settings(max_examples=budget(15))
@given(kind=st.sampled_from(["w_rows", "b_len", "b_rank", "x_rank", "w_rank"]), n=small, d=small,
       m=small, delta=st.integers(1, 2))  # fmt: skip
def test_affine_invalid(kind, n, d, m, delta):
    x, w, b = zeros(n, d), zeros(d, m), zeros(m)
    if kind == "w_rows":
        w = zeros(d + delta, m)
    elif kind == "b_len":
        b = zeros(m + delta)
    elif kind == "b_rank":
        b = zeros(1, m)
    elif kind == "x_rank":
        x = zeros(d)
    else:
        w = zeros(d, m, delta)
    raises_value_error(L.affine, x, w, b)


# ------------------------------------------------------------------------------------ relu


@settings(max_examples=budget(6))
@given(shape=st.lists(small, min_size=0, max_size=4), dtype=dtypes, seed=seeds)
def test_relu_vjp(shape, dtype, seed):
    x = normal(np.random.default_rng(seed), tuple(shape), dtype)
    check_vjp(L.relu, R.relu, (x,), (0,), seed=seed)


# ------------------------------------------------------------------------------------ conv


def xla_aborts(h, w, hh, ww, stride, pad):
    """The valid convolutions whose input gradient aborts the process inside XLA (jaxlib
    0.10.2 CPU: ``algebraic_simplifier.cc:586 Check failed ... Window dimensions do not match
    RHS shape``) for jax.grad of ``lax.conv_general_dilated`` (the twin): stride 2, pad 1, one
    axis a 2-tap filter over >= 4 pixels, the other a filter of >= 3 taps. Found by this
    fuzzing (an exhaustive sweep of sizes <= 6, filters <= 4, stride <= 3, pad <= 2 found no
    others); jcnn's own xla backward now avoids the lhs-dilated form that triggers it. Left
    out of the draws because the twin would abort the whole test run; see
    test_conv_input_gradient_where_autodiff_of_lax_conv_aborts."""
    return (
        stride == 2
        and pad == 1
        and ((hh == 2 and h >= 4 and ww >= 3) or (ww == 2 and w >= 4 and hh >= 3))
    )


def _tiling_sizes(filter_size, stride, pad, upto=6):
    return [h for h in range(1, upto + 1) if h + 2 * pad >= filter_size
            and (h + 2 * pad - filter_size) % stride == 0]  # fmt: skip


@st.composite
def conv_cases(draw):
    impl = draw(st.sampled_from(("naive", "im2col", "xla")))
    layout = "NHWC" if impl == "xla" and draw(st.booleans()) else "NCHW"
    n, c, f = draw(st.integers(1, 2)), draw(small), draw(small)
    hh, ww = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    stride, pad = draw(small), draw(st.integers(0, 2))
    h = draw(st.sampled_from(_tiling_sizes(hh, stride, pad)))
    w = draw(st.sampled_from(_tiling_sizes(ww, stride, pad)))
    assume(not xla_aborts(h, w, hh, ww, stride, pad))
    x_shape = (n, c, h, w) if layout == "NCHW" else (n, h, w, c)
    return impl, layout, x_shape, (f, c, hh, ww), stride, pad


@settings(max_examples=budget(20))
@given(case=conv_cases(), dtype=dtypes, seed=seeds)
def test_conv_vjp(case, dtype, seed):
    impl, layout, x_shape, w_shape, stride, pad = case
    rng = np.random.default_rng(seed)
    args = (normal(rng, x_shape, dtype), normal(rng, w_shape, dtype),
            normal(rng, w_shape[:1], dtype))  # fmt: skip
    kw = dict(stride=stride, pad=pad, layout=layout)
    check_vjp(
        lambda x, w, b: L.conv2d(x, w, b, impl=impl, **kw),
        lambda x, w, b: R.conv2d(x, w, b, **kw),
        args,
        (0, 1, 2),
        seed=seed,
    )


CONV_INVALID = ["too_big", "no_tile", "channels", "x_rank", "w_rank", "b_shape", "stride", "pad",
                "impl", "layout_impl", "layout"]  # fmt: skip


@settings(max_examples=budget(40))
@given(kind=st.sampled_from(CONV_INVALID), impl=st.sampled_from(("naive", "im2col", "xla")),
       data=st.data())  # fmt: skip
def test_conv_invalid(kind, impl, data):
    n, c, f = data.draw(small), data.draw(small), data.draw(small)
    hh, stride, pad = data.draw(st.integers(1, 4)), data.draw(small), data.draw(st.integers(0, 2))
    h = data.draw(st.sampled_from(_tiling_sizes(hh, stride, pad)))
    x, w, b = zeros(n, c, h, h), zeros(f, c, hh, hh), zeros(f)
    kw = dict(stride=stride, pad=pad, impl=impl)
    if kind == "too_big":  # the filter does not fit the padded input
        w = zeros(f, c, h + 2 * pad + data.draw(small), hh)
    elif kind == "no_tile":  # the stride does not tile it
        kw["stride"] = s = data.draw(st.integers(2, 3))
        h = data.draw(st.sampled_from(
            [v for v in range(max(1, hh - 2 * pad), 9) if (v + 2 * pad - hh) % s]))  # fmt: skip
        x = zeros(n, c, h, h)
    elif kind == "channels":
        w = zeros(f, c + data.draw(small), hh, hh)
    elif kind == "x_rank":
        x = zeros(c, h, h) if data.draw(st.booleans()) else zeros(1, n, c, h, h)
    elif kind == "w_rank":
        w = zeros(c, hh, hh)
    elif kind == "b_shape":
        b = zeros(f + 1) if data.draw(st.booleans()) else zeros(f, 1)
    elif kind == "stride":
        kw["stride"] = data.draw(st.sampled_from([0, -1, 1.5, "2"]))
    elif kind == "pad":
        kw["pad"] = data.draw(st.sampled_from([-1, 0.5]))
    elif kind == "impl":
        kw["impl"] = "fft"
    elif kind == "layout_impl":
        kw.update(impl=data.draw(st.sampled_from(("naive", "im2col"))), layout="NHWC")
    else:
        kw["layout"] = "NCWH"
    raises_value_error(lambda x, w, b: L.conv2d(x, w, b, **kw), x, w, b)


# -------------------------------------------------------------------------------- max pool


@st.composite
def pool_cases(draw):
    impl = draw(st.sampled_from(("naive", "fast")))
    layout = "NHWC" if impl == "fast" and draw(st.booleans()) else "NCHW"
    ph, pw, stride = draw(small), draw(small), draw(small)
    n, c = draw(st.integers(1, 2)), draw(small)
    h, w = draw(st.integers(ph, 7)), draw(st.integers(pw, 7))
    x_shape = (n, c, h, w) if layout == "NCHW" else (n, h, w, c)
    return impl, layout, x_shape, dict(pool_height=ph, pool_width=pw, stride=stride)


@settings(max_examples=budget(16))
@given(case=pool_cases(), dtype=dtypes, seed=seeds)
def test_max_pool_vjp(case, dtype, seed):
    impl, layout, x_shape, kw = case
    x = normal(np.random.default_rng(seed), x_shape, dtype)  # continuous: no ties
    check_vjp(
        lambda x: L.max_pool2d(x, impl=impl, layout=layout, **kw),
        lambda x: R.max_pool2d(x, layout=layout, **kw),
        (x,),
        (0,),
        seed=seed,
    )


POOL_INVALID = ["window", "rank", "stride", "pool", "taps", "layout_impl", "impl", "layout"]


@settings(max_examples=budget(25))
@given(kind=st.sampled_from(POOL_INVALID), impl=st.sampled_from(("naive", "fast")),
       h=st.integers(1, 5), w=st.integers(1, 5), data=st.data())  # fmt: skip
def test_max_pool_invalid(kind, impl, h, w, data):
    x = zeros(1, 2, h, w)
    kw = dict(pool_height=1, pool_width=1, stride=1, impl=impl)
    if kind == "window":  # larger than the input
        if data.draw(st.booleans()):
            kw["pool_height"] = h + data.draw(small)
        else:
            kw["pool_width"] = w + data.draw(small)
    elif kind == "rank":
        x = zeros(2, h, w) if data.draw(st.booleans()) else zeros(1, 1, 2, h, w)
    elif kind == "stride":
        kw["stride"] = data.draw(st.sampled_from([0, -2, 1.5]))
    elif kind == "pool":
        kw[data.draw(st.sampled_from(["pool_height", "pool_width"]))] = 0
    elif kind == "taps":
        x, kw["pool_height"], kw["pool_width"] = zeros(1, 1, 12, 11), 12, 11
    elif kind == "layout_impl":
        kw.update(impl="naive", layout="NHWC")
    elif kind == "impl":
        kw["impl"] = "im2col"
    else:
        kw["layout"] = "CHWN"
    raises_value_error(lambda x: L.max_pool2d(x, **kw), x)


# ------------------------------------------------------------------------------- batchnorm


def _bn_args(rng, x_shape, d, dtype):
    scale, shift = rng.uniform(0.3, 3.0), rng.uniform(-2.0, 2.0)
    x = normal(rng, x_shape, dtype, scale, shift)
    gamma, beta = normal(rng, (d,), dtype), normal(rng, (d,), dtype)
    running_mean = normal(rng, (d,), dtype)
    running_var = jnp.asarray(rng.uniform(0.5, 2.0, (d,)), dtype)
    return x, gamma, beta, running_mean, running_var


def _bn_gain(x, gamma, running_var, train, eps, axis):
    """max|gamma| / sqrt(min variance + eps): the size of the terms dx cancels down from."""
    x = np.asarray(x, np.float64)
    var = x.var(axis=tuple(a for a in range(x.ndim) if a != axis)) if train else running_var
    return float(np.max(np.abs(gamma)) / np.sqrt(np.min(np.asarray(var, np.float64)) + eps))


bn_modes = dict(train=st.booleans(), momentum=st.floats(0.0, 1.0),
                eps=st.sampled_from([1e-5, 1e-3]))  # fmt: skip


@settings(max_examples=budget(12))
@given(n=st.integers(1, 4), d=st.integers(1, 4), dtype=dtypes, seed=seeds, **bn_modes)
def test_batchnorm_vjp(n, d, dtype, seed, train, momentum, eps):
    args = _bn_args(np.random.default_rng(seed), (n, d), d, dtype)
    kw = dict(train=train, momentum=momentum, eps=eps)
    check_vjp(  # out and both running statistics
        lambda *a: L.batchnorm(*a, **kw),
        lambda *a: R.batchnorm(*a, **kw),
        args,
        (0, 1, 2, 3, 4),
        seed=seed,
        gain=_bn_gain(args[0], args[1], args[4], train, eps, 1),
    )


@settings(max_examples=budget(12))
@given(layout=st.sampled_from(["NCHW", "NHWC"]), n=st.integers(1, 2), c=small, h=small, w=small,
       dtype=dtypes, seed=seeds, **bn_modes)  # fmt: skip
def test_spatial_batchnorm_vjp(layout, n, c, h, w, dtype, seed, train, momentum, eps):
    x_shape = (n, c, h, w) if layout == "NCHW" else (n, h, w, c)
    args = _bn_args(np.random.default_rng(seed), x_shape, c, dtype)
    kw = dict(train=train, momentum=momentum, eps=eps, layout=layout)
    check_vjp(
        lambda *a: L.spatial_batchnorm(*a, **kw),
        lambda *a: R.spatial_batchnorm(*a, **kw),
        args,
        (0, 1, 2, 3, 4),
        seed=seed,
        gain=_bn_gain(args[0], args[1], args[4], train, eps, 1 if layout == "NCHW" else 3),
    )


BN_INVALID = ["x_rank", "gamma", "beta", "running_mean", "running_var", "momentum", "eps",
              "layout", "empty_training_batch"]  # fmt: skip


@settings(max_examples=budget(30))
@given(kind=st.sampled_from(BN_INVALID), spatial=st.booleans(), train=st.booleans(), d=small,
       data=st.data())  # fmt: skip
def test_batchnorm_invalid(kind, spatial, train, d, data):
    x = zeros(2, d, 3, 3) if spatial else zeros(4, d)
    params = {k: zeros(d) for k in ("gamma", "beta", "running_mean", "running_var")}
    kw = dict(train=train)
    if kind == "x_rank":
        x = zeros(2, d, 3) if spatial else data.draw(st.sampled_from([zeros(d), zeros(4, d, 1)]))
    elif kind in params:
        params[kind] = zeros(d + data.draw(small)) if data.draw(st.booleans()) else zeros(d, 1)
    elif kind == "momentum":
        kw["momentum"] = data.draw(st.sampled_from([-0.1, 1.5, float("nan")]))
    elif kind == "eps":
        kw["eps"] = data.draw(st.sampled_from([0.0, -1e-5, float("nan")]))
    elif kind == "empty_training_batch":
        x = np.zeros((0, *x.shape[1:]), np.float32)
        if spatial and data.draw(st.booleans()):  # or an empty spatial axis
            x = zeros(2, d, 3, 0)
        kw["train"] = True
    elif spatial:
        kw["layout"] = "NWHC"
    else:
        x = zeros(4, d + 1)  # layout has no meaning here: a feature-count mismatch instead
    fn = L.spatial_batchnorm if spatial else L.batchnorm
    raises_value_error(lambda x, p: fn(x, **p, **kw), x, params)


# --------------------------------------------------------------------------------- dropout


@settings(max_examples=budget(10))
@given(shape=st.lists(st.integers(1, 4), min_size=1, max_size=3), rate=st.floats(0.0, 0.95),
       train=st.booleans(), dtype=dtypes, seed=seeds)  # fmt: skip
def test_dropout_vjp(shape, rate, train, dtype, seed):
    x = normal(np.random.default_rng(seed), tuple(shape), dtype)
    key = jax.random.key(seed % 2**31)
    kw = dict(rate=rate, train=train)
    check_vjp(
        lambda x: L.dropout(x, key, **kw), lambda x: R.dropout(x, key, **kw), (x,), (0,), seed=seed
    )


@settings(max_examples=budget(12))
@given(rate=st.sampled_from([-0.1, 1.0, 1.5, float("nan"), float("inf"), "half", None]),
       train=st.booleans())  # fmt: skip
def test_dropout_invalid(rate, train):
    key = jax.random.key(0)
    raises_value_error(lambda x: L.dropout(x, key, rate=rate, train=train), zeros(2, 3))


@pytest.mark.parametrize("key", [None, 0, np.zeros(4, np.uint32)], ids=["None", "0", "uint32[4]"])
def test_dropout_training_needs_a_key(key):
    raises_value_error(lambda x: L.dropout(x, key, rate=0.5, train=True), zeros(2, 3))


# ---------------------------------------------------------------------------------- losses


@settings(max_examples=budget(12))
@given(loss=st.sampled_from(["softmax_loss", "svm_loss"]), n=st.integers(1, 4), k=st.integers(1, 5),
       dtype=dtypes, seed=seeds)  # fmt: skip
def test_loss_vjp(loss, n, k, dtype, seed):
    rng = np.random.default_rng(seed)
    scores = normal(rng, (n, k), dtype, scale=2.0)
    y = jnp.asarray(rng.integers(0, k, n), jnp.int32)
    check_vjp(
        lambda s: getattr(L, loss)(s, y), lambda s: getattr(R, loss)(s, y), (scores,), (0,),
        seed=seed,
    )  # fmt: skip


@settings(max_examples=budget(15))
@given(
    loss=st.sampled_from(["softmax_loss", "svm_loss"]),
    kind=st.sampled_from(["scores_rank", "y_rank", "length", "y_dtype", "empty", "no_classes"]),
    n=small,
    k=small,
)
def test_loss_invalid(loss, kind, n, k):
    scores, y = zeros(n, k), np.zeros(n, np.int32)
    if kind == "scores_rank":
        scores = zeros(n * k)
    elif kind == "y_rank":
        y = np.zeros((n, 1), np.int32)
    elif kind == "length":
        y = np.zeros(n + 1, np.int32)
    elif kind == "empty":
        scores, y = zeros(0, k), np.zeros(0, np.int32)
    elif kind == "no_classes":
        scores = zeros(n, 0)
    else:
        y = np.zeros(n, np.float32)
    raises_value_error(getattr(L, loss), scores, y)


# ------------------------------------------ conv inputs the first fuzzing found unchecked

F64_W = zeros(3, 2, 3, 3, dtype=np.float64)
KNOWN_GAPS = {
    # x and w of different dtypes (lax raised TypeError for xla and naive; im2col promoted).
    "conv mixed dtypes xla": lambda: L.conv2d(zeros(1, 2, 4, 4), F64_W, zeros(3), impl="xla"),
    "conv mixed dtypes naive": lambda: L.conv2d(zeros(1, 2, 4, 4), F64_W, zeros(3), impl="naive"),
    "conv mixed dtypes im2col": lambda: L.conv2d(zeros(1, 2, 4, 4), F64_W, zeros(3), impl="im2col"),
    "conv integer x": lambda: L.conv2d(zeros(1, 2, 4, 4, dtype=np.int32), zeros(3, 2, 3, 3),
                                       zeros(3)),
    # a filter with a zero-size spatial dimension (was accepted)
    "conv empty filter": lambda: L.conv2d(zeros(1, 2, 4, 4), zeros(3, 2, 0, 3), zeros(3)),
}  # fmt: skip


ABORT = """
import jax, jax.numpy as jnp
import jcnn.layers as L
x, w, b = jnp.ones((1, 1, 4, 1)), jnp.ones((1, 1, 2, 3)), jnp.ones((1,))
def grad(impl):
    loss = lambda x: L.conv2d(x, w, b, stride=2, pad=1, impl=impl).sum()
    return jax.jit(jax.grad(loss))(x)
print("match" if bool(jnp.allclose(grad({impl!r}), grad("im2col"))) else "differ")
"""


def test_conv_input_gradient_where_autodiff_of_lax_conv_aborts():
    """jcnn's xla backward dilates dout explicitly, so these convolutions work (and match
    im2col) although jax.grad of lax.conv aborts on them; run in a subprocess all the same."""
    import subprocess
    import sys

    from tests.experiments.util import ROOT, subprocess_env

    cmd = [sys.executable, "-c", ABORT.format(impl="xla")]
    proc = subprocess.run(
        cmd, cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-500:]
    assert proc.stdout.split() == ["match"]


@pytest.mark.parametrize("case", sorted(KNOWN_GAPS))
def test_formerly_unchecked_conv_inputs_raise_value_error(case):
    raises_value_error(KNOWN_GAPS[case])
