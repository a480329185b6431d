"""Solver: the cs231n interface on optax, one compile per run, reproducible, strict input."""

import contextlib
import dataclasses
import io
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jcnn.checkpoint import IDENTITY_DEFAULTS, config_differences, load_checkpoint
from jcnn.models import FullyConnectedNet, ThreeLayerConvNet, VGGNet
from jcnn.optim import make_optimizer, make_schedule, resolve_optim_config
from jcnn.solver import Solver
from jcnn.solver_settings import ARGUMENTS, SolverSettings
from tests.models.util import synthetic_data

SHAPE = (3, 8, 8)
N_TRAIN, N_VAL, BATCH, EPOCHS = 110, 37, 25, 2  # 110 % 25 != 0; 4 iterations per epoch
MODEL = VGGNet(
    input_dim=SHAPE, num_filters=(4,), blocks=(1,), hidden_dims=(8,), dropout=0.3, reg=1e-3
)


def count_compiles(solver):
    """How many times each of the solver's jitted steps was compiled (jit cache entries)."""
    return {
        "train_step": solver._train_step._cache_size(),
        "eval_step": solver.predictor.augmented._cache_size(),
    }


def _run(seed, checkpoint_dir=None):
    data = synthetic_data(N_TRAIN, N_VAL, shape=SHAPE)
    calls = {"iteration": [], "epoch": []}
    solver = Solver(
        MODEL,
        data,
        update_rule="sgd_momentum",
        optim_config={"learning_rate": 0.05},
        lr_decay=0.9,
        batch_size=BATCH,
        num_epochs=EPOCHS,
        num_train_samples=50,
        print_every=3,
        checkpoint_dir=checkpoint_dir,
        seed=seed,
        on_iteration=lambda s, it, loss: calls["iteration"].append((it, loss)),
        on_epoch_end=[lambda s, ep: calls["epoch"].append((ep, s.eval_history[-1]["val_acc"]))],
    )
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        solver.train()
    return solver, out.getvalue(), calls, data


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    ckpt = tmp_path_factory.mktemp("ckpt")
    return {"a": _run(0, ckpt), "b": _run(0), "c": _run(1), "ckpt": ckpt}


def test_same_seed_same_run_bit_for_bit(runs):
    (a, out_a, _, _), (b, out_b, _, _), (c, _, _, _) = runs["a"], runs["b"], runs["c"]
    assert a.loss_history == b.loss_history
    assert a.train_acc_history == b.train_acc_history
    assert a.val_acc_history == b.val_acc_history
    assert out_a == out_b
    for tree_a, tree_b in ((a.params, b.params), (a.state, b.state), (a.opt_state, b.opt_state)):
        same = jax.tree_util.tree_map(lambda x, y: np.array_equal(x, y), tree_a, tree_b)
        assert all(jax.tree_util.tree_leaves(same))
    assert a.loss_history != c.loss_history  # and the seed matters


