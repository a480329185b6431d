import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jcnn.layers as L
import jcnn.reference as R
from jcnn.gradcheck import rel_error
from tests.helpers import assert_vjp_proven, normal

IMPLS = ("naive", "fast")
# (x shape, pool_height, pool_width, stride): tiling, overlapping, non-square, leftovers, batch 1.
# Square windows with stride = window take the fast impl's one-pass (tiled) backward.
CASES = [
    ((2, 3, 8, 8), 2, 2, 2),
    ((2, 2, 7, 6), 3, 3, 3),
    ((1, 2, 7, 7), 3, 3, 2),
    ((2, 2, 6, 7), 2, 3, 1),
    ((2, 1, 9, 8), 3, 2, 3),
    ((1, 3, 5, 5), 2, 2, 2),
]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("xs,ph,pw,s", CASES)
def test_max_pool_vjp_matches_autodiff_and_finite_differences(impl, xs, ph, pw, s):
    kw = dict(pool_height=ph, pool_width=pw, stride=s)
    assert_vjp_proven(
        lambda x: L.max_pool2d(x, impl=impl, **kw),
        lambda x: R.max_pool2d(x, **kw),
        (normal(3, *xs),),
        names=("x",),
    )


@pytest.mark.parametrize("xs,ph,pw,s", CASES)
def test_max_pool_forward_of_all_impls_agree(xs, ph, pw, s):
    x = normal(4, *xs)
    kw = dict(pool_height=ph, pool_width=pw, stride=s)
    expected = R.max_pool2d(x, **kw)
    for impl in IMPLS:
        assert rel_error(L.max_pool2d(x, impl=impl, **kw), expected) == 0.0


@pytest.mark.parametrize("impl", IMPLS)
def test_max_pool_gradient_goes_to_the_first_max_of_a_tie(impl):
    # Two 2x2 windows; each holds its maximum twice. Row-major first: (0, 1) and (0, 2).
    x = jnp.array([[[[1.0, 5.0, 5.0, 0.0], [5.0, 2.0, 5.0, 3.0]]]])
    dx = jax.grad(lambda x: L.max_pool2d(x, impl=impl).sum())(x)
    np.testing.assert_array_equal(dx[0, 0], [[0.0, 1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]])


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_a_nan_in_a_window_is_its_maximum_and_takes_its_gradient(impl, layout, dtype):
    """As jnp.max: a window holding NaN pools to NaN, whichever tap holds it; its gradient
    goes to the first NaN (row-major), and windows without NaN are untouched."""
    if impl == "naive" and layout == "NHWC":
        pytest.skip("the naive impl is NCHW only")
    for k in range(4):
        x = np.arange(32, dtype=np.float32).reshape(1, 1, 4, 8)
        x[0, 0, k // 2, k % 2] = np.nan  # one tap of the first window
        x[0, 0, 1, 3] = x[0, 0, 0, 2] = np.nan  # two NaNs in the second: the first wins
        xs = jnp.asarray(x, dtype)
        if layout == "NHWC":
            xs = xs.transpose(0, 2, 3, 1)

        def pool(x):
            out = L.max_pool2d(x, impl=impl, layout=layout)
            return out if layout == "NCHW" else out.transpose(0, 3, 1, 2)

        out = pool(xs)
        assert np.isnan(np.asarray(out[0, 0, 0, :2], np.float32)).all()
        np.testing.assert_array_equal(np.asarray(out[0, 0, 0, 2:], np.float32), [13.0, 15.0])
        np.testing.assert_array_equal(np.asarray(out[0, 0, 1], np.float32), [25, 27, 29, 31])
        dx = jax.grad(lambda x: jnp.sum(pool(x).astype(jnp.float32)))(xs)
        if layout == "NHWC":
            dx = dx.transpose(0, 3, 1, 2)
        want = np.zeros((4, 8), np.float32)
        want[k // 2, k % 2] = want[0, 2] = 1.0  # the first NaN of each window
        for i, j in [(0, 5), (0, 7), (2, 1), (2, 3), (2, 5), (2, 7)]:
            want[i + 1, j] = 1.0  # the plain windows' maxima (bottom right)
        np.testing.assert_array_equal(np.asarray(dx[0, 0], np.float32), want)


@pytest.mark.parametrize(
    "xs,kwargs,match",
    [
        ((3, 4, 4), {}, "x must have rank 4"),
        ((1, 1, 2, 2), {"pool_height": 3}, "does not fit"),
        ((1, 1, 4, 4), {"stride": 0}, "stride must be a positive int"),
        ((1, 1, 4, 4), {"pool_width": 1.5}, "pool_width must be a positive int"),
        ((1, 1, 4, 4), {"impl": "im2col"}, "impl must be one of"),
    ],
)
def test_max_pool_bad_input_raises_value_error(xs, kwargs, match):
    with pytest.raises(ValueError, match=match):
        L.max_pool2d(jnp.zeros(xs), **kwargs)


@pytest.mark.parametrize("xs,ph,pw,s", CASES)
def test_max_pool_nhwc_layout_matches_nchw_and_autodiff(xs, ph, pw, s):
    x = normal(8, *xs)
    kw = dict(pool_height=ph, pool_width=pw, stride=s)
    out = L.max_pool2d(x.transpose(0, 2, 3, 1), layout="NHWC", **kw)
    np.testing.assert_array_equal(out, R.max_pool2d(x, **kw).transpose(0, 2, 3, 1))
    assert_vjp_proven(
        lambda x: L.max_pool2d(x, layout="NHWC", **kw),
        lambda x: R.max_pool2d(x, layout="NHWC", **kw),
        (x.transpose(0, 2, 3, 1),),
        names=("x",),
    )


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("ph, pw, s", [(2, 2, 2), (3, 3, 2)])
def test_max_pool_in_16_bit_is_exactly_the_float32_pool(dtype, ph, pw, s):
    """Compared and routed in float32 inside the layer: the same maxima and the same
    gradient as the float32 pool on the same values (overlapping windows' shares summed in
    float32 and rounded once)."""
    x = normal(0, 2, 7, 7, 3, dtype=jnp.float32).astype(dtype)
    pool = lambda x: L.max_pool2d(x, pool_height=ph, pool_width=pw, stride=s, layout="NHWC")  # noqa: E731
    out, pull = jax.vjp(pool, x)
    out32, pull32 = jax.vjp(pool, x.astype(jnp.float32))
    assert out.dtype == dtype
    np.testing.assert_array_equal(out, out32.astype(dtype))
    dout = normal(1, *out.shape, dtype=jnp.float32)
    np.testing.assert_array_equal(
        pull(dout.astype(dtype))[0], pull32(dout.astype(dtype).astype(jnp.float32))[0].astype(dtype)
    )
