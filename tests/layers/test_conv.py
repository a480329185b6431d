import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jcnn.layers as L
import jcnn.reference as R
from jcnn.gradcheck import rel_error
from tests.helpers import assert_vjp_proven, normal

IMPLS = ("naive", "im2col", "xla")
# (x shape, w shape, stride, pad): odd sizes, strides 1-3, pads 0-2, non-square filters, batch 1.
CASES = [
    ((2, 3, 7, 7), (4, 3, 3, 3), 1, 1),
    ((1, 2, 5, 6), (3, 2, 3, 2), 1, 0),
    ((2, 3, 9, 9), (2, 3, 3, 3), 2, 1),
    ((2, 2, 7, 8), (3, 2, 2, 3), 3, 2),
    ((1, 1, 6, 6), (2, 1, 1, 1), 1, 2),
    ((3, 2, 5, 5), (2, 2, 5, 5), 1, 2),
]


def _args(xs, ws, seed=0):
    return normal(seed, *xs), normal(seed + 1, *ws), normal(seed + 2, ws[0])


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("xs,ws,stride,pad", CASES)
def test_conv_vjp_matches_autodiff_and_finite_differences(impl, xs, ws, stride, pad):
    assert_vjp_proven(
        lambda x, w, b: L.conv2d(x, w, b, stride=stride, pad=pad, impl=impl),
        lambda x, w, b: R.conv2d(x, w, b, stride=stride, pad=pad),
        _args(xs, ws),
        names=("x", "w", "b"),
    )


@pytest.mark.parametrize("xs,ws,stride,pad", CASES)
def test_conv_forward_of_all_impls_agree(xs, ws, stride, pad):
    x, w, b = _args(xs, ws, seed=5)
    expected = R.conv2d(x, w, b, stride=stride, pad=pad)
    for impl in IMPLS:
        out = L.conv2d(x, w, b, stride=stride, pad=pad, impl=impl)
        assert out.shape == expected.shape
        assert rel_error(out, expected) < 1e-10, impl


def test_conv_forward_naive_matches_hand_computed_value():
    # One 2x2 input channel, one 2x2 filter, pad 0: a single dot product plus bias.
    x = jnp.arange(4.0).reshape(1, 1, 2, 2)
    w = jnp.array([[[[1.0, -1.0], [2.0, 0.5]]]])
    out, _ = L.conv_forward_naive(x, w, jnp.array([3.0]), stride=1, pad=0)
    assert out.shape == (1, 1, 1, 1)
    assert float(out[0, 0, 0, 0]) == 0 * 1 + 1 * -1 + 2 * 2 + 3 * 0.5 + 3.0


def test_conv_pair_backward_equals_custom_vjp():
    x, w, b = _args((2, 3, 6, 6), (4, 3, 3, 3))
    for impl in IMPLS:
        out, cache = L.conv_forward(x, w, b, stride=1, pad=1, impl=impl)
        dout = normal(7, *out.shape)
        grads = L.conv_backward(dout, cache, impl=impl)
        conv = functools.partial(L.conv2d, stride=1, pad=1, impl=impl)
        _, vjp = jax.vjp(conv, x, w, b)
        for g, v in zip(grads, vjp(dout), strict=True):
            assert rel_error(g, v) < 1e-12


@pytest.mark.parametrize("impl", IMPLS)
def test_conv_keeps_dtype(impl):
    x, w, b = (a.astype(jnp.float32) for a in _args((1, 2, 5, 5), (2, 2, 3, 3)))
    out = L.conv2d(x, w, b, pad=1, impl=impl)
    dx = jax.grad(lambda x: L.conv2d(x, w, b, pad=1, impl=impl).sum())(x)
    assert out.dtype == jnp.float32 and dx.dtype == jnp.float32
    x64 = x.astype(jnp.float64)
    assert (
        jax.grad(lambda w: L.conv2d(x64, w, b.astype(jnp.float64), pad=1, impl=impl).sum())(
            w.astype(jnp.float64)
        ).dtype
        == jnp.float64
    )