def test_one_compile_per_run(runs):
    solver, _, _, data = runs["a"]
    assert solver.num_iterations == EPOCHS * (N_TRAIN // BATCH)
    assert count_compiles(solver) == {"train_step": 1, "eval_step": 1}
    assert solver.trace_counts == {"train_step": 1, "eval_step": 1}
    solver.check_accuracy(data["X_val"][:7], data["y_val"][:7])  # short: padded, no retrace
    assert count_compiles(solver)["eval_step"] == 1


def test_progress_lines_and_histories(runs):
    solver, out, calls, _ = runs["a"]
    lines = out.strip().splitlines()
    it = [ln for ln in lines if ln.startswith("(Iteration")]
    ep = [ln for ln in lines if ln.startswith("(Epoch")]
    assert [ln.split(")")[0] for ln in it] == [
        "(Iteration 1 / 8",
        "(Iteration 4 / 8",
        "(Iteration 7 / 8",
    ]
    assert all(re.fullmatch(r"\(Iteration \d+ / 8\) loss: \d+\.\d{6}", ln) for ln in it)
    pat = r"\(Epoch (\d) / 2\) train acc: (\d\.\d{6}); val_acc: (\d\.\d{6})"
    parsed = [re.fullmatch(pat, ln).groups() for ln in ep]
    assert [int(p[0]) for p in parsed] == [0, 1, 2]
    assert [float(p[2]) for p in parsed] == pytest.approx(solver.val_acc_history, abs=1e-6)
    assert f"loss: {solver.loss_history[3]:f}" in it[1]

    assert len(solver.loss_history) == 8 and np.isfinite(solver.loss_history).all()
    assert len(solver.train_acc_history) == len(solver.val_acc_history) == 3
    assert solver.lr_history == pytest.approx([0.05, 0.05, 0.05 * 0.9])
    assert solver.lr_at(0) == pytest.approx(0.05) and solver.lr_at(4) == pytest.approx(0.045)
    assert [r["epoch"] for r in solver.eval_history] == [0, 1, 2]
    assert [r["iteration"] for r in solver.eval_history] == [1, 4, 8]
    # hooks
    assert [i for i, _ in calls["iteration"]] == list(range(1, 9))
    assert [loss for _, loss in calls["iteration"]] == solver.loss_history
    assert calls["epoch"] == list(zip([0, 1, 2], solver.val_acc_history, strict=True))


def test_best_params_kept_and_restored(runs):
    solver, _, _, _ = runs["a"]
    assert solver.best_val_acc == max(solver.val_acc_history)
    assert solver.best_epoch == int(np.argmax(solver.val_acc_history))
    for now, best in ((solver.params, solver.best_params), (solver.state, solver.best_state)):
        same = jax.tree_util.tree_map(lambda x, y: np.array_equal(x, y), now, best)
        assert all(jax.tree_util.tree_leaves(same))
    assert set(solver.best_state) == {"conv1_1", "fc1"}


def test_checkpoint_every_epoch(runs):
    solver, _, _, _ = runs["a"]
    files = sorted(p.name for p in runs["ckpt"].iterdir())
    assert files == ["epoch_001.json", "epoch_001.npz", "epoch_002.json", "epoch_002.npz"]
    tree, meta = load_checkpoint(runs["ckpt"] / "epoch_002.npz", solver.checkpoint_tree())
    assert meta["epoch"] == 2 and meta["iteration"] == 8
    assert meta["loss_history"] == solver.loss_history
    assert meta["val_acc_history"] == solver.val_acc_history
    assert meta["model"]["class"] == "VGGNet" and meta["model"]["num_filters"] == [4]
    assert meta["solver"]["update_rule"] == "sgd_momentum"
    same = jax.tree_util.tree_map(np.array_equal, tree["opt_state"], solver.opt_state)
    assert all(jax.tree_util.tree_leaves(same))  # opt_state is never swapped for the best
    assert "params/conv1_1/w" in meta["keys"] and "state/fc1/running_var" in meta["keys"]


def test_predict_in_padded_chunks_equals_one_batch(runs):
    solver, _, _, data = runs["a"]
    X = data["X_val"]
    scores, _ = jax.jit(MODEL.apply)(solver.params, solver.state, X)
    want = np.argmax(np.asarray(scores), axis=1)
    np.testing.assert_array_equal(solver.predict(X, batch_size=10), want)
    acc = solver.check_accuracy(X, data["y_val"], batch_size=10)
    assert acc == pytest.approx(np.mean(want == data["y_val"]))


def test_test_time_flip_sums_the_scores_of_each_image_and_its_mirror(runs):
    trained, _, _, data = runs["a"]
    solver = Solver(
        MODEL, data, params=trained.params, state=trained.state, test_time_flip=True,
        verbose=False,
    )  # fmt: skip
    X = data["X_val"]
    apply = jax.jit(MODEL.apply)
    scores = np.asarray(apply(solver.params, solver.state, X)[0])
    mirrored = np.asarray(apply(solver.params, solver.state, X[..., ::-1])[0])
    want = np.argmax(scores + mirrored, axis=1)
    assert not np.array_equal(want, np.argmax(scores, axis=1))  # the test can tell them apart
    np.testing.assert_array_equal(solver.predict(X, batch_size=10), want)
    # a mirror-symmetric image is its own mirror: the same class as without the flip
    symmetric = (X + X[..., ::-1]) / 2
    np.testing.assert_array_equal(
        solver.predict(symmetric), np.argmax(np.asarray(apply(solver.params, solver.state,
        symmetric)[0]), axis=1),
    )  # fmt: skip
    assert solver._identity()["solver"]["test_time_flip"] is True
    # a checkpoint from before the option (no such key) matches a run without it
    older = trained._identity()
    assert older["solver"].pop("test_time_flip") is False
    assert not config_differences(older, trained._identity(), defaults=IDENTITY_DEFAULTS)


def test_checkpoint_without_label_smoothing_matches_only_runs_without_it():
    plain = Solver(SMALL, _data(), verbose=False)._identity()
    smooth = dataclasses.replace(SMALL, label_smoothing=0.1)
    smoothed = Solver(smooth, _data(), verbose=False)._identity()
    assert plain["model"]["label_smoothing"] == 0.0
    older = {**plain, "model": {k: v for k, v in plain["model"].items() if k != "label_smoothing"}}
    assert not config_differences(older, plain, defaults=IDENTITY_DEFAULTS)
    assert config_differences(older, smoothed, defaults=IDENTITY_DEFAULTS) == {
        "model.label_smoothing": (0.0, 0.1)
    }


def test_test_time_flip_needs_images():
    model = ThreeLayerConvNet(input_dim=SHAPE, num_filters=2, hidden_dim=4)
    flat = FullyConnectedNet(input_dim=12, hidden_dims=(4,))
    data = {k: np.zeros((4, 12), np.float32) if k[0] == "X" else np.zeros(4, int)
            for k in ("X_train", "y_train", "X_val", "y_val")}  # fmt: skip
    with pytest.raises(ValueError, match="test_time_flip mirrors images"):
        Solver(flat, data, test_time_flip=True)
    with pytest.raises(ValueError, match="test_time_flip must be True or False"):
        Solver(model, _data(), test_time_flip="yes")


# ------------------------------------------------------------------------- optimisers


def _cs231n(rule, w, grads, lr, cfg):
    """cs231n optim.py, in numpy."""
    w = w.copy()
    v = np.zeros_like(w)
    m = np.zeros_like(w)
    for t, dw in enumerate(grads, start=1):
        if rule == "sgd":
            w -= lr * dw
        elif rule == "sgd_momentum":
            v = cfg["momentum"] * v - lr * dw
            w += v
        elif rule == "rmsprop":
            v = cfg["decay_rate"] * v + (1 - cfg["decay_rate"]) * dw**2
            w -= lr * dw / (np.sqrt(v) + cfg["epsilon"])
        else:
            m = cfg["beta1"] * m + (1 - cfg["beta1"]) * dw
            v = cfg["beta2"] * v + (1 - cfg["beta2"]) * dw**2
            mt, vt = m / (1 - cfg["beta1"] ** t), v / (1 - cfg["beta2"] ** t)
            w -= lr * mt / (np.sqrt(vt) + cfg["epsilon"])
    return w


@pytest.mark.parametrize("rule", ["sgd", "sgd_momentum", "rmsprop", "adam"])
def test_update_rules_are_the_assignments(rule):
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=(5,))
    grads = [rng.normal(size=(5,)) * 10.0**-k for k in range(4)]  # small ones too: eps shows
    tx, cfg = make_optimizer(rule, {"learning_rate": 1e-2}, 1e-2)
    params = {"w": jnp.asarray(w0)}
    opt_state = tx.init(params)
    update = jax.jit(tx.update)
    for g in grads:
        updates, opt_state = update({"w": jnp.asarray(g)}, opt_state, params)
        params = optax.apply_updates(params, updates)
    np.testing.assert_allclose(params["w"], _cs231n(rule, w0, grads, 1e-2, cfg), rtol=1e-12)


