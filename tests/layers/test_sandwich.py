import functools

import jax
import jax.numpy as jnp
import pytest

import jcnn.layers as L
import jcnn.reference as R
from tests.helpers import assert_vjp_proven, normal


def test_affine_relu_gradients():
    assert_vjp_proven(
        L.affine_relu,
        R.affine_relu,
        (normal(0, 3, 2, 4), normal(1, 8, 5), normal(2, 5)),
        names="xwb",
    )


@pytest.mark.parametrize("impl", ["naive", "im2col", "xla"])
def test_conv_relu_pool_gradients(impl):
    kw = dict(stride=1, pad=1)
    assert_vjp_proven(
        functools.partial(L.conv_relu_pool, impl=impl, pool_impl="fast", **kw),
        functools.partial(R.conv_relu_pool, **kw),
        (normal(0, 2, 3, 6, 6), normal(1, 4, 3, 3, 3), normal(2, 4)),
        names="xwb",
    )


def test_conv_relu_gradients():
    kw = dict(stride=2, pad=1)
    assert_vjp_proven(
        functools.partial(L.conv_relu, **kw),
        functools.partial(R.conv_relu, **kw),
        (normal(0, 2, 3, 7, 7), normal(1, 4, 3, 3, 3), normal(2, 4)),
        names="xwb",
    )


@pytest.mark.parametrize(
    "name,xs,ws", [("conv_bn_relu", (3, 2, 5, 5), (4, 2, 3, 3)), ("affine_bn_relu", (6, 5), (5, 4))]
)
def test_bn_sandwich_gradients_and_running_statistics(name, xs, ws):
    d = ws[0] if name == "conv_bn_relu" else ws[1]
    kw = dict(pad=1) if name == "conv_bn_relu" else {}
    gamma, beta = normal(5, d) * 0.3 + 1.0, normal(6, d)
    rm, rv = jnp.zeros(d), jnp.ones(d)
    fn, twin = getattr(L, name), getattr(R, name)
    args = (normal(0, *xs), normal(1, *ws), normal(2, d), gamma, beta)
    assert_vjp_proven(
        lambda *a: fn(*a, rm, rv, train=True, **kw)[0],
        lambda *a: twin(*a, rm, rv, train=True, **kw)[0],
        args,
        names=("x", "w", "b", "gamma", "beta"),
        argnums=(0, 1, 3, 4),
        numeric_tol=1e-6,
    )
    # The bias before a batchnorm is removed with the mean: its gradient is zero.
    out = fn(*args, rm, rv, train=True, **kw)[0]
    dout = normal(7, *out.shape)
    db = jax.grad(
        lambda b: jnp.sum(fn(*args[:2], b, *args[3:], rm, rv, train=True, **kw)[0] * dout)
    )
    assert float(jnp.max(jnp.abs(db(args[2])))) < 1e-12
    _, m1, v1 = fn(*args, rm, rv, train=True, **kw)
    _, m2, v2 = twin(*args, rm, rv, train=True, **kw)
    assert jnp.allclose(m1, m2) and jnp.allclose(v1, v2)
    assert not jnp.allclose(m1, rm)
    assert jax.jit(lambda *a: fn(*a, rm, rv, train=False, **kw)[0])(*args).shape[0] == xs[0]


def test_conv_bn_relu_leaves_the_bias_out_only_while_training():
    # Training: the bias is not added (batchnorm removes it; its gradient is 0) but still
    # reaches the running mean; at test time it is added as usual. Both layouts.
    x, w, b = normal(0, 3, 2, 5, 5), normal(1, 4, 2, 3, 3), normal(2, 4)
    gamma, beta, rm, rv = normal(5, 4) * 0.3 + 1.0, normal(6, 4), normal(8, 4), jnp.ones(4) * 2
    nhwc = functools.partial(jnp.transpose, axes=(0, 2, 3, 1))
    for train in (True, False):
        want = R.conv_bn_relu(x, w, b, gamma, beta, rm, rv, train=train, pad=1)
        got = L.conv_bn_relu(x, w, b, gamma, beta, rm, rv, train=train, pad=1)
        got_nhwc = L.conv_bn_relu(
            nhwc(x), w, b, gamma, beta, rm, rv, train=train, pad=1, layout="NHWC"
        )
        for g in (got, (nhwc_to_nchw(got_nhwc[0]), *got_nhwc[1:])):
            for a, e in zip(g, want, strict=True):
                assert jnp.allclose(a, e, rtol=1e-10, atol=1e-12)

    def loss(b, layout):
        xin = x if layout == "NCHW" else nhwc(x)
        out = L.conv_bn_relu(xin, w, b, gamma, beta, rm, rv, train=True, pad=1, layout=layout)
        return jnp.sum(out[0] * (xin[:, :1] if layout == "NCHW" else xin[..., :1]))

    def twin_loss(b):
        return jnp.sum(
            R.conv_bn_relu(x, w, b, gamma, beta, rm, rv, train=True, pad=1)[0] * x[:, :1]
        )

    for layout in ("NCHW", "NHWC"):
        db = jax.grad(loss)(b, layout)
        assert jnp.all(db == 0)
        assert jnp.allclose(jax.grad(twin_loss)(b), 0, atol=1e-12)  # Σ dx_bn: 0 up to rounding


def nhwc_to_nchw(a):
    return jnp.transpose(a, (0, 3, 1, 2))
