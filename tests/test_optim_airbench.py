"""The airbench pieces of jcnn.optim: the schedule, PyTorch-style Nesterov SGD, freezing,
parameter groups and airbench_sgd's rates."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jcnn.models import AirbenchNet
from jcnn.muon import MuonState
from jcnn.optim import (
    airbench_muon,
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


def test_airbench_muon_groups_rates_and_schedules():
    params, _ = AirbenchNet(widths=(8, 8, 8), input_dim=(3, 16, 16)).init(jax.random.key(0))
    tx, schedule = airbench_muon(
        params, num_iterations=20, iterations_per_epoch=4, batch_size=2000, whiten_bias_epochs=1
    )
    np.testing.assert_allclose([float(schedule(t)) for t in (0, 10, 20)], [0.24, 0.12, 0.0])
    lr = 6.5 * 2000 / (1024 * (1 + 1 / 0.15))
    state = tx.init(params)
    assert isinstance(state.inner_states["filters"].inner_state, MuonState)
    grads = jax.tree_util.tree_map(jnp.ones_like, params)
    zero = jax.tree_util.tree_map(jnp.zeros_like, params)
    upd, state = tx.update(grads, state, zero)  # zero params: no decay, no renormalisation
    first = lr * (1 + 0.85)  # no warm-up; Nesterov's first step: g + μ·g
    assert np.all(np.asarray(upd["whiten"]["w"]) == 0)
    np.testing.assert_allclose(upd["out"]["w"], -first, rtol=1e-5)
    np.testing.assert_allclose(upd["norm2_1"]["beta"], -64 * first, rtol=1e-5)
    np.testing.assert_allclose(upd["whiten"]["b"], -64 * first, rtol=1e-5)
    # the filters' step is 0.24 times a rank-one orthogonal direction: norm 0.24·s, s ≈ 1
    w = np.asarray(upd["conv2_2"]["w"]).reshape(8, -1)
    s = np.linalg.svd(w, compute_uv=False)
    assert 0.24 * 0.5 < s[0] < 0.24 * 1.5 and s[1] < 1e-4 * s[0]
    updates = [upd]
    for _ in range(4):  # the whitening bias falls to 0 over its epoch, then stays frozen
        upd, state = tx.update(grads, state, zero)
        updates.append(upd)
    assert abs(float(updates[3]["whiten"]["b"][0])) < abs(float(updates[1]["whiten"]["b"][0]))
    assert np.all(np.asarray(updates[4]["whiten"]["b"]) == 0)
    assert np.all(np.asarray(updates[4]["out"]["w"]) < 0)
    with pytest.raises(ValueError, match="muon_momentum"):
        airbench_muon(
            params, num_iterations=2, iterations_per_epoch=1, batch_size=8, muon_momentum=1.0
        )
