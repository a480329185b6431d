import jax
import jax.numpy as jnp
import numpy as np

import jcnn.layers as L
import jcnn.reference as R
from tests.helpers import assert_vjp_proven, normal


def test_relu_vjp_matches_autodiff_and_finite_differences():
    assert_vjp_proven(L.relu, R.relu, (normal(0, 3, 4, 5),), names=("x",))


def test_relu_gradient_at_zero_is_zero():
    dx = jax.grad(lambda x: L.relu(x).sum())(jnp.array([-1.0, 0.0, 2.0]))
    np.testing.assert_array_equal(dx, [0.0, 0.0, 1.0])
