"""jcnn.selection: an update with data selection trains the main net on the proxy's hardest
rows, and the proxy on them every train_every-th update."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jcnn.checkpoint import CheckpointMismatchError
from jcnn.models import AirbenchNet, ThreeLayerConvNet
from jcnn.optim import make_optimizer
from jcnn.run_state import RunState
from jcnn.selection import Selection, per_example_losses, select_rows
from jcnn.solver import Solver
from jcnn.train import copy_tree, create_train_state, make_train_step
from tests.models.util import synthetic_data, synthetic_images

SHAPE = (3, 8, 8)
MAIN = ThreeLayerConvNet(input_dim=SHAPE, num_filters=6, filter_size=3, hidden_dim=16)
PROXY = ThreeLayerConvNet(
    input_dim=SHAPE, num_filters=2, filter_size=3, hidden_dim=8, label_smoothing=0.2
)
OPTIMIZER, _ = make_optimizer("sgd_momentum", {"learning_rate": 0.05})
SELECT = Selection(PROXY, OPTIMIZER, keep=6, train_every=2)


def _states(seed=0):
    proxy = create_train_state(PROXY, OPTIMIZER, key=jax.random.key(seed + 1))
    with_proxy = create_train_state(MAIN, OPTIMIZER, key=jax.random.key(seed), proxy=proxy)
    plain = create_train_state(MAIN, OPTIMIZER, key=jax.random.key(seed))
    return with_proxy, plain, proxy


def _batch(n=16, seed=0):
    X, y = synthetic_images(n, shape=SHAPE, seed=seed)
    return jnp.asarray(X), jnp.asarray(y)


def test_per_example_losses_average_to_the_models_own_loss():
    """Label smoothing included: their mean is the model's data loss."""
    scores = jax.random.normal(jax.random.key(0), (16, 10)) * 3
    y = jnp.arange(16) % 10
    for model in (MAIN, PROXY):
        losses = per_example_losses(model, scores, y)
        assert losses.shape == (16,)
        np.testing.assert_allclose(jnp.mean(losses), model.data_loss(scores, y), rtol=1e-6)
    log_p = jax.nn.log_softmax(scores)
    np.testing.assert_allclose(
        per_example_losses(MAIN, scores, y), -log_p[jnp.arange(16), y], rtol=1e-6
    )


def test_the_kept_rows_are_the_proxys_highest_losses_hardest_first():
    _, _, proxy = _states()
    X, y = _batch()
    key = jax.random.key(5)
    X_kept, y_kept, _ = jax.jit(lambda p: select_rows(SELECT, p, X, y, key=key, step=1))(proxy)
    scores, _ = jax.jit(functools.partial(PROXY.apply, train=True))(
        proxy.params, proxy.model_state, X
    )
    order = np.argsort(-np.asarray(per_example_losses(PROXY, scores, y)), kind="stable")
    np.testing.assert_array_equal(X_kept, X[order[:6]])
    np.testing.assert_array_equal(y_kept, y[order[:6]])


def test_an_update_with_selection_is_the_plain_update_on_the_kept_rows():
    """The main net's step equals an ordinary step on the kept rows; so does the proxy's on
    updates 0, 2, 4, ... (train_every=2); between them it keeps its parameters."""
    state, plain, _ = _states()
    step = make_train_step(MAIN, OPTIMIZER, select=SELECT)
    plain_step, proxy_step = make_train_step(MAIN, OPTIMIZER), make_train_step(PROXY, OPTIMIZER)
    for t in range(3):
        X, y = _batch(seed=t)
        key = jax.random.fold_in(state.key, t)
        X_kept, y_kept, _ = select_rows(SELECT, state.proxy, X, y, key=key, step=t)
        proxy_before = copy_tree(state.proxy)  # (the step donates the state's buffers)
        state, metrics = step(state, (X, y))
        plain, plain_metrics = plain_step(plain, (X_kept, y_kept))
        np.testing.assert_allclose(metrics["loss"], plain_metrics["loss"], rtol=1e-6)
        _assert_close(state.params, plain.params)
        if t % 2 == 0:
            proxy_alone, _ = proxy_step(proxy_before.replace(step=jnp.int32(t)), (X_kept, y_kept))
            _assert_close(state.proxy.params, proxy_alone.params)
            _assert_close(state.proxy.opt_state, proxy_alone.opt_state)
        else:
            _assert_close(state.proxy.params, proxy_before.params, rtol=0)
        assert int(state.proxy.step) == t // 2 + 1
    assert step.traces() == 1


def _assert_close(a, b, rtol=1e-5):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(x, y, rtol=rtol, atol=1e-7 if rtol else 0)