@pytest.mark.parametrize(
    "xs,ws,bs,kwargs,match",
    [
        ((3, 5, 5), (2, 3, 3, 3), (2,), {}, "x must have rank 4"),
        ((1, 3, 5, 5), (2, 3, 3), (2,), {}, "w must have rank 4"),
        ((1, 3, 5, 5), (2, 4, 3, 3), (2,), {}, "channels"),
        ((1, 3, 5, 5), (2, 3, 3, 3), (3,), {}, "b must have shape"),
        ((1, 3, 6, 6), (2, 3, 3, 3), (2,), {"stride": 2}, "do not tile"),
        ((1, 3, 2, 2), (2, 3, 3, 3), (2,), {}, "does not fit"),
        ((1, 3, 5, 5), (2, 3, 3, 3), (2,), {"stride": 0}, "stride must be a positive int"),
        ((1, 3, 5, 5), (2, 3, 3, 3), (2,), {"pad": -1}, "pad must be a non-negative int"),
        ((1, 3, 5, 5), (2, 3, 3, 3), (2,), {"impl": "fft"}, "impl must be one of"),
    ],
)
def test_conv_bad_input_raises_value_error_naming_the_problem(xs, ws, bs, kwargs, match):
    with pytest.raises(ValueError, match=match):
        L.conv2d(jnp.zeros(xs), jnp.zeros(ws), jnp.zeros(bs), **kwargs)
    if "impl" not in kwargs:
        with pytest.raises(ValueError, match=match):
            jax.jit(lambda x, w, b: R.conv2d(x, w, b, **kwargs))(
                jnp.zeros(xs), jnp.zeros(ws), jnp.zeros(bs)
            )


def test_conv_grayscale_and_sobel_filters_on_an_image():
    # The assignment's image cell: grayscale and horizontal-edge filters.
    rng = np.random.default_rng(0)
    img = jnp.asarray(rng.uniform(0, 255, size=(1, 3, 8, 8)))
    w = np.zeros((2, 3, 3, 3))
    w[0, :, 1, 1] = [0.3, 0.6, 0.1]
    w[1, 2] = [[1, 2, 1], [0, 0, 0], [-1, -2, -1]]
    out = L.conv2d(img, jnp.asarray(w), jnp.array([0.0, 128.0]), pad=1)
    gray = 0.3 * img[0, 0] + 0.6 * img[0, 1] + 0.1 * img[0, 2]
    np.testing.assert_allclose(out[0, 0], gray, rtol=1e-12)
    flat = jnp.ones((1, 3, 8, 8))
    edges = L.conv2d(flat, jnp.asarray(w), jnp.array([0.0, 128.0]), pad=1)
    np.testing.assert_allclose(edges[0, 1, 1:-1, 1:-1], 128.0)  # no edge inside a flat image


def _nhwc(a):
    return a.transpose(0, 2, 3, 1)


@pytest.mark.parametrize("xs,ws,stride,pad", CASES[:4])
def test_conv_nhwc_layout_vjp_and_forward_match_nchw(xs, ws, stride, pad):
    x, w, b = _args(xs, ws, seed=11)
    kw = dict(stride=stride, pad=pad)
    np.testing.assert_allclose(
        L.conv2d(_nhwc(x), w, b, layout="NHWC", **kw), _nhwc(R.conv2d(x, w, b, **kw)), rtol=1e-12
    )
    assert_vjp_proven(
        lambda x, w, b: L.conv2d(x, w, b, layout="NHWC", **kw),
        lambda x, w, b: R.conv2d(x, w, b, layout="NHWC", **kw),
        (_nhwc(x), w, b),
        names=("x", "w", "b"),
    )


def test_conv_nhwc_needs_a_channels_last_impl_and_checks_channels():
    x, w, b = jnp.zeros((1, 5, 5, 3)), jnp.zeros((2, 3, 3, 3)), jnp.zeros(2)
    with pytest.raises(ValueError, match="needs impl='auto', 'xla' or 'onednn'"):
        L.conv2d(x, w, b, impl="im2col", layout="NHWC")
    with pytest.raises(ValueError, match="layout must be one of"):
        L.conv2d(x, w, b, layout="HWCN")
    with pytest.raises(ValueError, match="channels"):
        L.conv2d(x, w, b)  # NHWC data read as NCHW: 5 channels
