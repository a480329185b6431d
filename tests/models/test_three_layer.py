"""ThreeLayerConvNet: gradients proven against autodiff and finite differences, the
cs231n sanity checks, overfitting a small set, and hyper-parameter validation."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jcnn.models import ThreeLayerConvNet, l2_penalty
from jcnn.solver import Solver
from tests.models.util import (
    assert_grads_proven,
    float64_batch,
    synthetic_data,
)

TINY = dict(
    input_dim=(3, 8, 8),
    num_filters=3,
    filter_size=3,
    hidden_dim=7,
    weight_scale="he",
    reg=0.1,
    dtype=jnp.float64,
)


def test_params_names_and_shapes():
    model = ThreeLayerConvNet(input_dim=(3, 16, 16), num_filters=4, filter_size=5, hidden_dim=9)
    params, state = model.init(jax.random.key(0))
    shapes = jax.tree_util.tree_map(jnp.shape, params)
    assert shapes == {
        "conv1": {"w": (4, 3, 5, 5), "b": (4,)},
        "fc1": {"w": (4 * 8 * 8, 9), "b": (9,)},
        "out": {"w": (9, 10), "b": (10,)},
    }
    assert state == {}
    assert params["conv1"]["w"].dtype == jnp.float32
    scores, new_state = jax.jit(model.apply)(params, state, np.zeros((2, 3, 16, 16), np.float32))
    assert scores.shape == (2, 10) and new_state == {}


def test_grads_proven():
    # jcnn.layers == jcnn.reference (< 1e-8) and == finite differences (< 1e-5), every leaf.
    model = ThreeLayerConvNet(**TINY)
    params, state = model.init(jax.random.key(1))
    X, y = float64_batch(model.input_dim, 5)
    errors = assert_grads_proven(model, params, state, X, y, jax.random.key(2))
    assert len(errors) == 6


def test_initial_loss_sanity():
    # cs231n: tiny weights give ~uniform scores, loss log(10); reg adds 0.5·reg·ΣW².
    model = ThreeLayerConvNet(input_dim=(3, 16, 16), num_filters=8, hidden_dim=20)
    reg_model = dataclasses.replace(model, reg=0.5)
    params, state = model.init(jax.random.key(0))
    X, y = float64_batch(model.input_dim, 20)

    @jax.jit
    def losses(params):
        return model.loss(params, state, X, y)[0], reg_model.loss(params, state, X, y)[0]

    loss, loss_reg = map(float, losses(params))
    assert abs(loss - math.log(10)) < 0.05
    sum_sq = sum(float(jnp.sum(params[k]["w"] ** 2)) for k in ("conv1", "fc1", "out"))
    assert loss_reg > loss
    np.testing.assert_allclose(loss_reg - loss, 0.25 * sum_sq, rtol=1e-4)
    np.testing.assert_allclose(float(l2_penalty(params, 0.5)), 0.25 * sum_sq, rtol=1e-5)


def test_float32_params_compute_in_float32():
    # float64 inputs are cast to the parameters' dtype (float64 is covered above).
    model = ThreeLayerConvNet(**{**TINY, "dtype": jnp.float32})
    params, state = model.init(jax.random.key(0))
    X, y = float64_batch(model.input_dim, 3)
    grads = jax.jit(jax.grad(lambda p: model.loss(p, state, X, y)[0]))(params)
    assert {g.dtype for g in jax.tree_util.tree_leaves(grads)} == {jnp.dtype(jnp.float32)}


def test_overfits_small_data():
    data = synthetic_data(100, 50)
    model = ThreeLayerConvNet(input_dim=(3, 16, 16), weight_scale=1e-2)
    solver = Solver(
        model,
        data,
        update_rule="adam",
        optim_config={"learning_rate": 2e-3},
        batch_size=50,
        num_epochs=15,
        verbose=False,
    )
    solver.train()
    assert max(solver.train_acc_history) >= 0.9, solver.train_acc_history


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(num_filters=0), "num_filters"),
        (dict(filter_size=-1), "filter_size"),
        (dict(hidden_dim=2.5), "hidden_dim"),
        (dict(input_dim=(3, 16)), "input_dim"),
        (dict(input_dim=(3, 1, 8), filter_size=3), "input_dim"),
        (dict(weight_scale="xavier"), "weight_scale"),
        (dict(weight_scale=-1.0), "weight_scale"),
        (dict(reg=-0.1), "reg"),
        (dict(layers="torch"), "layers"),
        (dict(conv_impl="fft"), "conv_impl"),
        (dict(pool_impl="slow"), "pool_impl"),
        (dict(dtype=jnp.int32), "dtype"),
    ],
)
def test_bad_hyper_parameters(kwargs, field):
    with pytest.raises(ValueError, match=field):
        ThreeLayerConvNet(**kwargs)


def test_apply_checks_input_shape():
    model = ThreeLayerConvNet(input_dim=(3, 8, 8), num_filters=2, filter_size=3, hidden_dim=4)
    params, state = model.init(jax.random.key(0))
    with pytest.raises(ValueError, match=r"X has shape \(2, 3, 9, 8\).*input_dim"):
        model.apply(params, state, np.zeros((2, 3, 9, 8)))
    with pytest.raises(ValueError, match="X has shape"):
        model.apply(params, state, np.zeros((3, 8, 8)))


def test_hashable_and_normalised():
    a = ThreeLayerConvNet(input_dim=[3, 8, 8], filter_size=3, dtype="float32")
    b = ThreeLayerConvNet(input_dim=(3, 8, 8), filter_size=3, dtype=np.float32)
    assert a == b and hash(a) == hash(b)
    assert a.input_dim == (3, 8, 8)
