"""jcnn.muon: the Newton–Schulz orthogonalisation against the SVD, Muon's update rule
against a NumPy transcription of its definition, and its refusals."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jcnn.muon import muon, orthogonalize

A, B, C = 3.4445, -4.7750, 2.0315


def _orthogonalize_by_svd(g: np.ndarray, steps: int) -> np.ndarray:
    """The iteration acts on the singular values alone: σ ← aσ + bσ³ + cσ⁵ from σ/‖g‖_F."""
    u, s, vt = np.linalg.svd(np.asarray(g, np.float64), full_matrices=False)
    s = s / np.linalg.norm(s)
    for _ in range(steps):
        s = A * s + B * s**3 + C * s**5
    return (u * s) @ vt


@pytest.mark.parametrize("shape", [(8, 20), (20, 8), (6, 6)])
@pytest.mark.parametrize("steps", [1, 3, 5])
def test_orthogonalize_maps_the_singular_values_and_keeps_the_vectors(shape, steps):
    g = np.random.default_rng(0).normal(size=shape)
    got = orthogonalize(jnp.asarray(g, jnp.float32), steps=steps)
    np.testing.assert_allclose(got, _orthogonalize_by_svd(g, steps), atol=2e-5)


def test_five_iterations_bring_every_singular_value_near_one():
    g = np.random.default_rng(1).normal(size=(64, 576))
    s = np.linalg.svd(np.asarray(orthogonalize(jnp.asarray(g, jnp.float32), steps=5)))[1]
    assert 0.6 < s.min() and s.max() < 1.25  # the quintic's band, not exactly 1


def test_orthogonalize_keeps_zero_and_refuses_other_ranks():
    assert not np.any(np.asarray(orthogonalize(jnp.zeros((3, 4)))))
    with pytest.raises(ValueError, match="2-D"):
        orthogonalize(jnp.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match="steps"):
        orthogonalize(jnp.zeros((2, 3)), steps=0)


def test_muon_is_its_definition_step_by_step():
    """b ← μb + g; u ← g + μb; W ← W·√F/‖W‖; W ← W − lr(t)·NS(u), with a schedule."""
    rng = np.random.default_rng(2)
    w = rng.normal(size=(4, 3, 3, 3)).astype(np.float32)
    mu, steps = 0.6, 3
    schedule = lambda t: 0.2 * (1.0 - t / 10.0)  # noqa: E731
    tx = muon(schedule, mu, steps=steps)
    params = {"conv": {"w": jnp.asarray(w)}}
    state = tx.init(params)
    w_ref, buf = w.astype(np.float64), np.zeros_like(w, np.float64)
    for t in range(3):
        g = rng.normal(size=w.shape)
        grads = {"conv": {"w": jnp.asarray(g, jnp.float32)}}
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        buf = mu * buf + g
        u = (g + mu * buf).reshape(4, -1)
        w_ref = w_ref * 2.0 / np.linalg.norm(w_ref)
        w_ref = w_ref - schedule(t) * _orthogonalize_by_svd(u, steps).reshape(w.shape)
    np.testing.assert_allclose(params["conv"]["w"], w_ref, atol=1e-5)
    assert int(state.iteration) == 3


def test_muon_steps_do_not_depend_on_the_losss_scale():
    rng = np.random.default_rng(3)
    params = {"w": jnp.asarray(rng.normal(size=(5, 7)), jnp.float32)}
    g = {"w": jnp.asarray(rng.normal(size=(5, 7)), jnp.float32)}
    tx = muon(0.1)
    small, _ = tx.update(g, tx.init(params), params)
    large, _ = tx.update(jax.tree_util.tree_map(lambda x: 2000.0 * x, g), tx.init(params), params)
    np.testing.assert_allclose(small["w"], large["w"], atol=1e-6)


def test_muon_without_normalisation_only_steps():
    params = {"w": jnp.full((2, 2), 3.0)}
    g = {"w": jnp.eye(2)}
    tx = muon(0.5, 0.0, normalize_weights=False)
    upd, _ = tx.update(g, tx.init(params), params)
    s = _orthogonalize_by_svd(np.eye(2), 3)
    np.testing.assert_allclose(upd["w"], -0.5 * s, atol=1e-6)


def test_muon_refuses_vectors_missing_params_and_bad_momentum():
    tx = muon(0.1)
    with pytest.raises(ValueError, match=r"\['b'\] has shape \(3,\)"):
        tx.init({"w": jnp.zeros((2, 3)), "b": jnp.zeros(3)})
    params = {"w": jnp.ones((2, 3))}
    with pytest.raises(ValueError, match="needs params"):
        tx.update(params, tx.init(params))
    with pytest.raises(ValueError, match="momentum"):
        muon(0.1, 1.0)
    with pytest.raises(ValueError, match="steps"):
        muon(0.1, steps=0)


def test_muon_compiles_and_runs_inside_multi_transform():
    params = {"conv": {"w": jnp.ones((4, 2, 3, 3))}, "norm": {"beta": jnp.zeros(4)}}
    labels = {"conv": {"w": "muon"}, "norm": {"beta": "sgd"}}
    tx = optax.multi_transform({"muon": muon(0.1), "sgd": optax.sgd(0.1)}, labels)
    grads = jax.tree_util.tree_map(jnp.ones_like, params)
    upd, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    np.testing.assert_allclose(upd["norm"]["beta"], -0.1)
    assert np.all(np.isfinite(np.asarray(upd["conv"]["w"])))
