"""jcnn.train: the pure training pieces the Solver is built on."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jcnn.models import ThreeLayerConvNet, VGGNet
from jcnn.optim import make_optimizer, make_schedule
from jcnn.solver import Solver
from jcnn.train import (
    Lookahead,
    TrainState,
    copy_tree,
    create_train_state,
    make_eval_step,
    make_train_step,
    micro_batch_gradients,
    predict,
)
from tests.models.util import synthetic_data

SHAPE = (3, 8, 8)
MODEL = VGGNet(
    input_dim=SHAPE, num_filters=(4,), blocks=(1,), hidden_dims=(8,), dropout=0.3, reg=1e-3,
    dtype=jnp.float32,
)  # fmt: skip


def test_ten_lines_train_a_model_as_the_module_docs_show():
    data = synthetic_data(200, 50, shape=SHAPE)
    X_train, y_train = data["X_train"], data["y_train"]
    model = ThreeLayerConvNet(input_dim=SHAPE, num_filters=8, filter_size=3, hidden_dim=32)
    optimizer, _ = make_optimizer("adam", {"learning_rate": 1e-2})
    state = create_train_state(model, optimizer, key=jax.random.key(0))
    train_step, eval_step = make_train_step(model, optimizer), make_eval_step(model)
    losses = []
    for t in range(60):
        idx = np.random.default_rng(t).choice(len(X_train), 50)
        state, metrics = train_step(state, (X_train[idx], y_train[idx]))
        losses.append(float(metrics["loss"]))
    val_acc = np.mean(predict(eval_step, state, data["X_val"]) == data["y_val"])
    assert int(state.step) == 60
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:5])
    assert val_acc > 0.5  # ten classes: chance is 0.1
    assert train_step.traces() == 1 and eval_step.traces() == 1


def test_the_solver_is_these_pieces_loss_for_loss():
    data = synthetic_data(100, 20, shape=SHAPE)
    solver = Solver(
        MODEL, data, update_rule="adam", optim_config={"learning_rate": 1e-3}, batch_size=20,
        num_epochs=1, seed=3, verbose=False, num_train_samples=None, select_best=False,
    )  # fmt: skip
    schedule = make_schedule(1e-3, iterations_per_epoch=5, num_iterations=5)  # lr_decay=1
    optimizer, _ = make_optimizer("adam", {"learning_rate": 1e-3}, schedule)
    state = create_train_state(MODEL, optimizer, key=jax.random.key(3))
    step = make_train_step(MODEL, optimizer)
    rng = np.random.default_rng(3)
    losses = []
    for _ in range(solver.num_iterations):
        idx = rng.choice(100, 20)
        state, metrics = step(state, (solver.X_train[idx], solver.y_train[idx]))  # as held
        losses.append(float(metrics["loss"]))
    solver.train()
    assert solver.num_iterations == 5
    assert solver.loss_history == losses
    chex.assert_trees_all_equal(solver.params, state.params)  # bit for bit
    chex.assert_trees_all_equal(solver.opt_state, state.opt_state)


class _TraceCounted:
    """``model`` with its loss wrapped in ``chex.assert_max_traces``: tracing the train step
    twice would trace the loss twice and fail."""

    def __init__(self, model, n):
        self._model = model
        self.loss = chex.assert_max_traces(model.loss, n=n)

    def __getattr__(self, name):
        return getattr(self._model, name)


def test_one_compile_for_a_whole_run_of_same_shaped_batches():
    optimizer, _ = make_optimizer("adam", {"learning_rate": 1e-3})
    state = create_train_state(MODEL, optimizer, key=jax.random.key(0))
    step = make_train_step(_TraceCounted(MODEL, n=1), optimizer)
    rng = np.random.default_rng(0)
    for _ in range(4):  # new host arrays every time, same shapes and dtypes
        X = rng.normal(size=(8, *SHAPE)).astype(np.float32)
        state, _ = step(state, (X, rng.integers(0, 10, 8)))
    assert step.traces() == 1


def test_train_step_counts_steps_keeps_the_key_and_flags_a_nonfinite_loss():
    optimizer, _ = make_optimizer("sgd", {"learning_rate": 0.1})
    state = create_train_state(MODEL, optimizer, key=jax.random.key(0))
    key = np.asarray(jax.random.key_data(state.key))  # a host copy: the step donates state
    step = make_train_step(MODEL, optimizer)
    X = np.ones((4, *SHAPE), np.float32)
    state, metrics = step(state, (X, np.zeros(4, np.int32)))
    assert int(state.step) == 1 and bool(metrics["finite"])
    np.testing.assert_array_equal(jax.random.key_data(state.key), key)
    state, metrics = step(state, (X * np.nan, np.zeros(4, np.int32)))
    assert int(state.step) == 2 and not bool(metrics["finite"])


def test_train_step_donates_its_input_state_and_copy_tree_keeps_a_copy():
    optimizer, _ = make_optimizer("sgd", {"learning_rate": 0.1})
    state = create_train_state(MODEL, optimizer, key=jax.random.key(0))
    kept = copy_tree(state.params)
    step = make_train_step(MODEL, optimizer)
    new, _ = step(state, (np.ones((4, *SHAPE), np.float32), np.zeros(4, np.int32)))
    leaf = jax.tree_util.tree_leaves(state.params)[0]
    assert leaf.is_deleted()
    assert not any(x.is_deleted() for x in jax.tree_util.tree_leaves(kept))
    assert isinstance(new, TrainState)


def test_augment_runs_inside_the_step_with_its_own_key_and_must_keep_the_shape():
    optimizer, _ = make_optimizer("sgd", {"learning_rate": 0.1})
    batch = (np.ones((4, *SHAPE), np.float32), np.zeros(4, np.int32))
    crop = make_train_step(MODEL, optimizer, augment=lambda key, X: X[..., 1:])
    state = create_train_state(MODEL, optimizer, key=jax.random.key(0))
    with pytest.raises(ValueError, match="augment must keep the minibatch's shape"):
        crop(state, batch)


def test_predict_pads_the_last_chunk_and_matches_apply():
    params, model_state = MODEL.init(jax.random.key(1))
    X = np.random.default_rng(0).normal(size=(23, *SHAPE)).astype(np.float32)
    eval_step = make_eval_step(MODEL)
    got = predict(eval_step, (params, model_state), X, batch_size=10)
    scores, _ = MODEL.apply(params, model_state, X, train=False)
    np.testing.assert_array_equal(got, np.argmax(np.asarray(scores), axis=1))
    assert got.shape == (23,) and eval_step.traces() == 1
    assert predict(eval_step, (params, model_state), X[:0], batch_size=10).shape == (0,)


def test_create_train_state_refuses_half_a_start():
    optimizer, _ = make_optimizer("sgd")
    params, model_state = MODEL.init(jax.random.key(1))
    with pytest.raises(ValueError, match="model_state given without params"):
        create_train_state(MODEL, optimizer, key=jax.random.key(0), model_state=model_state)
    with pytest.raises(ValueError, match="params given without model_state"):
        create_train_state(MODEL, optimizer, key=jax.random.key(0), params=params)
    state = create_train_state(
        MODEL, optimizer, key=jax.random.key(0), params=params, model_state=model_state, step=7
    )
    assert int(state.step) == 7
    assert state.params is not params  # copied: donating the state leaves the input intact


def _toy_state(params, model_state, step, slow):
    return TrainState(
        params=params, model_state=model_state, opt_state=(), step=jnp.asarray(step, jnp.int32),
        key=jax.random.key(0), slow=slow,
    )  # fmt: skip


def test_lookahead_averages_weights_and_statistics_when_due_and_ends_on_the_slow_copy():
    la = Lookahead(every=5, num_iterations=22)
    slow = {"params": {"w": jnp.array([0.0, 2.0])}, "model_state": {"m": jnp.array([1.0])}}
    fast_p, fast_s = {"w": jnp.array([4.0, 6.0])}, {"m": jnp.array([3.0])}
    not_due = la(_toy_state(fast_p, fast_s, 7, slow))
    np.testing.assert_array_equal(not_due.params["w"], [4.0, 6.0])  # unchanged
    np.testing.assert_array_equal(not_due.slow["params"]["w"], [0.0, 2.0])
    due = la(_toy_state(fast_p, fast_s, 10, slow))
    alpha = 0.95**5 * (10 / 22) ** 3
    want = np.array([0.0, 2.0]) + (1 - alpha) * np.array([4.0, 4.0])
    np.testing.assert_allclose(due.params["w"], want, rtol=1e-6)
    np.testing.assert_allclose(due.slow["params"]["w"], want, rtol=1e-6)
    np.testing.assert_allclose(due.model_state["m"], [1.0 + (1 - alpha) * 2.0], rtol=1e-6)
    last = la(_toy_state(fast_p, fast_s, 22, slow))  # off schedule: the slow copy as it is
    np.testing.assert_array_equal(last.params["w"], [0.0, 2.0])
    np.testing.assert_array_equal(last.model_state["m"], [1.0])
    np.testing.assert_array_equal(last.slow["params"]["w"], [0.0, 2.0])
    on_schedule = Lookahead(every=5, num_iterations=20)
    last = on_schedule(_toy_state(fast_p, fast_s, 20, slow))  # averaged with α(T), then copied
    alpha = 0.95**5
    np.testing.assert_allclose(last.params["w"], [4.0 * (1 - alpha), 2.0 + 4.0 * (1 - alpha)])
    np.testing.assert_allclose(last.model_state["m"], [1.0 + 2.0 * (1 - alpha)], rtol=1e-6)
    np.testing.assert_array_equal(last.params["w"], last.slow["params"]["w"])
    with pytest.raises(ValueError, match="every"):
        Lookahead(every=0, num_iterations=10)


def test_train_step_with_lookahead_keeps_params_equal_to_the_slow_copy_on_due_steps():
    data = synthetic_data(64, 8, shape=SHAPE)
    optimizer, _ = make_optimizer("sgd_momentum", {"learning_rate": 0.05})
    la = Lookahead(every=2, num_iterations=6)
    state = create_train_state(MODEL, optimizer, key=jax.random.key(0), lookahead=la)
    step = make_train_step(MODEL, optimizer, lookahead=la)
    for t in range(1, 7):
        state, _ = step(state, (data["X_train"][:16], data["y_train"][:16]))
        same = jax.tree_util.tree_map(
            lambda a, b: bool(jnp.all(a == b)), state.params, state.slow["params"]
        )
        assert all(jax.tree_util.tree_leaves(same)) == (t % 2 == 0), t


def test_an_augment_with_a_step_keyword_gets_the_update_count():
    seen = []

    def augment(key, X, *, step):
        seen.append(step)
        return X + step.astype(X.dtype)

    optimizer, _ = make_optimizer("sgd", {"learning_rate": 1e-9})
    state = create_train_state(MODEL, optimizer, key=jax.random.key(0))
    step = make_train_step(MODEL, optimizer, augment=augment)
    data = synthetic_data(8, 8, shape=SHAPE)
    state, m0 = step(state, (data["X_train"], data["y_train"]))
    state, m1 = step(state, (data["X_train"], data["y_train"]))
    assert len(seen) == 1  # traced once; the step is an argument, not a constant
    assert float(m0["loss"]) != float(m1["loss"])


def test_test_time_translate_averages_shifted_views_and_checks_its_argument():
    model = VGGNet(
        input_dim=SHAPE, num_filters=(4,), blocks=(1,), hidden_dims=(), dtype=jnp.float32
    )
    params, state = model.init(jax.random.key(0))
    X = np.random.default_rng(0).normal(size=(5, *SHAPE)).astype(np.float32)
    labels = make_eval_step(model, test_time_flip=True, test_time_translate=1)(params, state, X)

    def scores(x):
        s, _ = model.apply(params, state, x)
        m, _ = model.apply(params, state, x[..., ::-1])
        return s + m

    padded = np.pad(X, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="reflect")
    total = 0.5 * scores(X) + 0.25 * (scores(padded[..., :8, :8]) + scores(padded[..., 2:, 2:]))
    np.testing.assert_array_equal(labels, np.argmax(total, axis=1))
    for bad in (-1, 1.5, 8):
        with pytest.raises(ValueError, match="test_time_translate"):
            make_eval_step(model, test_time_translate=bad)


def _strided_parts(a, m):
    return [a[j::m] for j in range(m)]


# micro_batch_gradients as one compiled program (run eagerly, each of its operations
# compiled one by one: 100-170 programs per test).
_jitted_micro_batch_gradients = jax.jit(
    micro_batch_gradients, static_argnums=0, static_argnames="micro_batches"
)


def test_micro_batches_give_the_minibatch_gradient_when_no_layer_sees_the_batch():
    model = ThreeLayerConvNet(input_dim=SHAPE, num_filters=4, filter_size=3, hidden_dim=8)
    params, state = model.init(jax.random.key(0))
    data = synthetic_data(24, 4, shape=SHAPE)
    X, y = jnp.asarray(data["X_train"]), jnp.asarray(data["y_train"])
    key = jax.random.key(1)
    grad_fn = jax.jit(jax.value_and_grad(model.loss, has_aux=True))  # one program, not many
    (loss, _), grads = grad_fn(params, state, X, y, key=key)
    for m in (1, 3, 4):
        (loss_m, _), grads_m = _jitted_micro_batch_gradients(
            model.loss, params, state, X, y, key=key, micro_batches=m
        )
        np.testing.assert_allclose(loss_m, loss, rtol=1e-5)
        chex.assert_trees_all_close(grads_m, grads, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="micro_batches=5 must divide the minibatch of 24"):
        micro_batch_gradients(model.loss, params, state, X, y, key=key, micro_batches=5)


def test_micro_batches_average_the_parts_whose_batchnorm_sees_its_own_statistics():
    model = VGGNet(input_dim=SHAPE, num_filters=(4,), blocks=(1,), hidden_dims=(8,))
    params, state = model.init(jax.random.key(0))
    data = synthetic_data(12, 4, shape=SHAPE)
    X, y = jnp.asarray(data["X_train"]), jnp.asarray(data["y_train"])
    key, m = jax.random.key(1), 3
    grad_fn = jax.jit(jax.value_and_grad(model.loss, has_aux=True))
    losses, grads, running = [], [], state
    for j, (Xj, yj) in enumerate(zip(_strided_parts(X, m), _strided_parts(y, m), strict=True)):
        (loss, running), g = grad_fn(params, running, Xj, yj, key=jax.random.fold_in(key, j))
        losses.append(loss)
        grads.append(g)
    (loss_m, state_m), grads_m = _jitted_micro_batch_gradients(
        model.loss, params, state, X, y, key=key, micro_batches=m
    )
    np.testing.assert_allclose(loss_m, np.mean(losses), rtol=1e-5)
    mean_grads = jax.tree_util.tree_map(lambda *g: sum(g) / m, *grads)
    chex.assert_trees_all_close(grads_m, mean_grads, rtol=1e-4, atol=1e-6)
    chex.assert_trees_all_close(state_m, running, rtol=1e-5)  # threaded through the parts
    (loss_1, _), _ = _jitted_micro_batch_gradients(model.loss, params, state, X, y, key=key)
    assert abs(float(loss_1) - float(loss_m)) > 1e-6  # the whole batch's statistics differ


def test_the_solver_trains_in_micro_batches_and_checks_they_divide_the_batch():
    data = synthetic_data(40, 10, shape=SHAPE)
    kw = dict(batch_size=10, num_epochs=1, verbose=False, num_train_samples=None)
    model = ThreeLayerConvNet(input_dim=SHAPE, num_filters=4, filter_size=3, hidden_dim=8)
    whole = Solver(model, data, **kw)
    parts = Solver(model, data, micro_batches=5, **kw)
    whole.train()
    parts.train()
    np.testing.assert_allclose(parts.loss_history, whole.loss_history, rtol=1e-4)
    assert parts.micro_batches == 5
    with pytest.raises(ValueError, match="micro_batches=3 must divide batch_size=10"):
        Solver(model, data, micro_batches=3, **kw)
    with pytest.raises(ValueError, match="micro_batches"):
        make_train_step(model, make_optimizer("sgd", {})[0], micro_batches=0)
