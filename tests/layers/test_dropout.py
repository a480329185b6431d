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


KEYS_THAT_WORK = {
    "key": jax.random.key(1),
    "PRNGKey": jax.random.PRNGKey(1),
    "fold_in(key)": jax.random.fold_in(jax.random.key(1), 2),
    "fold_in(PRNGKey)": jax.random.fold_in(jax.random.PRNGKey(1), 2),
    "numpy uint32[2]": np.array([0, 1], np.uint32),
}


@pytest.mark.parametrize("f", [L.dropout, R.dropout], ids=["layers", "reference"])
@pytest.mark.parametrize("key", KEYS_THAT_WORK.values(), ids=KEYS_THAT_WORK.keys())
def test_dropout_takes_typed_legacy_and_folded_keys_eagerly_and_traced(f, key):
    x = jnp.ones((4, 5))
    out = f(x, key, rate=0.5, train=True)
    np.testing.assert_array_equal(jax.jit(lambda x, k: f(x, k, rate=0.5, train=True))(x, key), out)


BAD_KEYS = {
    "0": 0,
    "None": None,
    "float": 0.5,
    "int32[2]": jnp.array([0, 1], jnp.int32),
    "uint32 scalar": jnp.uint32(0),
    "uint32[4]": jnp.zeros(4, jnp.uint32),
    "batch of keys": jax.random.split(jax.random.key(0)),
    "batch of legacy keys": jax.random.split(jax.random.PRNGKey(0)),
}


@pytest.mark.parametrize("f", [L.dropout, R.dropout], ids=["layers", "reference"])
@pytest.mark.parametrize("key", BAD_KEYS.values(), ids=BAD_KEYS.keys())
def test_dropout_with_a_key_that_is_not_one_prng_key_raises_naming_key(f, key):
    with pytest.raises(ValueError, match=r"^key must be a single JAX PRNG key"):
        f(jnp.ones((2, 3)), key, rate=0.5, train=True)


def test_dropout_with_key_0_raises_naming_key_under_jit_too():
    with pytest.raises(ValueError, match=r"key must be a single JAX PRNG key .*got 0 \(int\)"):
        L.dropout(jnp.ones(3), 0, rate=0.5, train=True)
    with pytest.raises(ValueError, match=r"key must be .* dtype int\d+ and shape \(\)"):
        jax.jit(lambda x, k: L.dropout(x, k, rate=0.5, train=True))(jnp.ones(3), 0)


@pytest.mark.parametrize("f", [L.dropout, R.dropout], ids=["layers", "reference"])
def test_dropout_does_not_look_at_the_key_when_it_is_the_identity(f):
    x = jnp.ones(3)
    assert f(x, 0, rate=0.5, train=False) is x
    assert f(x, "anything", rate=0.0, train=True) is x
