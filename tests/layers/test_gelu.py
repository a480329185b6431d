import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jcnn.layers as L
import jcnn.reference as R
from jcnn.layers.batchnorm import batch_statistics
from jcnn.layers.gelu import _batchnorm_gelu
from tests.helpers import assert_vjp_proven, normal


def _tame(seed, *shape):
    """Values in [-3, 3] away from gelu's flat point (slope 0 near -0.75): in the far tails
    and there the gradients are tiny, and their relative errors say nothing."""
    u = jax.random.uniform(jax.random.key(seed), shape, jnp.float64, -3.0, 2.0)
    return jnp.where(u > -1.25, u + 1.0, u)


@pytest.mark.parametrize("approximate", [False, True])
def test_gelu_vjp_matches_autodiff_and_finite_differences(approximate):
    # Away from gelu's flat point (slope 0 near x = -0.75), where relative errors of tiny
    # gradients say nothing.
    x = _tame(0, 3, 4, 5)
    assert_vjp_proven(
        functools.partial(L.gelu, approximate=approximate),
        functools.partial(R.gelu, approximate=approximate),
        (x,),
        names=("x",),
    )


@pytest.mark.parametrize("approximate", [False, True])
def test_gelu_matches_jax_nn_gelu_in_float32(approximate):
    x = jnp.linspace(-8.0, 8.0, 1001, dtype=jnp.float32)
    np.testing.assert_allclose(
        L.gelu(x, approximate=approximate), jax.nn.gelu(x, approximate=approximate),
        rtol=1e-6, atol=1e-6,
    )  # fmt: skip


def test_gelu_refuses_a_non_bool_approximate():
    with pytest.raises(ValueError, match="approximate"):
        L.gelu(jnp.ones(3), approximate="tanh")


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize(
    "xs,layout", [((3, 4, 5, 6), "NHWC"), ((3, 6, 4, 5), "NCHW"), ((7, 5), "NCHW")]
)
@pytest.mark.parametrize("approximate", [False, True])
def test_batchnorm_gelu_vjp_matches_autodiff_and_finite_differences(train, xs, layout, approximate):
    d = xs[-1] if (layout == "NHWC" or len(xs) == 2) else xs[1]
    x = _tame(0, *xs)
    beta, rm, rv = normal(1, d) * 0.1, normal(2, d) * 0.1, 1.0 + 0.2 * _tame(3, d) ** 2
    kw = dict(train=train, layout=layout, approximate=approximate, eps=1e-3)
    assert_vjp_proven(
        lambda x, b, m, v: L.batchnorm_gelu(x, b, m, v, **kw)[0],
        lambda x, b, m, v: R.batchnorm_gelu(x, b, m, v, **kw)[0],
        (x, beta, rm, rv),
        names=("x", "beta", "running_mean", "running_var"),
        numeric_tol=1e-6,
    )


@pytest.mark.parametrize("train", [True, False])
def test_batchnorm_gelu_vjp_of_the_returned_statistics_is_exact(train):
    """The pair also returns the statistics it used; their cotangents are part of the VJP."""
    x = _tame(0, 4, 3, 3, 5)
    beta, rm, rv = normal(1, 5) * 0.1, normal(2, 5) * 0.1, 1.0 + 0.2 * _tame(3, 5) ** 2

    def fused(x, b, m, v):
        out, mean, var = _batchnorm_gelu(
            x, b, m, v, train=train, eps=1e-3, axis=3, approximate=False
        )
        return jnp.concatenate([out.ravel(), mean, var])

    def twin(x, b, m, v):
        mean, var = batch_statistics(x, 3) if train else (m, v)
        out = jax.nn.gelu((x - mean) / jnp.sqrt(var + 1e-3) + b, approximate=False)
        return jnp.concatenate([out.ravel(), mean, var])

    assert_vjp_proven(fused, twin, (x, beta, rm, rv), names=("x", "b", "m", "v"), numeric_tol=1e-6)


