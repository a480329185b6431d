import jax.numpy as jnp
import numpy as np
import pytest

from jcnn.gradcheck import check_vjp, numerical_gradient, rel_error
from tests.helpers import normal


def test_rel_error_is_cs231n_formula():
    assert rel_error([1.0, 2.0], [1.0, 2.0]) == 0.0
    assert rel_error([1.0], [3.0]) == pytest.approx(0.5)
    assert rel_error([0.0], [1e-12]) == pytest.approx(1e-4)
    with pytest.raises(ValueError, match="shapes differ"):
        rel_error([1.0], [1.0, 2.0])


def test_numerical_gradient_of_known_function():
    x = normal(0, 3, 4)
    dout = normal(1, 3, 4)
    grad = numerical_gradient(lambda x: jnp.sin(x) * x, x, dout)
    expected = (jnp.cos(x) * x + jnp.sin(x)) * dout
    assert rel_error(grad, expected) < 1e-8


def test_check_vjp_catches_a_wrong_backward():
    import jax

    @jax.custom_vjp
    def wrong_square(x):
        return x * x

    wrong_square.defvjp(lambda x: (x * x, x), lambda x, g: (3.0 * x * g,))  # should be 2x
    report = check_vjp(wrong_square, lambda x: x * x, (normal(2, 5),), names=["x"])
    assert report["x"]["twin"] > 0.1 and report["x"]["numeric"] > 0.1
    good = check_vjp(lambda x: x * x, lambda x: x * x, (normal(2, 5),), names=["x"])
    assert good["x"]["twin"] == 0.0 and good["x"]["numeric"] < 1e-8
    assert np.isfinite(good["x"]["numeric"])
