import jax.numpy as jnp
import numpy as np
import pytest

import jcnn.layers as L
import jcnn.reference as R
from tests.helpers import assert_vjp_proven, normal


def test_residual_add_vjp_matches_autodiff_and_finite_differences():
    assert_vjp_proven(
        L.residual_add,
        R.residual_add,
        (normal(0, 2, 3, 4), normal(1, 2, 3, 4)),
        names=("x", "skip"),
    )


def test_residual_add_passes_the_gradient_to_both_operands_unchanged():
    dout = normal(2, 2, 3)
    dx, dskip = L.residual_add_backward(dout, L.residual_add_forward(dout, dout)[1])
    np.testing.assert_array_equal(dx, dout)
    np.testing.assert_array_equal(dskip, dout)


@pytest.mark.parametrize(
    "skip,match",
    [
        (jnp.zeros((2, 4)), r"skip must match x's shape \(2, 3\)"),
        (jnp.zeros((2, 3), jnp.float32), "dtype float64"),
        (jnp.zeros((2, 3), jnp.int32), "skip must be"),
    ],
)
def test_residual_add_refuses_a_skip_that_does_not_match(skip, match):
    with pytest.raises(ValueError, match=match):
        L.residual_add(jnp.zeros((2, 3), jnp.float64), skip)
