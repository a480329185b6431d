import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jcnn.layers as L
import jcnn.reference as R
from tests.helpers import assert_vjp_proven, normal


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.8])
def test_dropout_vjp_matches_autodiff_and_finite_differences(rate):
    key = jax.random.PRNGKey(3)
    assert_vjp_proven(
        lambda x: L.dropout(x, key, rate=rate, train=True),
        lambda x: R.dropout(x, key, rate=rate, train=True),
        (normal(0, 6, 7),),
        names=("x",),
    )


def test_dropout_drops_the_same_units_as_the_reference():
    x, key = normal(1, 20, 30), jax.random.PRNGKey(7)
    np.testing.assert_array_equal(
        L.dropout(x, key, rate=0.3, train=True), R.dropout(x, key, rate=0.3, train=True)
    )


@pytest.mark.parametrize("rate", [0.25, 0.4, 0.7])
def test_dropout_statistics(rate):
    x = normal(2, 500, 500) + 10.0
    out = L.dropout(x, jax.random.PRNGKey(0), rate=rate, train=True)
    assert abs(float(jnp.mean(out == 0)) - rate) < 0.01
    assert abs(float(out.mean()) - float(x.mean())) < 0.05 * float(x.mean())


def test_dropout_is_identity_at_test_time_and_needs_no_key():
    x = normal(3, 4, 5)
    assert L.dropout(x, None, rate=0.5, train=False) is x
    assert L.dropout(x, None, rate=0.0, train=True) is x


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5, "half"])
def test_dropout_rate_outside_unit_interval_raises(rate):
    with pytest.raises(ValueError, match="rate"):
        L.dropout(jnp.ones(3), jax.random.PRNGKey(0), rate=rate, train=True)


def test_dropout_without_key_in_training_raises():
    with pytest.raises(ValueError, match="key"):
        L.dropout(jnp.ones(3), None, rate=0.5, train=True)