def test_the_airbench_net_trains_with_a_narrow_proxy_of_itself():
    main = AirbenchNet(input_dim=(3, 16, 16), widths=(8, 16, 16), dtype=jnp.float32)
    proxy_model = AirbenchNet(input_dim=(3, 16, 16), widths=(4, 4, 4), dtype=jnp.float32)
    select = Selection(proxy_model, OPTIMIZER, keep=8, train_every=4)
    proxy = create_train_state(proxy_model, OPTIMIZER, key=jax.random.key(1))
    state = create_train_state(main, OPTIMIZER, key=jax.random.key(0), proxy=proxy)
    batch = synthetic_images(16, shape=(3, 16, 16))
    step = make_train_step(main, OPTIMIZER, select=select, micro_batches=2)
    state, metrics = step(state, batch)
    assert bool(metrics["finite"]) and int(state.step) == 1 and int(state.proxy.step) == 1
    proxy_before = copy_tree(state.proxy)
    state, _ = step(state, batch)  # update 1: the proxy only scores
    _, scored_state = jax.jit(functools.partial(proxy_model.apply, train=True))(
        proxy_before.params, proxy_before.model_state, batch[0]
    )
    _assert_close(state.proxy.params, proxy_before.params, rtol=0)
    _assert_close(state.proxy.model_state, scored_state)  # its running statistics moved


def test_in_bfloat16_the_proxy_computes_in_bfloat16_and_keeps_float32_state():
    """Every convolution and matmul of the proxy's scoring and training runs in bfloat16;
    its parameters, statistics and optimiser state stay float32."""
    _, _, proxy = _states()
    X, y = _batch()

    def selected(proxy):
        return select_rows(
            SELECT, proxy, X, y, key=jax.random.key(5), step=0, compute_dtype="bfloat16"
        )

    jaxpr = str(jax.make_jaxpr(selected)(proxy))
    heavy = re.findall(r":(\w+)\[[^\]]*\] = (?:conv_general_dilated|dot_general)\b", jaxpr)
    assert len(heavy) >= 6 and set(heavy) == {"bf16"}, heavy
    X_kept, _, trained = jax.jit(selected)(proxy)
    assert X_kept.dtype == jnp.float32
    dtypes = {a.dtype for a in jax.tree.leaves((trained.params, trained.opt_state))}
    assert dtypes <= {jnp.dtype("float32"), jnp.dtype("int32")}


def test_a_checkpointed_run_state_keeps_the_proxy():
    state, _, _ = _states()
    state, _ = make_train_step(MAIN, OPTIMIZER, select=SELECT)(state, _batch())
    run = RunState(state, host_rng=np.random.default_rng(0))
    tree = jax.device_get(run.checkpoint_tree())
    assert set(tree["proxy"]) == {"params", "state", "opt_state", "step", "rng"}
    fresh = RunState(_states(seed=9)[0], host_rng=np.random.default_rng(0))
    back = fresh.restored(tree, {**run.progress(), "iteration": 1}).train_state.proxy
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(state.proxy), strict=True):
        if jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
            a, b = jax.random.key_data(a), jax.random.key_data(b)
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Selection(PROXY, OPTIMIZER, keep=0), "keep"),
        (lambda: Selection(PROXY, OPTIMIZER, keep=4, train_every=0), "train_every"),
        (
            lambda: make_train_step(MAIN, OPTIMIZER, select=SELECT)(_states()[1], _batch()),
            "proxy",
        ),
        (
            lambda: make_train_step(MAIN, OPTIMIZER, select=Selection(PROXY, OPTIMIZER, keep=17))(
                _states()[0], _batch()
            ),
            "keep=17 must be at most the minibatch of 16",
        ),
    ],
)
def test_bad_selection_settings_are_refused_naming_them(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def _solver(checkpoint_dir, num_epochs, select=SELECT, **kw):
    data = synthetic_data(48, 8, shape=SHAPE)
    return Solver(
        MAIN, data, update_rule="sgd_momentum", optim_config={"learning_rate": 0.05},
        batch_size=8, num_epochs=num_epochs, verbose=False, seed=2, sampling="epoch",
        checkpoint_dir=checkpoint_dir, selection=select, **kw,
    )  # fmt: skip


def test_a_solver_run_with_selection_resumes_to_the_uninterrupted_result(tmp_path):
    whole = _solver(tmp_path / "whole", 2)
    whole.train()
    _solver(tmp_path / "halves", 1).train()
    resumed = _solver(tmp_path / "halves", 2)
    assert resumed.resumed_from["iteration"] == 6
    resumed.train()
    assert resumed.loss_history == whole.loss_history
    for a, b in zip(
        jax.tree.leaves((resumed.params, resumed.train_state.proxy)),
        jax.tree.leaves((whole.params, whole.train_state.proxy)),
        strict=True,
    ):
        if jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
            a, b = jax.random.key_data(a), jax.random.key_data(b)
        np.testing.assert_array_equal(a, b)
    assert int(whole.train_state.proxy.step) == 6  # updates 0, 2, ..., 10


def test_a_checkpoint_resumes_only_into_a_run_with_the_same_selection(tmp_path):
    _solver(tmp_path, 1).train()
    for other in (None, Selection(PROXY, OPTIMIZER, keep=4, train_every=2)):
        with pytest.raises(CheckpointMismatchError, match="solver.selection"):
            _solver(tmp_path, 2, select=other)


def test_the_solver_refuses_a_selection_that_does_not_fit_its_batches(tmp_path):
    with pytest.raises(ValueError, match="selection.keep=9 must be at most batch_size=8"):
        _solver(None, 1, select=Selection(PROXY, OPTIMIZER, keep=9))
    with pytest.raises(ValueError, match="micro_batches=4 must divide selection.keep=6"):
        _solver(None, 1, micro_batches=4)
    with pytest.raises(ValueError, match="selection must be a jcnn.selection.Selection"):
        _solver(None, 1, select=6)
