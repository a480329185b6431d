"""jcnn.prediction: the eval step's scores, and test-time augmentation only where unsure."""

import jax
import numpy as np
import pytest

from jcnn.models import ThreeLayerConvNet
from jcnn.prediction import make_eval_step, predict, predict_where_unsure
from jcnn.solver import Solver
from tests.models.util import synthetic_data

SHAPE = (3, 8, 8)
MODEL = ThreeLayerConvNet(  # He-scaled weights: scores far from uniform, confidences spread
    input_dim=SHAPE, num_filters=4, filter_size=3, hidden_dim=8, weight_scale="he"
)


def _problem():
    variables = MODEL.init(jax.random.key(1))
    X = np.random.default_rng(0).normal(size=(57, *SHAPE)).astype(np.float32)
    return variables, X


def test_the_score_step_gives_the_scores_whose_argmax_is_the_label():
    variables, X = _problem()
    scores = predict(make_eval_step(MODEL, scores=True), variables, X, batch_size=20)
    want, _ = MODEL.apply(*variables, X, train=False)
    np.testing.assert_allclose(scores, np.asarray(want), rtol=1e-5, atol=1e-6)
    labels = predict(make_eval_step(MODEL), variables, X, batch_size=20)
    np.testing.assert_array_equal(labels, np.argmax(scores, axis=1))


def test_augmentation_goes_only_to_the_images_less_sure_than_the_confidence():
    variables, X = _problem()
    plain_scores = make_eval_step(MODEL, scores=True)
    flipped = make_eval_step(MODEL, test_time_flip=True, test_time_translate=1)
    all_plain = predict(make_eval_step(MODEL), variables, X, batch_size=20)
    all_flipped = predict(flipped, variables, X, batch_size=20)
    scores, _ = MODEL.apply(*variables, X, train=False)
    top = np.asarray(jax.nn.softmax(scores, axis=1)).max(axis=1)
    c = float(np.median(top))
    got = predict_where_unsure(plain_scores, flipped, variables, X, confidence=c, batch_size=20)
    np.testing.assert_array_equal(got.unsure, top < c)
    assert 0 < got.unsure.sum() < len(X)
    np.testing.assert_array_equal(got.plain, all_plain)
    np.testing.assert_array_equal(got.labels, np.where(top < c, all_flipped, all_plain))
    every = predict_where_unsure(plain_scores, flipped, variables, X, confidence=None)
    assert every.unsure.all()
    np.testing.assert_array_equal(every.labels, all_flipped)
    none = predict_where_unsure(plain_scores, flipped, variables, X, confidence=0.0)
    assert not none.unsure.any()
    np.testing.assert_array_equal(none.labels, all_plain)
    for bad in (1.5, -0.1, float("nan")):
        with pytest.raises(ValueError, match="confidence"):
            predict_where_unsure(plain_scores, flipped, variables, X, confidence=bad)


def test_the_solver_predicts_plainly_and_augmented_in_one_pass():
    data = synthetic_data(40, 10, shape=SHAPE)
    solver = Solver(MODEL, data, verbose=False, test_time_flip=True, batch_size=10)
    X = data["X_val"]
    found = solver.test_time_predictions(X, confidence=None)
    np.testing.assert_array_equal(found.labels, solver.predict(X))
    np.testing.assert_array_equal(found.plain, solver.predict(X, augment=False))
    assert found.unsure.all()


def test_the_reference_twin_predicts_in_bfloat16_as_jcnn_does():
    """The twin's test-mode batchnorm promoted bfloat16 activations to float32 with its
    float32 running statistics, and the next convolution refused the mix (the app stopped
    with "x, w and b must share one floating dtype"): both now normalise in x's dtype."""
    from jcnn.models import VGGNet

    kw = dict(input_dim=(3, 8, 8), num_filters=(4, 8), blocks=(1, 1), hidden_dims=(8,))
    X = np.random.default_rng(0).standard_normal((6, 3, 8, 8)).astype(np.float32)
    scores = {}
    for layers in ("jcnn", "reference"):
        model = VGGNet(layers=layers, **kw)
        params, state = model.init(jax.random.key(0))
        step = make_eval_step(model, compute_dtype="bfloat16", scores=True)
        scores[layers] = np.asarray(step(params, state, X))
    np.testing.assert_allclose(scores["reference"], scores["jcnn"], rtol=0.05, atol=0.05)
