"""AirbenchNet: gradients proven against the autodiff twin and finite differences, the
whitening filters whiten, the PyTorch-style init with Dirac filters, floor pooling, checks."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jcnn.models import AirbenchNet, whitening_filters
from tests.models.util import assert_grads_proven, float64_batch

TINY = dict(input_dim=(3, 16, 16), widths=(3, 4, 5), dtype=jnp.float64, bn_eps=1e-5)


@pytest.mark.parametrize("approximate", [False, True])
def test_grads_proven_against_the_twin_and_finite_differences(approximate):
    model = AirbenchNet(**TINY, gelu_approximate=approximate)
    X, y = float64_batch(model.input_dim, 6)
    params, state = model.init_with_data(jax.random.key(1), X)
    errors = assert_grads_proven(model, params, state, X, y, None)
    # every leaf: whitening w and b, six convs, six batchnorm shifts, the head
    assert len(errors) == 2 + 6 + 6 + 1


def test_shapes_floor_pooling_and_the_state():
    model = AirbenchNet()
    assert model.block_sizes == ((31, 31), (15, 15), (7, 7), (3, 3))
    params, state = jax.jit(model.init)(jax.random.key(0))  # jitted: one program, not 150
    shapes = jax.tree_util.tree_map(jnp.shape, params)
    assert shapes["whiten"] == {"w": (24, 3, 2, 2), "b": (24,)}
    assert shapes["conv1_1"] == {"w": (64, 24, 3, 3)}
    assert shapes["conv2_1"] == {"w": (256, 64, 3, 3)}
    assert shapes["conv3_2"] == {"w": (256, 256, 3, 3)}
    assert shapes["norm2_2"] == {"beta": (256,)}
    assert shapes["out"] == {"w": (256, 10)}
    assert set(state) == set(model.batchnorm_layers()) and len(state) == 6
    X = np.zeros((2, 3, 32, 32), np.float32)
    scores, new_state = jax.jit(model.apply, static_argnames="train")(params, state, X, train=True)
    assert scores.shape == (2, 10)
    assert jax.tree_util.tree_structure(new_state) == jax.tree_util.tree_structure(state)


@pytest.mark.parametrize("widths", [(8,), (8, 16), (8, 16, 16, 32)])
def test_one_block_per_width(widths):
    """Shallower and deeper nets than airbench94's three blocks: one block per entry of
    ``widths``, with the same structure, and their gradients proven."""
    model = AirbenchNet(input_dim=(3, 32, 32), widths=widths)
    assert len(model.block_sizes) == len(widths) + 1
    params, state = model.init(jax.random.key(0))
    assert set(state) == set(model.batchnorm_layers()) and len(state) == 2 * len(widths)
    assert {f"conv{len(widths)}_2", "out"} <= set(params)
    assert params["out"]["w"].shape == (widths[-1], 10)
    if len(widths) == 2:
        tiny = AirbenchNet(**{**TINY, "widths": (3, 4)})
        X, y = float64_batch(tiny.input_dim, 6)
        params, state = tiny.init_with_data(jax.random.key(1), X)
        errors = assert_grads_proven(tiny, params, state, X, y, None)
        assert len(errors) == 2 + 4 + 4 + 1


def test_init_passes_the_first_channels_through_and_bounds_the_rest_as_pytorch():
    params, _ = AirbenchNet(widths=(16, 32, 32)).init(jax.random.key(3))
    w = np.asarray(params["conv1_1"]["w"])  # (16, 24, 3, 3): 16 Dirac filters of 24 channels
    expect = np.zeros((16, 24, 3, 3), np.float32)
    expect[np.arange(16), np.arange(16), 1, 1] = 1.0
    np.testing.assert_array_equal(w, expect)
    w = np.asarray(params["conv2_1"]["w"])  # (32, 16, 3, 3): first 16 Dirac, then uniform
    assert np.all(w[:16].sum(axis=(1, 2, 3)) == 1.0)
    bound = 1 / np.sqrt(16 * 9)
    assert np.abs(w[16:]).max() <= bound and np.abs(w[16:]).max() > 0.9 * bound
    assert np.all(np.asarray(params["whiten"]["b"]) == 0)


def test_whitening_filters_whiten_the_patches():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 3, 9, 9)) * 30.0 + 5.0
    X[:, 1] += 0.8 * X[:, 0]  # correlated channels
    X[:, :, :, 1:] += 0.5 * X[:, :, :, :-1]  # and neighbouring pixels
    w = whitening_filters(X, 2, eps=1e-9)
    assert w.shape == (24, 3, 2, 2) and w.dtype == np.float32
    np.testing.assert_allclose(w[12:], -w[:12])
    taps = [X[:, :, i : i + 8, j : j + 8] for i in range(2) for j in range(2)]
    patches = np.stack(taps, axis=2).transpose(0, 3, 4, 1, 2).reshape(-1, 12)
    out = patches @ w[:12].reshape(12, 12).T.astype(np.float64)
    np.testing.assert_allclose(out.T @ out / len(out), np.eye(12), atol=1e-4)


def test_whitening_filters_do_not_depend_on_the_pixel_scale():
    X = np.random.default_rng(1).normal(size=(50, 3, 8, 8))
    np.testing.assert_allclose(
        whitening_filters(X * 255.0, 2) * 255.0, whitening_filters(X, 2), rtol=1e-4, atol=1e-6
    )


@pytest.mark.parametrize("gelu_after_add", [False, True])
def test_three_convs_per_block_add_the_first_to_the_last(gelu_after_add):
    """airbench96's block: three convolutions, a residual connection from the first's
    activation over the other two (the last GELU before the add, or after it); its gradients
    proven, and the residual really there (the output changes when the skip is dropped by
    zeroing the first conv's share)."""
    model = AirbenchNet(
        **{**TINY, "widths": (3, 4)}, convs_per_block=3, gelu_after_add=gelu_after_add
    )
    assert model.batchnorm_layers() == tuple(f"norm{s}_{a}" for s in (1, 2) for a in (1, 2, 3))
    X, y = float64_batch(model.input_dim, 6)
    params, state = model.init_with_data(jax.random.key(1), X)
    assert params["conv2_3"]["w"].shape == (4, 4, 3, 3)
    # With the GELU after the add the loss curves sharply in conv2_1 (its third derivative
    # makes differences of step 1e-5 off by 1e-3; they converge to the gradient below that).
    errors = assert_grads_proven(model, params, state, X, y, None, step=1e-6)
    assert len(errors) == 2 + 6 + 6 + 1
    plain = AirbenchNet(**{**TINY, "widths": (3, 4)})
    plain_params = {k: v for k, v in params.items() if not k.endswith("_3")}
    plain_state = {k: v for k, v in state.items() if not k.endswith("_3")}

    def scores(net, p, s):  # jitted: one program each, not one per operation
        return jax.jit(net.apply, static_argnames="train")(p, s, X, train=True)[0]

    with_skip = scores(model, params, state)
    assert not np.allclose(with_skip, scores(plain, plain_params, plain_state))
    other = dataclasses.replace(model, gelu_after_add=not gelu_after_add)
    assert not np.allclose(with_skip, scores(other, params, state))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(widths=()), "widths must not be empty"),
        (dict(widths=(8, 8, 8, 8), input_dim=(3, 16, 16)), "too small: block 4"),
        (dict(head_scale=0.0), "head_scale"),
        (dict(input_dim=(3, 8, 8)), "too small"),
        (dict(bn_momentum=1.5), "bn_momentum"),
        (dict(gelu_approximate="tanh"), "gelu_approximate"),
        (dict(gelu_after_add=1), "gelu_after_add must be a bool"),
        (dict(layers="torch"), "layers"),
        (dict(convs_per_block=1), "convs_per_block must be an int >= 2"),
        (dict(convs_per_block=2.5), "convs_per_block"),
    ],
)
def test_bad_hyper_parameters_raise_value_error_naming_them(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AirbenchNet(**kwargs)


def test_whitening_filters_refuse_bad_input():
    with pytest.raises(ValueError, match="X must be"):
        whitening_filters(np.zeros((0, 3, 8, 8)), 2)
    with pytest.raises(ValueError, match="kernel_size"):
        whitening_filters(np.zeros((2, 3, 8, 8)), 9)
    with pytest.raises(ValueError, match="X has shape"):
        AirbenchNet().init_with_data(jax.random.key(0), np.zeros((2, 3, 16, 16)))
