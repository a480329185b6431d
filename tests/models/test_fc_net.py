"""FullyConnectedNet: gradients proven with and without batchnorm and dropout; validation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from jcnn.gradcheck import numerical_gradient
from jcnn.models import FullyConnectedNet
from tests.models.util import (
    assert_grads_proven,
    directional_differences,
    float64_batch,
    leaves,
)

SHAPE = (3, 4, 4)


@pytest.mark.parametrize("use_batchnorm, dropout", [(False, 0.0), (True, 0.3)])
def test_grads_equal_reference_and_finite_differences(use_batchnorm, dropout):
    model = FullyConnectedNet(
        (7, 6),
        input_dim=3 * 4 * 4,
        use_batchnorm=use_batchnorm,
        dropout=dropout,
        reg=0.1,
        weight_scale="he",
        dtype=jnp.float64,
    )
    params, state = model.init(jax.random.key(0))
    X, y = float64_batch(SHAPE, 6)  # (N, 3, 4, 4) is flattened to D = 48
    key = jax.random.key(1)
    assert_grads_proven(model, params, state, X, y, key)


def test_names_and_shapes():
    model = FullyConnectedNet([20, 30], input_dim=48, use_batchnorm=True)
    params, state = model.init(jax.random.key(0))
    assert jax.tree_util.tree_map(jnp.shape, params) == {
        "fc1": {"w": (48, 20), "b": (20,), "gamma": (20,), "beta": (20,)},
        "fc2": {"w": (20, 30), "b": (30,), "gamma": (30,), "beta": (30,)},
        "out": {"w": (30, 10), "b": (10,)},
    }
    assert set(state) == {"fc1", "fc2"}
    softmax = FullyConnectedNet((), input_dim=SHAPE)  # no hidden layer: a softmax classifier
    p, s = softmax.init(jax.random.key(0))
    assert set(p) == {"out"} and p["out"]["w"].shape == (48, 10) and s == {}


def test_he_init_scale():
    model = FullyConnectedNet((4000,), input_dim=500, weight_scale="he")
    params, _ = model.init(jax.random.key(0))
    np.testing.assert_allclose(float(jnp.std(params["fc1"]["w"])), np.sqrt(2 / 500), rtol=0.01)


def test_input_checks():
    model = FullyConnectedNet((5,), input_dim=48)
    params, state = model.init(jax.random.key(0))
    model.check_input(np.zeros((2, 3, 4, 4)))
    model.check_input(np.zeros((2, 48)))
    with pytest.raises(ValueError, match="input_dim = 48"):
        model.apply(params, state, np.zeros((2, 3, 4, 5)))
    shaped = FullyConnectedNet((5,), input_dim=SHAPE)
    with pytest.raises(ValueError, match=r"X has shape \(2, 48\)"):
        shaped.check_input(np.zeros((2, 48)))


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(hidden_dims=(5, -1)), "hidden_dims"),
        (dict(hidden_dims=5), "hidden_dims"),
        (dict(hidden_dims=(5,), input_dim=0), "input_dim"),
        (dict(hidden_dims=(5,), dropout=1.5), "dropout"),
        (dict(hidden_dims=(5,), reg=float("nan")), "reg"),
        (dict(hidden_dims=(5,), layers="numpy"), "layers"),
    ],
)
def test_bad_hyper_parameters(kwargs, field):
    with pytest.raises(ValueError, match=field):
        FullyConnectedNet(**kwargs)


def test_directional_differences_are_gradchecks_differences_along_each_direction():
    # The model tests' differences along random directions are jcnn.gradcheck's
    # numerical_gradient, coordinate by coordinate, projected on each direction.
    model = FullyConnectedNet((4,), input_dim=6, use_batchnorm=True, dtype=jnp.float64)
    params, state = model.init(jax.random.key(0))
    X, y = float64_batch((6,), 5)
    flat, unravel = ravel_pytree(params)
    f = jax.jit(lambda v: model.loss(unravel(v), state, X, y)[0])
    every = leaves(unravel(numerical_gradient(f, flat)))
    found = directional_differences(jax.jit(lambda p: f(ravel_pytree(p)[0])), params)
    assert found.keys() == every.keys()
    for name, pairs in found.items():
        assert len(pairs) == 3
        for v, d in pairs:
            assert np.linalg.norm(v) == pytest.approx(1.0)
            # Both are centred differences of step 1e-5: equal to within their O(h²) error
            # (and a ReLU's kink that one step crosses and the other does not).
            assert d == pytest.approx(float(np.sum(np.asarray(every[name]) * v)), rel=1e-5)
