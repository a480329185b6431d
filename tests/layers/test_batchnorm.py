import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jcnn.layers as L
import jcnn.reference as R
from jcnn import native
from jcnn.gradcheck import rel_error
from jcnn.layers.batchnorm import batch_statistics
from jcnn.layers.batchnorm_relu import batchnorm_relu, fused_batchnorm_relu
from tests.helpers import assert_vjp_proven, normal


def _params(d, seed=10):
    return (
        normal(seed, d) * 0.5 + 1.0,
        normal(seed + 1, d),
        normal(seed + 2, d) * 0.1,
        jnp.abs(normal(seed + 3, d)) + 0.5,
    )


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("xs", [(5, 4), (1, 3), (7, 1)])
def test_batchnorm_vjp_matches_autodiff_and_finite_differences(train, xs):
    if train and xs[0] == 1:
        pytest.skip("a batch of one has zero variance; nothing to normalise")
    x = normal(0, *xs) * 2.0 + 3.0
    g, b, rm, rv = _params(xs[1])
    assert_vjp_proven(
        lambda x, g, b, rm, rv: L.batchnorm(x, g, b, rm, rv, train=train)[0],
        lambda x, g, b, rm, rv: R.batchnorm(x, g, b, rm, rv, train=train)[0],
        (x, g, b, rm, rv),
        names=("x", "gamma", "beta", "running_mean", "running_var"),
        numeric_tol=1e-6,
    )


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("xs", [(2, 3, 4, 5), (1, 2, 3, 3)])
def test_spatial_batchnorm_vjp_matches_autodiff_and_finite_differences(train, xs):
    x = normal(1, *xs) * 2.0 - 1.0
    g, b, rm, rv = _params(xs[1])
    assert_vjp_proven(
        lambda x, g, b, rm, rv: L.spatial_batchnorm(x, g, b, rm, rv, train=train)[0],
        lambda x, g, b, rm, rv: R.spatial_batchnorm(x, g, b, rm, rv, train=train)[0],
        (x, g, b, rm, rv),
        names=("x", "gamma", "beta", "running_mean", "running_var"),
        numeric_tol=1e-6,
    )


@pytest.mark.parametrize("xs", [(6, 4), (3, 2, 4, 4)])
def test_batchnorm_graph_backward_equals_closed_form(xs):
    x = normal(2, *xs) * 3.0 + 1.0
    g, b, rm, rv = _params(xs[1])
    out, cache = L.batchnorm_forward(x, g, b, rm, rv, train=True)
    dout = normal(5, *out.shape)
    closed = L.batchnorm_backward(dout, cache)
    graph = L.batchnorm_backward_graph(dout, cache)
    for c, s in zip(closed[:3], graph[:3], strict=True):
        assert rel_error(c, s) < 1e-11


def test_batchnorm_train_output_is_standardised_then_scaled():
    x = normal(3, 200, 3) * jnp.array([1.0, 5.0, 0.1]) + jnp.array([10.0, -3.0, 0.5])
    d = 3
    ones, zeros = jnp.ones(d), jnp.zeros(d)
    out, _, _ = L.batchnorm(x, ones, zeros, zeros, ones, train=True)
    np.testing.assert_allclose(out.mean(0), 0.0, atol=1e-10)
    np.testing.assert_allclose(out.std(0), 1.0, rtol=1e-3)  # eps=1e-5 shrinks std 0.1 a bit
    gamma, beta = jnp.array([3.0, 4.0, 5.0]), jnp.array([6.0, 7.0, 8.0])
    out, _, _ = L.batchnorm(x, gamma, beta, zeros, ones, train=True)
    np.testing.assert_allclose(out.mean(0), beta, atol=1e-9)
    np.testing.assert_allclose(out.std(0), gamma, rtol=1e-3)


def test_spatial_batchnorm_statistics_per_channel():
    x = normal(4, 10, 3, 4, 5) * 4.0 + 10.0
    gamma, beta = jnp.array([3.0, 4.0, 5.0]), jnp.array([6.0, 7.0, 8.0])
    out, _, _ = L.spatial_batchnorm(x, gamma, beta, jnp.zeros(3), jnp.ones(3), train=True)
    np.testing.assert_allclose(out.mean(axis=(0, 2, 3)), beta, atol=1e-9)
    np.testing.assert_allclose(out.std(axis=(0, 2, 3)), gamma, rtol=1e-4)


