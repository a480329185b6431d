import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jcnn.layers as L
import jcnn.reference as R
from tests.helpers import assert_vjp_proven, normal


@pytest.mark.parametrize("n,k", [(5, 4), (1, 10), (8, 2)])
@pytest.mark.parametrize("name", ["softmax_loss", "svm_loss"])
def test_loss_vjp_matches_autodiff_and_finite_differences(name, n, k):
    scores = normal(0, n, k) * 2.0
    y = jax.random.randint(jax.random.PRNGKey(1), (n,), 0, k)
    assert_vjp_proven(
        getattr(L, name), getattr(R, name), (scores, y), names=("scores", "y"), argnums=(0,)
    )


def test_softmax_loss_of_tiny_scores_is_log_num_classes():
    scores = 1e-3 * normal(2, 50, 10)
    y = jax.random.randint(jax.random.PRNGKey(3), (50,), 0, 10)
    np.testing.assert_allclose(L.softmax_loss(scores, y), np.log(10), atol=2e-3)


def test_svm_loss_of_tiny_scores_is_num_classes_minus_one():
    scores = 1e-3 * normal(4, 50, 10)
    y = jax.random.randint(jax.random.PRNGKey(5), (50,), 0, 10)
    np.testing.assert_allclose(L.svm_loss(scores, y), 9.0, atol=2e-2)


def test_softmax_loss_is_stable_for_huge_scores():
    scores = jnp.array([[1000.0, 0.0], [0.0, -1000.0]])
    loss = L.softmax_loss(scores, jnp.array([0, 1]))
    assert np.isfinite(float(loss))
    np.testing.assert_allclose(loss, 500.0)


@pytest.mark.parametrize("name", ["softmax_loss", "svm_loss"])
@pytest.mark.parametrize(
    "ss,y,match",
    [
        ((4, 3), jnp.zeros(5, int), "5 labels but scores has 4 rows"),
        ((4, 3), jnp.zeros((4, 1), int), "y must have rank 1"),
        ((4,), jnp.zeros(4, int), "scores must have rank 2"),
        ((4, 3), jnp.zeros(4), "integer"),
    ],
)
def test_loss_bad_labels_raise_value_error(name, ss, y, match):
    with pytest.raises(ValueError, match=match):
        getattr(L, name)(jnp.zeros(ss), y)


@pytest.mark.parametrize("eps", [0.1, 0.5])
def test_label_smoothed_softmax_vjp_matches_autodiff_and_finite_differences(eps):
    scores = normal(6, 6, 5) * 2.0
    y = jax.random.randint(jax.random.PRNGKey(7), (6,), 0, 5)
    f = functools.partial(L.softmax_loss, label_smoothing=eps)
    twin = functools.partial(R.softmax_loss, label_smoothing=eps)
    assert_vjp_proven(f, twin, (scores, y), names=("scores", "y"), argnums=(0,))


def test_label_smoothing_is_cross_entropy_against_the_mixed_target():
    scores = normal(8, 4, 3)
    y = jnp.array([0, 2, 1, 2])
    eps = 0.3
    q = (1 - eps) * np.eye(3)[np.asarray(y)] + eps / 3
    log_p = np.asarray(jax.nn.log_softmax(scores, axis=1))
    want = -np.mean(np.sum(q * log_p, axis=1))
    np.testing.assert_allclose(L.softmax_loss(scores, y, label_smoothing=eps), want, rtol=1e-12)
    np.testing.assert_allclose(R.softmax_loss(scores, y, label_smoothing=eps), want, rtol=1e-12)
    # ε = 0 is the cs231n loss
    assert L.softmax_loss(scores, y, label_smoothing=0.0) == L.softmax_loss(scores, y)


@pytest.mark.parametrize("eps", [-0.1, 1.0, "a", float("nan")])
def test_label_smoothing_out_of_range_raises(eps):
    for f in (L.softmax_loss, R.softmax_loss):
        with pytest.raises(ValueError, match="label_smoothing must be a float in"):
            f(jnp.zeros((2, 3)), jnp.zeros(2, int), label_smoothing=eps)