def test_optim_config_defaults_and_checks():
    assert resolve_optim_config("rmsprop", None) == {
        "learning_rate": 1e-2,
        "decay_rate": 0.99,
        "epsilon": 1e-8,
    }
    assert resolve_optim_config("adam", {"learning_rate": 5e-4})["beta2"] == 0.999
    assert resolve_optim_config("sgd_momentum", {"momentum": 0.5})["momentum"] == 0.5
    with pytest.raises(ValueError, match="momentum"):
        resolve_optim_config("sgd", {"momentum": 0.9})
    with pytest.raises(ValueError, match="learning_rate"):
        resolve_optim_config("adam", {"learning_rate": -1})


@pytest.mark.parametrize(
    "rule,key,value",
    [
        ("sgd", "learning_rate", 1e39),
        ("adam", "learning_rate", 3.5e38),
        ("rmsprop", "epsilon", 1e39),
        ("adam", "epsilon", 1e300),
        ("sgd_momentum", "momentum", -1e39),
    ],
)
def test_optim_config_value_beyond_float32_range_raises_naming_the_key(rule, key, value):
    with pytest.raises(ValueError, match=rf"optim_config\['{key}'\] must be finite in float32"):
        resolve_optim_config(rule, {key: value})
    with pytest.raises(ValueError, match=rf"optim_config\['{key}'\]"):
        make_optimizer(rule, {key: value})


