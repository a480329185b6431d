"""The airbench pieces of jcnn.optim: the schedule, PyTorch-style Nesterov SGD, freezing,
parameter groups and airbench_sgd's rates."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jcnn.models import AirbenchNet
from jcnn.optim import (
    airbench_sgd,
    freeze_after,
    group_labels,
    sgd_nesterov,
    warmup_linear_decay,
)


def test_warmup_linear_decay_ramps_up_then_down_linearly():
    f = warmup_linear_decay(200, warmup_fraction=0.25, start=0.2, end=0.07)
    got = [float(f(t)) for t in (0, 25, 50, 125, 200)]
    np.testing.assert_allclose(got, [0.2, 0.6, 1.0, 1.0 + (0.07 - 1.0) * 0.5, 0.07], rtol=1e-6)
    with pytest.raises(ValueError, match="num_iterations"):
        warmup_linear_decay(0)
    with pytest.raises(ValueError, match="warmup_fraction"):
        warmup_linear_decay(10, warmup_fraction=1.0)


def test_sgd_nesterov_is_pytorchs_update_rule():
    """b ← μb + (g + λp); p ← p − lr·(g + λp + μb), written out by hand for three steps."""
    lr, mu, wd = 0.1, 0.85, 0.01
    tx = sgd_nesterov(lr, mu, wd)
    p = jnp.array([1.0, -2.0, 0.5])
    state = tx.init(p)
    p_ref, buf = np.array(p, np.float64), np.zeros(3)
    for g in (np.array([0.3, -0.1, 0.2]), np.array([-0.5, 0.4, 0.0]), np.array([0.1, 0.1, 0.1])):
        upd, state = tx.update(jnp.asarray(g, jnp.float32), state, p)
        p = optax.apply_updates(p, upd)
        d = g + wd * p_ref
        buf = mu * buf + d
        p_ref = p_ref - lr * (d + mu * buf)
    np.testing.assert_allclose(p, p_ref, rtol=1e-6)


def test_freeze_after_passes_updates_then_zeros_and_keeps_its_state():
    tx = freeze_after(optax.sgd(1.0, momentum=0.5), 2)
    p = jnp.zeros(2)
    state = tx.init(p)
    outs = []
    for _ in range(4):
        upd, new = tx.update(jnp.ones(2), state, p)
        outs.append(np.asarray(upd))
        frozen_inner = state[1]
        state = new
    np.testing.assert_allclose(outs[0], [-1, -1])
    np.testing.assert_allclose(outs[1], [-1.5, -1.5])
    assert np.all(outs[2] == 0) and np.all(outs[3] == 0)
    chex_equal = jax.tree_util.tree_map(lambda a, b: bool(jnp.all(a == b)), state[1], frozen_inner)
    assert all(jax.tree_util.tree_leaves(chex_equal))


def test_group_labels_take_the_first_matching_group():
    params = {"whiten": {"w": 1, "b": 2}, "norm1_1": {"beta": 3}, "conv1_1": {"w": 4}}
    labels = group_labels(
        params, {"a": lambda p: p == "whiten/w", "b": lambda p: p.startswith("norm")}, "rest"
    )
    assert labels == {
        "whiten": {"w": "a", "b": "rest"},
        "norm1_1": {"beta": "b"},
        "conv1_1": {"w": "rest"},
    }


def test_airbench_sgd_groups_rates_and_frozen_filters():
    params, _ = AirbenchNet(widths=(8, 8, 8), input_dim=(3, 16, 16)).init(jax.random.key(0))
    tx, schedule = airbench_sgd(
        params, num_iterations=100, iterations_per_epoch=10, batch_size=512, whiten_bias_epochs=1
    )
    lr = 11.5 * 512 / (1024 * (1 + 1 / 0.15))
    np.testing.assert_allclose(float(schedule(23)), lr, rtol=1e-6)  # the peak, after warm-up
    state = tx.init(params)
    grads = jax.tree_util.tree_map(jnp.ones_like, params)
    zero = jax.tree_util.tree_map(jnp.zeros_like, params)
    upd, state = tx.update(grads, state, zero)  # zero params: no weight decay term
    first = 0.2 * lr * (1 + 0.85)  # Nesterov's first step: g + μ·g
    assert np.all(np.asarray(upd["whiten"]["w"]) == 0)
    np.testing.assert_allclose(upd["conv1_1"]["w"], -first, rtol=1e-5)
    np.testing.assert_allclose(upd["whiten"]["b"], -first, rtol=1e-5)
    np.testing.assert_allclose(upd["norm2_1"]["beta"], -64 * first, rtol=1e-5)
    for _ in range(10):  # one epoch of whitening-bias training, then frozen
        upd, state = tx.update(grads, state, zero)
    assert np.all(np.asarray(upd["whiten"]["b"]) == 0)
    assert np.all(np.asarray(upd["conv1_1"]["w"]) < 0)
