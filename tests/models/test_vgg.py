"""VGGNet: gradients proven (batchnorm, dropout, several stages), state handling,
overfitting a small set, and hyper-parameter validation."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jcnn.models import VGGNet
from jcnn.solver import Solver
from tests.models.util import (
    assert_grads_proven,
    float64_batch,
    synthetic_data,
)

TINY = dict(
    input_dim=(3, 8, 8),
    num_filters=(3, 4),
    blocks=(1, 1),
    hidden_dims=(6, 5),
    weight_scale="he",
    reg=0.1,
    dropout=0.3,
    dtype=jnp.float64,
)


def test_names_shapes_and_state():
    model = VGGNet(
        input_dim=(3, 16, 16), num_filters=(4, 8), blocks=(2, 1), hidden_dims=(16,), dropout=0.2
    )
    params, state = model.init(jax.random.key(0))
    shapes = jax.tree_util.tree_map(jnp.shape, params)
    bn = lambda d: {"b": (d,), "gamma": (d,), "beta": (d,)}  # noqa: E731
    assert shapes == {
        "conv1_1": {"w": (4, 3, 3, 3), **bn(4)},
        "conv1_2": {"w": (4, 4, 3, 3), **bn(4)},
        "conv2_1": {"w": (8, 4, 3, 3), **bn(8)},
        "fc1": {"w": (8 * 4 * 4, 16), **bn(16)},
        "out": {"w": (16, 10), "b": (10,)},
    }
    assert set(state) == {"conv1_1", "conv1_2", "conv2_1", "fc1"}
    assert set(state["fc1"]) == {"running_mean", "running_var"}

    X = np.random.default_rng(0).normal(size=(4, 3, 16, 16)).astype(np.float32)
    y = np.arange(4)
    apply = jax.jit(model.apply, static_argnames="train")
    scores, same = apply(params, state, X)
    assert scores.shape == (4, 10)
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(jnp.array_equal, same, state))
    _, new_state = jax.jit(model.loss)(params, state, X, y, key=jax.random.key(1))
    moved = jax.tree_util.tree_map(lambda a, b: not np.array_equal(a, b), new_state, state)
    assert all(jax.tree_util.tree_leaves(moved))  # every running statistic was updated
    with pytest.raises(ValueError, match="key"):
        model.loss(params, state, X, y)  # dropout > 0 needs a key


def test_grads_proven():
    # jcnn.layers == jcnn.reference (< 1e-8) and == finite differences (< 1e-5), every leaf:
    # two stages, spatial batchnorm, two hidden layers with batchnorm and dropout.
    model = VGGNet(**TINY)
    params, state = model.init(jax.random.key(1))
    X, y = float64_batch(model.input_dim, 6)
    errors = assert_grads_proven(model, params, state, X, y, jax.random.key(2))
    assert len(errors) == 18 - 4  # every leaf but the 4 biases that batchnorm cancels


def test_grads_proven_with_label_smoothing_and_the_loss_is_the_mixed_targets():
    model = VGGNet(**TINY, use_batchnorm=False, label_smoothing=0.2)
    params, state = model.init(jax.random.key(5))
    X, y = float64_batch(model.input_dim, 4, seed=2)
    errors = assert_grads_proven(model, params, state, X, y, jax.random.key(6), numeric=False)
    assert len(errors) == 10
    plain = dataclasses.replace(model, label_smoothing=0.0)
    key = jax.random.key(7)
    scores, _ = model.apply(params, state, X, train=True, key=key)
    log_p = np.asarray(jax.nn.log_softmax(scores, axis=1))
    q = 0.8 * np.eye(10)[np.asarray(y)] + 0.2 / 10
    reg = 0.5 * 0.1 * sum(float(jnp.sum(p["w"] ** 2)) for p in params.values())
    want = -np.mean(np.sum(q * log_p, axis=1)) + reg
    np.testing.assert_allclose(model.loss(params, state, X, y, key=key)[0], want, rtol=1e-12)
    assert (
        model.loss(params, state, X, y, key=key)[0] != plain.loss(params, state, X, y, key=key)[0]
    )


def test_grads_equal_reference_without_batchnorm():
    model = VGGNet(**TINY, use_batchnorm=False, conv_impl="im2col", pool_impl="naive")
    params, state = model.init(jax.random.key(3))
    assert state == {}
    X, y = float64_batch(model.input_dim, 4, seed=1)
    errors = assert_grads_proven(model, params, state, X, y, jax.random.key(4), numeric=False)
    assert len(errors) == 10


def test_overfits_small_data():
    data = synthetic_data(100, 50)
    model = VGGNet(
        input_dim=(3, 16, 16),
        num_filters=(8, 16),
        blocks=(1, 1),
        hidden_dims=(32,),
        dropout=0.1,
        reg=1e-3,
    )
    solver = Solver(
        model,
        data,
        update_rule="adam",
        optim_config={"learning_rate": 5e-3},
        batch_size=50,
        num_epochs=15,
        verbose=False,
    )
    solver.train()
    assert max(solver.train_acc_history) >= 0.9, solver.train_acc_history


def test_same_padding_any_odd_filter_and_even_filters_shrink():
    m5 = VGGNet(input_dim=(3, 16, 16), num_filters=(2, 2), blocks=(2, 1), filter_size=5)
    assert m5.stage_shapes == ((2, 8, 8), (2, 4, 4))
    m4 = VGGNet(input_dim=(3, 16, 16), num_filters=(2,), blocks=(2,), filter_size=4)
    assert m4.stage_shapes == ((2, 7, 7),)  # (4-1)//2 = 1 pad: each conv loses a row


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(num_filters=()), "num_filters"),
        (dict(num_filters=(4, 8), blocks=(1,)), "blocks and num_filters"),
        (dict(num_filters=(4, 0), blocks=(1, 1)), r"num_filters\[1\]"),
        (dict(input_dim=(3, 8, 8), num_filters=(2,) * 4, blocks=(1,) * 4), "too small"),
        (dict(dropout=1.0), "dropout"),
        (dict(dropout=-0.1), "dropout"),
        (dict(hidden_dims=(8, 0)), "hidden_dims"),
        (dict(layers="autodiff"), "layers"),
        (dict(use_batchnorm=1), "use_batchnorm"),
        (dict(weight_scale=0), "weight_scale"),
        (dict(num_classes=0), "num_classes"),
        (dict(bn_momentum=2.0), "bn_momentum"),
        (dict(label_smoothing=1.0), "label_smoothing"),
        (dict(label_smoothing=-0.5), "label_smoothing"),
    ],
)
def test_bad_hyper_parameters(kwargs, field):
    with pytest.raises(ValueError, match=field):
        VGGNet(**kwargs)


def test_layers_switch_and_hashable():
    model = VGGNet(**TINY)
    twin = dataclasses.replace(model, layers="reference")
    import jcnn.layers
    import jcnn.reference

    assert model.L is jcnn.layers and twin.L is jcnn.reference
    assert hash(model) != hash(twin) and model != twin
    assert {model: 1}[VGGNet(**{**TINY, "num_filters": [3, 4], "blocks": [1, 1]})] == 1