def test_batchnorm_running_statistics_standardise_at_test_time():
    d = 4
    w1, w2 = normal(5, 6, 10), normal(6, 10, d)
    gamma, beta = jnp.ones(d), jnp.zeros(d)
    rm, rv = jnp.zeros(d), jnp.ones(d)
    step = jax.jit(lambda x, rm, rv: L.batchnorm(x, gamma, beta, rm, rv, train=True))
    for i in range(200):
        x = jnp.maximum(normal(100 + i, 50, 6) @ w1, 0) @ w2
        _, rm, rv = step(x, rm, rv)
    x = jnp.maximum(normal(999, 2000, 6) @ w1, 0) @ w2
    out, rm2, rv2 = L.batchnorm(x, gamma, beta, rm, rv, train=False)
    assert rm2 is rm and rv2 is rv
    np.testing.assert_allclose(out.mean(0), 0.0, atol=0.15)
    np.testing.assert_allclose(out.std(0), 1.0, atol=0.15)


def test_batchnorm_running_update_uses_momentum_and_biased_variance():
    x = normal(7, 8, 3)
    rm, rv = jnp.full(3, 2.0), jnp.full(3, 3.0)
    _, new_rm, new_rv = L.batchnorm(x, jnp.ones(3), jnp.zeros(3), rm, rv, train=True, momentum=0.8)
    np.testing.assert_allclose(new_rm, 0.8 * 2.0 + 0.2 * np.mean(x, 0), rtol=1e-12)
    np.testing.assert_allclose(new_rv, 0.8 * 3.0 + 0.2 * np.var(x, 0), rtol=1e-12)


@pytest.mark.parametrize(
    "fn,xs,pshape,kwargs,match",
    [
        (L.batchnorm, (4, 3, 2), (3,), {}, "x must have rank 2"),
        (L.spatial_batchnorm, (4, 3), (3,), {}, "x must have rank 4"),
        (L.batchnorm, (4, 3), (4,), {}, "gamma must have shape"),
        (L.batchnorm, (4, 3), (3,), {"momentum": 1.5}, "momentum"),
        (L.batchnorm, (4, 3), (3,), {"eps": 0.0}, "eps"),
    ],
)
def test_batchnorm_bad_input_raises_value_error(fn, xs, pshape, kwargs, match):
    p = jnp.ones(pshape)
    with pytest.raises(ValueError, match=match):
        fn(jnp.ones(xs), p, p, p, p, train=True, **kwargs)


