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
    # numeric_tol: the elementwise relative error of centred differences reaches a few 1e-7
    # on entries of the gradient near zero.
    assert_vjp_proven(
        getattr(L, name),
        getattr(R, name),
        (scores, y),
        names=("scores", "y"),
        argnums=(0,),
        numeric_tol=1e-6,
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
        with pytest.raises(ValueError, match=r"^label_smoothing must be (a Python number )?in"):
            f(jnp.zeros((2, 3)), jnp.zeros(2, int), label_smoothing=eps)


LOSSES = [L.softmax_loss, L.svm_loss, R.softmax_loss, R.svm_loss]
LOSS_IDS = ["softmax_loss", "svm_loss", "reference.softmax_loss", "reference.svm_loss"]


@pytest.mark.parametrize("f", LOSSES, ids=LOSS_IDS)
@pytest.mark.parametrize("bad", [10, -1, 99])
@pytest.mark.parametrize("as_array", [jnp.asarray, np.asarray])
def test_concrete_out_of_range_label_raises_naming_y_the_range_and_first_bad_index(
    f, bad, as_array
):
    y = as_array([3, 9, bad, 0, bad])
    with pytest.raises(ValueError, match=rf"y holds labels outside \[0, 10\).* y\[2\] = {bad}"):
        f(jnp.zeros((5, 10)), y)


@pytest.mark.parametrize("f", LOSSES, ids=LOSS_IDS)
def test_concrete_bad_label_raises_inside_grad_too(f):
    with pytest.raises(ValueError, match=r"outside \[0, 3\)"):
        jax.grad(lambda s: f(s, jnp.array([0, 3])))(jnp.zeros((2, 3)))


@pytest.mark.parametrize("f", LOSSES, ids=LOSS_IDS)
@pytest.mark.parametrize(
    "ss,y,match",
    [
        ((0, 10), jnp.zeros(0, int), "scores is an empty batch"),
        ((3, 0), jnp.zeros(3, int), "scores has no classes"),
        ((4, 3), jnp.zeros(5, int), "5 labels but scores has 4 rows"),
        ((4, 3), jnp.zeros(4, jnp.float32), "y must hold integer class labels"),
        ((4, 3), jnp.zeros(4, bool), "y must hold integer class labels"),
    ],
)
def test_empty_batch_wrong_length_and_non_integer_labels_raise_even_under_jit(f, ss, y, match):
    with pytest.raises(ValueError, match=match):
        f(jnp.zeros(ss), y)
    with pytest.raises(ValueError, match=match):
        jax.jit(f)(jnp.zeros(ss), y)


@pytest.mark.parametrize(
    "name,kw", [("softmax_loss", {}), ("softmax_loss", {"label_smoothing": 0.2}), ("svm_loss", {})]
)
@pytest.mark.parametrize("bad", [10, -1, 99])
def test_traced_out_of_range_label_makes_the_loss_and_its_gradient_row_nan(name, kw, bad):
    """What the docstrings promise under jit: no error, a NaN loss, NaN in the bad example's
    gradient row only, the other rows as with a valid label there; the layer and its twin
    alike."""
    scores = normal(11, 4, 10)
    y = jnp.array([1, bad, 7, 0])
    good = jnp.array([1, 0, 7, 0])
    for f in (getattr(L, name), getattr(R, name)):
        loss, g = jax.jit(jax.value_and_grad(lambda s, y, f=f: f(s, y, **kw)))(scores, y)
        _, g_good = jax.value_and_grad(lambda s, f=f: f(s, good, **kw))(scores)
        assert np.isnan(float(loss))
        assert np.isnan(np.asarray(g[1])).all()
        np.testing.assert_allclose(np.asarray(g)[[0, 2, 3]], np.asarray(g_good)[[0, 2, 3]])
