import jax.numpy as jnp
import pytest

import jcnn.layers as L
import jcnn.reference as R
from tests.helpers import assert_vjp_proven, normal


@pytest.mark.parametrize("xs,m", [((4, 5), 3), ((2, 3, 4, 2), 6), ((1, 7), 1)])
def test_affine_vjp_matches_autodiff_and_finite_differences(xs, m):
    d = 1
    for s in xs[1:]:
        d *= s
    assert_vjp_proven(
        L.affine, R.affine, (normal(0, *xs), normal(1, d, m), normal(2, m)), names=("x", "w", "b")
    )


def test_affine_flattens_trailing_dimensions():
    x = normal(3, 2, 3, 4)
    w = normal(4, 12, 5)
    out = L.affine(x, w, jnp.zeros(5))
    assert out.shape == (2, 5)
    assert jnp.allclose(out, x.reshape(2, 12) @ w)


@pytest.mark.parametrize(
    "xs,ws,bs,match",
    [
        ((4,), (4, 3), (3,), "x must have shape"),
        ((4, 5), (6, 3), (3,), "w has 6 rows"),
        ((4, 5), (5, 3, 1), (3,), "w must have rank 2"),
        ((4, 5), (5, 3), (4,), "b must have shape"),
        ((4, 5), (5, 3), (1,), "b must have shape"),
    ],
)
def test_affine_bad_shapes_raise_without_broadcasting(xs, ws, bs, match):
    with pytest.raises(ValueError, match=match):
        L.affine(jnp.ones(xs), jnp.ones(ws), jnp.ones(bs))