@pytest.mark.parametrize("train", [True, False])
def test_spatial_batchnorm_nhwc_layout_matches_nchw_and_autodiff(train):
    x = normal(12, 3, 4, 5, 2) * 2.0 + 1.0  # NHWC, 2 channels
    g, b, rm, rv = _params(2)
    out, m1, v1 = L.spatial_batchnorm(x, g, b, rm, rv, train=train, layout="NHWC")
    ref, m2, v2 = L.spatial_batchnorm(x.transpose(0, 3, 1, 2), g, b, rm, rv, train=train)
    np.testing.assert_allclose(out, ref.transpose(0, 2, 3, 1), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(m1, m2, rtol=1e-12)
    np.testing.assert_allclose(v1, v2, rtol=1e-12)
    assert_vjp_proven(
        lambda x, g, b, rm, rv: L.spatial_batchnorm(x, g, b, rm, rv, train=train, layout="NHWC")[0],
        lambda x, g, b, rm, rv: R.spatial_batchnorm(x, g, b, rm, rv, train=train, layout="NHWC")[0],
        (x, g, b, rm, rv),
        names=("x", "gamma", "beta", "running_mean", "running_var"),
        numeric_tol=1e-6,
    )


def test_bfloat16_activations_with_float32_statistics_and_parameters():
    x = normal(13, 4, 3, 5, 5).astype(jnp.bfloat16)
    g, b, rm, rv = (p.astype(jnp.float32) for p in _params(3))

    def loss(x, g, b, rm, rv):
        gb, bb = g.astype(jnp.bfloat16), b.astype(jnp.bfloat16)
        out = L.spatial_batchnorm(x, gb, bb, rm, rv, train=False)[0]
        return jnp.sum(out.astype(jnp.float32))

    grads = jax.grad(loss, argnums=(0, 1, 2, 3, 4))(x, g, b, rm, rv)
    assert [d.dtype for d in grads] == [jnp.bfloat16] + [jnp.float32] * 4
    _, new_rm, new_rv = L.spatial_batchnorm(
        x, g.astype(x.dtype), b.astype(x.dtype), rm, rv, train=True
    )
    assert new_rm.dtype == jnp.float32 and new_rv.dtype == jnp.float32


# ----------------------------------------------- batchnorm → relu, the sandwiches' fused core


def _fused(x, gamma, beta, axis):
    """The fused training layer, its three outputs in one array (so one random cotangent
    covers out, mean and var)."""
    out, mean, var = fused_batchnorm_relu(x, gamma, beta, eps=1e-5, axis=axis)
    return jnp.concatenate([out.ravel(), mean, var])


def _fused_twin(x, gamma, beta, axis):
    mean, var = batch_statistics(x, axis)
    shape = [1] * x.ndim
    shape[axis] = -1
    x_hat = (x - mean.reshape(shape)) / jnp.sqrt(var.reshape(shape) + 1e-5)
    out = R.relu(gamma.reshape(shape) * x_hat + beta.reshape(shape))
    return jnp.concatenate([out.ravel(), mean, var])


# Features last (NHWC, (N, D)) runs the compiled kernel: 11 and 19 features are one vector
# chunk plus single channels in float64, 3 only single channels; NCHW is the XLA path.
@pytest.mark.parametrize(
    "xs,axis", [((3, 4, 4, 11), 3), ((9, 19), 1), ((40, 3), 1), ((3, 5, 4, 4), 1)]
)
def test_batchnorm_relu_matches_autodiff_and_finite_differences(xs, axis):
    x = normal(0, *xs) * 2.0 + 3.0
    gamma, beta = normal(5, xs[axis]) * 0.5 + 1.0, normal(6, xs[axis])
    assert_vjp_proven(
        functools.partial(_fused, axis=axis),
        functools.partial(_fused_twin, axis=axis),
        (x, gamma, beta),
        names=("x", "gamma", "beta"),
        numeric_tol=1e-6,
    )


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_batchnorm_relu_forward_statistics_survive_a_large_mean(dtype):
    # Values 1000 ± 0.01: the variance (1e-4) is 1e-10 of the mean square, which a one-pass
    # Σx² − (Σx)²/m cannot resolve in float32 (XLA's jnp.var is off by 1e-4 here). 37
    # channels, 7,000 rows: many blocks.
    x = (normal(0, 70, 10, 10, 37) * 0.01 + 1000.0).astype(dtype)
    gamma, beta = jnp.ones(37, dtype), jnp.zeros(37, dtype)
    forward = jax.jit(functools.partial(L.batchnorm_relu_forward, eps=1e-5, axis=3))
    (out, mean, var), _ = forward(x, gamma, beta)
    x64 = np.asarray(x, np.float64)
    np.testing.assert_allclose(mean, x64.mean(axis=(0, 1, 2)), rtol=1e-6)
    np.testing.assert_allclose(var, x64.var(axis=(0, 1, 2)), rtol=5e-4)
    want = np.maximum((x64 - x64.mean((0, 1, 2))) / np.sqrt(x64.var((0, 1, 2)) + 1e-5), 0)
    np.testing.assert_allclose(out, want, atol=0.05 if dtype == jnp.float32 else 1e-9)


@pytest.mark.skipif(native._compiler() is None, reason="no C++ compiler on this machine")
@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
def test_conv_bn_relu_runs_the_compiled_kernels_on_features_last_input(layout):
    x = normal(0, 2, 4, 4, 3) if layout == "NHWC" else normal(0, 2, 3, 4, 4)
    w, zeros, ones = normal(1, 5, 3, 3, 3), jnp.zeros(5), jnp.ones(5)

    def loss(x, w):
        out, _, _ = L.conv_bn_relu(
            x, w, zeros, ones, zeros, zeros, ones, train=True, pad=1, layout=layout
        )
        return jnp.sum(out**2)

    hlo = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(x, w).compile().as_text()
    for target in ("jcnn_batchnorm_relu_forward", "jcnn_batchnorm_relu_backward"):
        assert (target in hlo) == (layout == "NHWC")


@pytest.mark.skipif(native._compiler() is None, reason="no C++ compiler on this machine")
def test_batchnorm_relu_in_bfloat16_is_the_float32_result_rounded():
    # 37 channels: two vector chunks of 16 and 5 single channels; several row blocks.
    x = (normal(0, 40, 6, 6, 37) * 2.0 + 0.5).astype(jnp.bfloat16)
    gamma = (1.0 + 0.1 * normal(1, 37)).astype(jnp.bfloat16)
    beta = (0.1 * normal(2, 37)).astype(jnp.bfloat16)
    dout = normal(3, 40, 6, 6, 37).astype(jnp.bfloat16)
    dmean, dvar = (
        (0.1 * normal(4, 37)).astype(jnp.bfloat16),
        (0.1 * normal(5, 37)).astype(jnp.bfloat16),
    )

    def both_ways(x, gamma, beta, dout, dmean, dvar):
        (out, mean, var), cache = L.batchnorm_relu_forward(x, gamma, beta, eps=1e-5, axis=3)
        return (out, mean, var), L.batchnorm_relu_backward((dout, dmean, dvar), cache)

    f = jax.jit(both_ways)
    args = (x, gamma, beta, dout, dmean, dvar)
    hlo = f.lower(*args).compile().as_text()
    assert "jcnn_batchnorm_relu_forward" in hlo and "jcnn_batchnorm_relu_backward" in hlo
    (out, mean, var), grads = f(*args)
    (out32, mean32, var32), _ = f(*(a.astype(jnp.float32) for a in args))
    assert all(a.dtype == jnp.bfloat16 for a in (out, mean, var, *grads))
    bf16_ulp = 2.0**-8  # relative rounding of one bfloat16 value
    np.testing.assert_allclose(np.float32(mean), mean32, rtol=bf16_ulp)
    np.testing.assert_allclose(np.float32(var), var32, rtol=bf16_ulp)
    # out: the statistics' and the result's rounding, relative to its scale
    out_error = np.abs(np.float32(out) - out32).max() / np.abs(out32).max()
    assert out_error < 4 * bf16_ulp
    # A pre-activation within that rounding of 0 may flip the relu mask (a few of 53,280
    # values), and a flipped unit's whole gradient differs. So the gradients are compared
    # with float32 autodiff of batchnorm-relu that keeps the units bfloat16's forward kept:
    # within bfloat16 rounding in norm (they are ~½ ulp off; a flipped unit alone is ~5 ulp).
    mask = np.float32(out) > 0
    assert (mask != (np.asarray(out32) > 0)).mean() < 1e-3

    def masked(x, gamma, beta):
        mean = x.mean(axis=(0, 1, 2))
        var = ((x - mean) ** 2).mean(axis=(0, 1, 2))
        z = gamma * (x - mean) / jnp.sqrt(var + 1e-5) + beta
        return jnp.where(mask, z, 0.0), mean, var

    as32 = [a.astype(jnp.float32) for a in args]
    _, masked_vjp = jax.vjp(masked, *as32[:3])
    wants = masked_vjp(tuple(as32[3:]))
    for name, got, want in zip(("dx", "dgamma", "dbeta"), grads, wants, strict=True):
        error = np.linalg.norm(np.float32(got) - want) / np.linalg.norm(want)
        assert error < 2 * bf16_ulp, (name, error)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_batchnorm_relu_forward_lets_a_nan_through(dtype):
    # A NaN poisons its channel's statistics; relu must not turn the result into zeros.
    # Channel 5 lies in a vector chunk, channel 17 among the single channels after them.
    x = normal(0, 4, 3, 3, 20).astype(dtype)
    x = x.at[1, 2, 0, 5].set(jnp.nan).at[0, 0, 1, 17].set(jnp.nan)
    forward = jax.jit(functools.partial(L.batchnorm_relu_forward, eps=1e-5, axis=3))
    (out, mean, var), _ = forward(x, jnp.ones(20, dtype), jnp.zeros(20, dtype))
    poisoned = np.zeros(20, bool)
    poisoned[[5, 17]] = True
    assert np.isnan(out[..., poisoned]).all()
    assert np.isnan(mean[poisoned]).all() and np.isnan(var[poisoned]).all()
    assert np.isfinite(out[..., ~poisoned]).all()


def _bn_call(name, xs, *, train, jit=False):
    """Call ``name`` (``[reference.]batchnorm``, ``[reference.]spatial_batchnorm[_nhwc]``,
    ``batchnorm_relu``) on zeros of shape ``xs``."""
    module = R if name.startswith("reference.") else L
    name = name.removeprefix("reference.")
    layout = "NHWC" if name.endswith("_nhwc") else "NCHW"
    d = xs[-1] if layout == "NHWC" or len(xs) == 2 or name == "batchnorm_relu" else xs[1]
    p = jnp.ones(d)
    if name == "batchnorm":
        f = functools.partial(module.batchnorm, train=train)
    elif name == "batchnorm_relu":
        f = functools.partial(batchnorm_relu, train=train, momentum=0.9, eps=1e-5, axis=-1)
    else:
        f = functools.partial(module.spatial_batchnorm, train=train, layout=layout)
    return (jax.jit(f) if jit else f)(jnp.zeros(xs), p, p, p, p)


EMPTY_BATCHES = [
    (prefix + name, xs)
    for prefix in ("", "reference.")
    for name, xs in [
        ("batchnorm", (0, 3)),
        ("spatial_batchnorm", (0, 3, 4, 4)),
        ("spatial_batchnorm", (2, 3, 0, 4)),
        ("spatial_batchnorm_nhwc", (0, 4, 4, 3)),
        ("spatial_batchnorm_nhwc", (2, 4, 0, 3)),
    ]
] + [("batchnorm_relu", (0, 3)), ("batchnorm_relu", (0, 4, 4, 3))]


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("name,xs", EMPTY_BATCHES)
def test_training_batchnorm_on_an_empty_batch_raises_naming_x_even_under_jit(name, xs, jit):
    with pytest.raises(ValueError, match=r"x has no values per feature .* training mode"):
        _bn_call(name, xs, train=True, jit=jit)


@pytest.mark.parametrize("name,xs", EMPTY_BATCHES)
def test_test_mode_batchnorm_on_an_empty_batch_gives_an_empty_output_and_keeps_the_stats(name, xs):
    out, mean, var = _bn_call(name, xs, train=False)
    assert out.shape == xs
    np.testing.assert_array_equal(mean, 1.0)
    np.testing.assert_array_equal(var, 1.0)


def test_the_batchnorm_pair_refuses_an_empty_training_batch():
    p = jnp.ones(3)
    with pytest.raises(ValueError, match="x has no values per feature"):
        L.batchnorm_forward(jnp.zeros((0, 3)), p, p, p, p, train=True)
    with pytest.raises(ValueError, match="x has no values per feature"):
        L.batchnorm_relu_forward(jnp.zeros((0, 3)), p, p)


@pytest.mark.parametrize("fn", [L.batchnorm, R.batchnorm])
def test_training_batchnorm_with_no_features_differentiates_without_dividing_by_zero(fn):
    p = jnp.ones(0)
    loss = lambda x, g: fn(x, g, p, p, p, train=True)[0].sum()  # noqa: E731
    dx, dgamma = jax.grad(loss, argnums=(0, 1))(jnp.zeros((4, 0)), p)
    assert dx.shape == (4, 0) and dgamma.shape == (0,)