def test_optim_config_takes_the_largest_float32_learning_rate():
    big = float(np.finfo(np.float32).max)
    assert resolve_optim_config("sgd", {"learning_rate": big})["learning_rate"] == big


# ------------------------------------------------------------------- learning rate


def test_exponential_schedule_is_the_assignments_per_epoch_decay():
    f = make_schedule(0.1, lr_decay=0.5, iterations_per_epoch=4, num_iterations=12)
    want = [0.1 * 0.5 ** (t // 4) for t in range(12)]
    np.testing.assert_allclose([float(f(t)) for t in range(12)], want, rtol=1e-6)


def test_cosine_schedule_with_warmup_in_the_solver():
    # 12 images, batch 3: 4 iterations per epoch, 5 epochs, warm-up 1.5 epochs = 6 updates.
    lr, n, w = 0.2, 20, 6
    solver = Solver(
        SMALL, _data(), update_rule="sgd_momentum", optim_config={"learning_rate": lr},
        lr_schedule="cosine", warmup_epochs=1.5, batch_size=3, num_epochs=5, verbose=False,
    )  # fmt: skip
    assert solver.warmup_iterations == w
    want = [lr * (t + 1) / w for t in range(w)]
    want += [lr * (1 + math.cos(math.pi * (t - w) / (n - w))) / 2 for t in range(w, n)]
    got = [solver.lr_at(t) for t in range(n)]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-9)
    assert got[w - 1] == pytest.approx(lr) and got[-1] < 0.02 * lr  # peak, then near 0
    solver.train()
    # each accuracy check records the rate of the update just before it
    assert solver.lr_history == pytest.approx([want[0]] + [want[4 * e - 1] for e in range(1, 6)])


def test_exponential_schedule_with_warmup():
    f = make_schedule(1e-2, lr_decay=0.9, iterations_per_epoch=5, num_iterations=20,
                      warmup_iterations=4)  # fmt: skip
    want = [1e-2 * (t + 1) / 4 for t in range(4)] + [1e-2 * 0.9 ** (t // 5) for t in range(4, 20)]
    np.testing.assert_allclose([float(f(t)) for t in range(20)], want, rtol=1e-6)


# ------------------------------------------------------------------------- bad input

SMALL = ThreeLayerConvNet(input_dim=SHAPE, num_filters=2, filter_size=3, hidden_dim=4)


def _data(**overrides):
    rng = np.random.default_rng(0)
    d = {
        "X_train": rng.normal(size=(12, *SHAPE)).astype(np.float32),
        "y_train": rng.integers(0, 10, 12),
        "X_val": rng.normal(size=(5, *SHAPE)).astype(np.float32),
        "y_val": rng.integers(0, 10, 5),
    }
    d.update(overrides)
    return {k: v for k, v in d.items() if v is not None}


def _nan_at(i):
    X = _data()["X_train"].copy()
    X[i, 0, 1, 2] = np.nan
    return X


@pytest.mark.parametrize(
    "data, kwargs, match",
    [
        (_data(y_val=None), {}, r"data is missing \['y_val'\]"),
        (_data(y_train=np.zeros(11, int)), {}, "X_train and y_train differ in length"),
        (_data(X_val=np.zeros((5, 3, 8, 9), np.float32)), {}, r"X_val has shape \(5, 3, 8, 9\)"),
        (_data(X_train=np.zeros((12, 192), np.float32)), {}, "X_train has shape"),
        (_data(), {"update_rule": "adagrad"}, "update_rule"),
        (_data(), {"batch_size": 0}, "batch_size"),
        (_data(), {"batch_size": -5}, "batch_size"),
        (
            _data(),
            {"batch_size": 13, "sampling": "epoch"},
            "batch_size=13 is larger than the 12 training images",
        ),
        (_data(), {"num_epochs": 0}, "num_epochs"),
        (_data(), {"optim_config": {"lr": 1e-3}}, r"optim_config has keys \['lr'\]"),
        (_data(), {"lr_decay": 0}, "lr_decay"),
        (_data(), {"lr_schedule": "step"}, "lr_schedule must be one of"),
        (_data(), {"lr_schedule": "cosine", "lr_decay": 0.9}, "lr_decay=0.9 applies to"),
        (_data(), {"warmup_epochs": -1}, "warmup_epochs"),
        (_data(), {"seed": -1}, r"seed must be an int in \[0, 2\*\*32\), got -1"),
        (_data(), {"seed": 2**64}, r"seed must be an int in \[0, 2\*\*32\)"),
        (_data(), {"seed": 1.5}, "seed must be an int"),
        (_data(), {"warmup_epochs": float("nan")}, "warmup_epochs"),
        (_data(), {"warmup_epochs": 3, "num_epochs": 3}, "warm-up must be shorter than the run"),
        (_data(y_train=np.full(12, 10)), {}, r"y_train holds labels outside \[0, 10\)"),
        (_data(y_val=np.array([0, 1, -1, 2, 3])), {}, r"y_val\[2\] = -1"),
        (_data(y_train=np.zeros(12)), {}, "y_train must hold integer"),
        (_data(X_train=_nan_at(7)), {}, "X_train holds non-finite.*index 7"),
        (_data(X_val=np.full((5, *SHAPE), np.inf, np.float32)), {}, "X_val holds non-finite"),
    ],
)
def test_bad_input_is_caught_before_any_work(monkeypatch, data, kwargs, match):
    def no_work(*a, **k):
        raise AssertionError("the model was initialised before the input was checked")

    monkeypatch.setattr(ThreeLayerConvNet, "init", no_work)
    monkeypatch.setattr(jax, "jit", no_work)
    with pytest.raises(ValueError, match=match):
        Solver(SMALL, data, **kwargs)


@pytest.mark.parametrize("below", [False, True], ids=["a file", "below a file"])
def test_a_checkpoint_dir_that_is_or_is_below_a_file_is_refused_before_any_work(
    monkeypatch, tmp_path, below
):
    def no_work(*a, **k):
        raise AssertionError("the model was initialised before the input was checked")

    monkeypatch.setattr(ThreeLayerConvNet, "init", no_work)
    (tmp_path / "afile").write_text("x")
    where = tmp_path / "afile" / "sub" if below else tmp_path / "afile"
    with pytest.raises(ValueError, match=r"checkpoint_dir=.* (is a file|cannot be made)"):
        Solver(SMALL, _data(), checkpoint_dir=where)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"micro_batches": 3, "batch_size": 10}, "micro_batches=3 must divide batch_size=10"),
        ({"resume": True}, "resume=True needs a checkpoint_dir"),
        ({"run_config": {"f": object()}}, "run_config must be JSON-able"),
        ({"sampling": "shuffle"}, "sampling must be one of"),
        ({"select_best": "yes"}, "select_best must be True or False"),
        ({"optimizer": "adam"}, "optimizer must be an optax transformation"),
        ({"schedule": 0.1}, "schedule must be a function"),
        ({"checkpoint_every_s": 0}, "checkpoint_every_s"),
    ],
)
def test_each_setting_and_each_pair_of_settings_is_checked(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Solver(SMALL, _data(), **kwargs)


def test_settings_name_an_unknown_or_missing_argument():
    given = {name: None for name in ARGUMENTS if name != "seed"}
    with pytest.raises(TypeError, match=r"unknown settings \['sed'\], missing \['seed'\]"):
        SolverSettings.checked(**given, sed=0)


def test_check_accuracy_and_predict_check_their_input():
    solver = Solver(SMALL, _data(), verbose=False)
    with pytest.raises(ValueError, match="differ in length"):
        solver.check_accuracy(np.zeros((4, *SHAPE)), np.zeros(3, int))
    with pytest.raises(ValueError, match=r"X has shape \(4, 3, 8\)"):
        solver.predict(np.zeros((4, 3, 8)))


def test_given_params_are_not_donated():
    params, state = SMALL.init(jax.random.key(0))
    solver = Solver(SMALL, _data(), params=params, state=state, num_epochs=1, verbose=False)
    solver.train()
    assert not params["conv1"]["w"].is_deleted()  # the solver trains on its own copy
    assert np.isfinite(np.asarray(params["conv1"]["w"])).all()


def test_params_without_state_needs_no_batchnorm():
    model = VGGNet(input_dim=SHAPE, num_filters=(2,), blocks=(1,), hidden_dims=())
    params, _ = model.init(jax.random.key(0))
    with pytest.raises(ValueError, match="state"):
        Solver(model, _data(), params=params)


# ------------------------------------------------------------------------------ augment


def _augment_run(data, augment, seed=0):
    solver = Solver(
        MODEL, data, update_rule="adam", optim_config={"learning_rate": 1e-3}, batch_size=BATCH,
        num_epochs=1, num_train_samples=20, verbose=False, seed=seed, augment=augment,
    )  # fmt: skip
    solver.train()
    return solver


def test_augment_transforms_each_minibatch_inside_the_step():
    """Training on X with a flipping augment is training on flipped X: same minibatches,
    same dropout keys, the same losses; one compile; its key is its own, one per step."""
    data = synthetic_data(N_TRAIN, N_VAL, shape=SHAPE)
    flipped = dict(data, X_train=data["X_train"][..., ::-1].copy())
    keys = []

    def flip(key, X):
        jax.debug.callback(lambda k: keys.append(np.asarray(k)), jax.random.key_data(key))
        return X[..., ::-1]

    with_augment = _augment_run(data, flip)
    jax.effects_barrier()
    plain = _augment_run(flipped, None)
    np.testing.assert_allclose(with_augment.loss_history, plain.loss_history, rtol=1e-5)
    assert with_augment.trace_counts["train_step"] == 1
    assert len(keys) == with_augment.num_iterations
    assert len({k.tobytes() for k in keys}) == len(keys)  # a fresh key every step
    dropout_keys = [
        jax.random.key_data(jax.random.fold_in(with_augment.train_state.key, t))
        for t in range(with_augment.num_iterations)
    ]
    assert not any(np.array_equal(k, d) for k in keys for d in dropout_keys)
    meta = with_augment.checkpoint_metadata()
    assert (
        "flip" in meta["solver"]["augment"]
        and plain.checkpoint_metadata()["solver"]["augment"] is None
    )


def test_augment_random_crop_flip_trains():
    from jcnn.augment import random_crop_flip

    data = synthetic_data(N_TRAIN, N_VAL, shape=SHAPE)
    a = _augment_run(data, random_crop_flip)
    b = _augment_run(data, random_crop_flip)
    assert np.isfinite(a.loss_history).all()
    assert a.loss_history == b.loss_history  # reproducible


def test_augment_must_be_a_function_that_keeps_the_shape():
    data = synthetic_data(N_TRAIN, N_VAL, shape=SHAPE)
    with pytest.raises(ValueError, match="augment must be a function"):
        Solver(MODEL, data, augment="crop")
    with pytest.raises(ValueError, match="augment must keep the minibatch's shape"):
        _augment_run(data, lambda key, X: X[:, :, :4, :4])


def test_a_checks_clock_starts_once_the_steps_before_it_are_done():
    """Steps run asynchronously; a check's ``seconds`` (which the apps subtract as time
    outside training) is taken once the queued steps have finished (their losses read
    back), else their time would count as the check's."""
    data = synthetic_data(N_TRAIN, N_VAL, shape=SHAPE)
    solver = Solver(
        MODEL, data, batch_size=BATCH, num_epochs=EPOCHS, print_every=100, verbose=False
    )
    evaluate, seen = solver._evaluate, []

    def recording(elapsed):
        seen.append((solver.iteration, len(solver.loss_history)))
        evaluate(elapsed)

    solver._evaluate = recording
    solver.train()
    assert len(seen) == EPOCHS + 1
    for iteration, losses_read in seen:
        assert losses_read == iteration


def test_a_network_too_wide_for_the_accuracy_checks_is_refused_before_its_first_update(
    monkeypatch,
):
    """A batch of 2 fit, the accuracy checks' chunks of 100 images did not: the run trained
    an update and then stopped at its first accuracy check; the check's chunk is now traced
    (not run) when the Solver is made."""
    import jcnn._validate

    data = synthetic_data(20, 10, shape=SHAPE)
    model = ThreeLayerConvNet(input_dim=SHAPE, num_filters=8, hidden_dim=16)
    monkeypatch.setattr(jcnn._validate, "memory_bytes", lambda: 2**16)  # 64 KiB
    with pytest.raises(jcnn._validate.MemoryLimitError, match="more than the 64.0 KiB") as info:
        Solver(model, data, batch_size=2, num_epochs=1, verbose=False)
    assert info.value.during == "predicting 100 images at a time"
    monkeypatch.setattr(jcnn._validate, "memory_bytes", lambda: 2**30)
    solver = Solver(model, data, batch_size=2, num_epochs=1, verbose=False)
    solver.train()  # the same run, with memory for its checks
    assert solver.iteration == 10


def test_an_accuracy_check_whose_arrays_fit_one_by_one_but_not_together_is_refused(
    monkeypatch,
):
    """Each layer checks its own arrays: the conv's padded input and output (517 KiB here)
    fit in 545 KiB, but the prediction program holds the batchnorm's and pool's results
    beside them (586 KiB): the run trained an update, then ran out of memory at its first
    accuracy check. XLA's count of the compiled program is compared too."""
    import jcnn._validate
    from jcnn.models import VGGNet

    data = synthetic_data(20, 10, shape=SHAPE)
    model = VGGNet(input_dim=SHAPE, num_filters=(16,), blocks=(1,), hidden_dims=(8,),
                   dtype=jnp.float32)  # fmt: skip
    monkeypatch.setattr(jcnn._validate, "memory_bytes", lambda: 545 * 2**10)
    with pytest.raises(jcnn._validate.MemoryLimitError) as info:
        Solver(model, data, batch_size=2, num_epochs=1, verbose=False)
    assert str(info.value).startswith("the compiled prediction of 100 images needs ")
    assert info.value.during == "predicting 100 images at a time"