def test_batchnorm_gelu_has_no_scale_and_updates_the_running_statistics():
    x = normal(0, 64, 3) * 3.0 + 2.0
    zero, one = jnp.zeros(3), jnp.ones(3)
    out, rm, rv = L.batchnorm_gelu(x, zero, zero, one, train=True, momentum=0.6, eps=1e-12)
    mean, var = batch_statistics(x, 1)
    np.testing.assert_allclose(
        out, jax.nn.gelu((x - mean) / jnp.sqrt(var), approximate=False), rtol=1e-10
    )
    np.testing.assert_allclose(rm, 0.4 * mean, rtol=1e-12)
    np.testing.assert_allclose(rv, 0.6 + 0.4 * var, rtol=1e-12)
    same = L.batchnorm_gelu(x, zero, rm, rv, train=False)
    assert same[1] is rm and same[2] is rv


@pytest.mark.parametrize(
    "kwargs,args,match",
    [
        (dict(), ((2, 3, 4), 3), "x must have rank 4"),
        (dict(layout="NHWC"), ((2, 4, 4, 3), 4), "beta must have shape"),
        (dict(momentum=1.5), ((2, 3, 4, 4), 3), "momentum"),
        (dict(eps=0.0), ((2, 3, 4, 4), 3), "eps"),
        (dict(layout="NWHC"), ((2, 3, 4, 4), 3), "layout"),
    ],
)
def test_batchnorm_gelu_bad_input_raises_value_error_naming_it(kwargs, args, match):
    xs, d = args
    with pytest.raises(ValueError, match=match):
        L.batchnorm_gelu(
            jnp.ones(xs), jnp.zeros(d), jnp.zeros(d), jnp.ones(d), train=True, **kwargs
        )


def test_batchnorm_gelu_on_an_empty_training_batch_raises_naming_x():
    with pytest.raises(ValueError, match="x has no values"):
        L.batchnorm_gelu(jnp.ones((0, 3)), jnp.zeros(3), jnp.zeros(3), jnp.ones(3), train=True)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("train", [True, False])
def test_batchnorm_gelu_in_16_bit_is_the_float32_result_rounded_once(dtype, train):
    """A 16-bit input is computed in float32 inside the layer, forward and backward: its
    output and dx are the float32 layer's on the same values, each rounded once (within one
    unit in the last place of the 16-bit type, where a float32 sum taken in another order can
    land on the other side of a rounding boundary)."""
    f32 = jnp.float32
    x = (normal(0, 8, 5, 5, 6, dtype=f32) * 3 + 1).astype(dtype)
    dout = normal(1, 8, 5, 5, 6, dtype=f32).astype(dtype)
    beta, rm, rv = normal(2, 6, dtype=f32), normal(3, 6, dtype=f32), jnp.full((6,), 2.0, f32)
    zeros = jnp.zeros((6,), f32)

    @jax.jit
    def forward_backward(x, dout):
        (out, _, _), cache = L.batchnorm_gelu_forward(
            x, beta, rm, rv, train=train, eps=1e-5, axis=3
        )
        dx = L.batchnorm_gelu_backward((dout, zeros.astype(x.dtype), zeros.astype(x.dtype)), cache)
        return out, dx[0]

    out, dx = forward_backward(x, dout)
    out32, dx32 = forward_backward(x.astype(f32), dout.astype(f32))
    assert out.dtype == dx.dtype == dtype
    ulp = float(jnp.finfo(dtype).eps)
    for got, want in ((out, out32), (dx, dx32)):
        rounded = np.asarray(want.astype(dtype), np.float32)
        np.testing.assert_allclose(np.asarray(got, np.float32), rounded, rtol=ulp, atol=ulp * 1e-3)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_gelu_in_16_bit_is_the_float32_result_rounded_once(dtype):
    x = (normal(0, 64, dtype=jnp.float32) * 3).astype(dtype)
    out, pull = jax.vjp(L.gelu, x)
    out32, pull32 = jax.vjp(L.gelu, x.astype(jnp.float32))
    assert out.dtype == dtype
    np.testing.assert_array_equal(out, out32.astype(dtype))
    dout = jnp.ones_like(x)
    np.testing.assert_array_equal(pull(dout)[0], pull32(dout.astype(jnp.float32))[0].astype(dtype))
