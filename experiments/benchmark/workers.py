"""The timed workers: one (model, batch size, impl) in this process.

A worker builds the model (fixed ``--seed``), draws float32 data once and keeps it on the
device, times the first call (trace + compile + one step), runs ``--warmup`` untimed steps,
then times ``--repeats`` steps one by one (:func:`run_worker`). :func:`make_jax_step` is the
JAX step as a user writes it; :mod:`experiments.profile_step` times the same step.

The update is Adam for the cs231n models; for airbench it is SGD with Nesterov momentum 0.85
(airbench's momentum) on every trainable parameter, in both frameworks: one learning rate, no
weight decay, none of airbench's parameter groups or schedules, since what a step costs is
its forward and backward pass. As in airbench, the whitening filters are frozen (an optax
``set_to_zero`` group; ``requires_grad=False`` in torch) and so are the batchnorm scales
(jcnn's batchnorm has none; torch's are fixed at 1).
"""

from __future__ import annotations

import math
import os
import statistics
import time

from experiments.benchmark.machine import OthersCpu, jax_platform, read_loadavg, torch_platform
from experiments.benchmark.options import (
    AIRBENCH,
    BF16_IMPLS,
    FLAGS,
    IMPLS,
    JAX_IMPLS,
    PRESETS,
    TORCH_IMPLS,
    model_config,
    unsupported,
)


def make_data(model: str, batch_size: int, seed: int):
    """Fixed-seed float32 images (NCHW) and int labels as numpy arrays."""
    import numpy as np

    cfg = model_config(model)
    rng = np.random.default_rng(seed + 1)
    x = rng.standard_normal((batch_size, *cfg["input_dim"]), dtype=np.float32)
    y = rng.integers(0, cfg["num_classes"], size=(batch_size,), dtype=np.int32)
    return x, y


def _timed_steps(step, sync, repeats: int, warmup: int) -> dict:
    t0 = time.perf_counter()
    sync(step())
    first_call = time.perf_counter() - t0
    for _ in range(warmup):
        sync(step())
    times = []
    with OthersCpu() as others:
        load_before = read_loadavg()
        for _ in range(repeats):
            t0 = time.perf_counter()
            out = sync(step())
            times.append(time.perf_counter() - t0)
    return {
        "first_call_s": first_call,
        "step_s": times,
        "last": out,
        "load_before": load_before,
        "load_after": read_loadavg(),
        "others_cpu_frac": others.frac,
    }


def make_jax_model(model: str, impl: str):
    """``(net, kwargs)``: the jcnn model of ``model`` at the flags' sizes
    (:func:`~experiments.benchmark.options.model_config`) on ``impl``'s layers, and its
    constructor arguments."""
    import jax.numpy as jnp

    import jcnn.models

    reason = unsupported(model, [impl])
    if reason:
        raise ValueError(reason)
    cfg = model_config(model)
    layers = "reference" if impl == "reference" else "jcnn"
    kwargs = dict(cfg, layers=layers, dtype=jnp.float32)
    for name in ("conv_impl", "pool_impl"):
        if FLAGS[name].value is not None:
            kwargs[name] = FLAGS[name].value
    return getattr(jcnn.models, PRESETS[model].MODEL_CLASS)(**kwargs), kwargs


def make_jax_optimizer(model: str, params):
    """The optax optimiser of ``model``'s step (module docs).

    Args:
        model: one of the benchmark's models.
        params: the model's parameters (for airbench, to name the frozen whitening filters).

    Returns:
        ``optax.adam(--learning_rate)`` with optax's defaults for the cs231n models; for
        airbench, Nesterov SGD of momentum 0.85 at ``--learning_rate`` on every parameter
        but ``params['whiten']['w']``, which stays as it is.
    """
    import optax

    if model != "airbench":
        return optax.adam(FLAGS.learning_rate, b1=0.9, b2=0.999, eps=1e-8)
    labels = {
        layer: {k: "frozen" if (layer, k) == ("whiten", "w") else "sgd" for k in leaves}
        for layer, leaves in params.items()
    }
    momentum = AIRBENCH.momentum
    return optax.multi_transform(
        {
            "sgd": optax.sgd(FLAGS.learning_rate, momentum=momentum, nesterov=True),
            "frozen": optax.set_to_zero(),
        },
        labels,
    )


def run_solver_worker(model: str, batch_size: int) -> dict:
    """Two epochs of :class:`jcnn.solver.Solver` on random CIFAR-sized data (see the module
    docs); the second epoch is the measurement."""
    import jax
    import numpy as np

    from jcnn.augment import random_crop_flip
    from jcnn.solver import Solver

    net, kwargs = make_jax_model(model, "solver")
    cfg = model_config(model)
    rng = np.random.default_rng(FLAGS.seed + 1)
    n_train, n_val = FLAGS.solver_num_train, 1000
    X = rng.standard_normal((n_train + n_val, *cfg["input_dim"]), dtype=np.float32)
    y = rng.integers(0, cfg["num_classes"], size=n_train + n_val).astype(np.int64)
    data = {
        "X_train": X[:n_train],
        "y_train": y[:n_train],
        "X_val": X[n_train:],
        "y_val": y[n_train:],
    }
    marks = []
    solver = Solver(
        net,
        data,
        update_rule="adam",
        optim_config={"learning_rate": FLAGS.learning_rate},
        batch_size=batch_size,
        num_epochs=2,
        num_train_samples=1000,
        verbose=False,
        seed=FLAGS.seed,
        augment=random_crop_flip if FLAGS.solver_augment else None,
        on_epoch_end=lambda solver, epoch: marks.append(time.perf_counter()),
    )
    with OthersCpu() as others:
        start = time.perf_counter()
        solver.train()
    ipe = solver.iterations_per_epoch
    # eval_history "seconds": time into train() when each accuracy check began.
    train_s = (start + solver.eval_history[2]["seconds"]) - marks[1]
    step = train_s / ipe
    return {
        "first_call_s": marks[0] - start,
        "step_s": [step],
        "epoch_s": marks[2] - marks[1],
        "epoch_train_s": train_s,
        "iterations_per_epoch": ipe,
        "first_loss": solver.loss_history[0],
        "last_loss": solver.loss_history[-1],
        "n_params": int(sum(p.size for p in jax.tree_util.tree_leaves(solver.params))),
        "load_before": None,
        "load_after": read_loadavg(),
        "others_cpu_frac": others.frac,
        "platform": {
            **jax_platform(kwargs),
            "augment": FLAGS.solver_augment,
            "num_train": n_train,
        },
    }


def make_jax_step(model: str, impl: str, batch_size: int):
    """The jcnn/reference training step of ``model`` on fixed data, as a user writes it
    (the optimiser of :func:`make_jax_optimizer`):
    returns ``(step, sync, carry, losses, model_kwargs, hlo_text)``; ``step()`` runs one
    update in place on ``carry`` (params, state, opt_state, key), ``sync(out)`` waits for it
    and records its loss in ``losses``, ``hlo_text()`` is the compiled step's HLO."""
    import jax
    import jax.numpy as jnp
    import optax

    from jcnn.precision import mixed_precision_loss

    net, kwargs = make_jax_model(model, impl)
    # float32, or the network in bfloat16 (parameters, optimiser and loss stay float32)
    loss_fn = mixed_precision_loss(net, "bfloat16" if impl in BF16_IMPLS else None)

    # -- the training step, as a user writes it --------------------------------------------
    params, state = net.init(jax.random.PRNGKey(FLAGS.seed))
    optimizer = make_jax_optimizer(model, params)
    opt_state = optimizer.init(params)

    def train_step(params, state, opt_state, key, x, y):
        key, subkey = jax.random.split(key)
        (loss, state), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, state, x, y, key=subkey
        )
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return params, state, opt_state, key, loss

    train_step = jax.jit(train_step, donate_argnums=(0, 1, 2, 3))
    # ----------------------------------------------------------------------------------------

    x_np, y_np = make_data(model, batch_size, FLAGS.seed)
    x, y = jax.device_put(jnp.asarray(x_np)), jax.device_put(jnp.asarray(y_np))
    key = jax.random.PRNGKey(FLAGS.seed + 2)
    carry = [params, state, opt_state, key]
    losses = []

    def step():
        out = train_step(*carry, x, y)
        carry[:] = out[:4]
        return out

    def sync(out):
        jax.block_until_ready(out)
        losses.append(out[4])
        return out

    def hlo_text() -> str:
        return train_step.lower(*carry, x, y).compile().as_text()

    return step, sync, carry, losses, kwargs, hlo_text


def make_jax_derivative(model: str, impl: str, batch_size: int):
    """A derivative of ``model``'s loss in its parameters on fixed data, in a fixed random
    direction v: ``--step=hvp``, the Hessian-vector product ``jax.jvp(jax.grad(loss),
    (params,), (v,))``; ``--step=jvp``, the directional derivative ``jax.jvp(loss, (params,),
    (v,))`` (forward mode, which only the autodiff twin has). In the shape of
    :func:`make_jax_step`'s result (``carry[0]`` the parameters; the "loss" recorded is the
    product's norm, or the directional derivative)."""
    import jax
    import jax.numpy as jnp

    from jcnn.precision import mixed_precision_loss

    net, kwargs = make_jax_model(model, impl)
    loss_fn = mixed_precision_loss(net, "bfloat16" if impl in BF16_IMPLS else None)
    params, state = net.init(jax.random.PRNGKey(FLAGS.seed))
    keys = iter(jax.random.split(jax.random.PRNGKey(FLAGS.seed + 3), len(jax.tree.leaves(params))))
    direction = jax.tree.map(lambda p: jax.random.normal(next(keys), p.shape, p.dtype), params)
    x_np, y_np = make_data(model, batch_size, FLAGS.seed)
    x, y = jax.device_put(jnp.asarray(x_np)), jax.device_put(jnp.asarray(y_np))
    key = jax.random.PRNGKey(FLAGS.seed + 2)

    def loss(p):
        return loss_fn(p, state, x, y, key=key)[0]

    @jax.jit
    def derivative(params, v):
        if FLAGS.step == "jvp":
            return jax.jvp(loss, (params,), (v,))
        product = jax.jvp(jax.grad(loss), (params,), (v,))[1]
        squares = [jnp.sum(jnp.square(t.astype(jnp.float32))) for t in jax.tree.leaves(product)]
        return product, jnp.sqrt(sum(squares))

    carry, values = [params, state], []

    def sync(out):
        jax.block_until_ready(out)
        values.append(out[1])
        return out

    def hlo_text() -> str:
        return derivative.lower(params, direction).compile().as_text()

    return (lambda: derivative(params, direction)), sync, carry, values, kwargs, hlo_text


def run_jax_worker(model: str, impl: str, batch_size: int) -> dict:
    import jax

    make = make_jax_step if FLAGS.step == "train" else make_jax_derivative
    step, sync, carry, losses, kwargs, _ = make(model, impl, batch_size)
    result = _timed_steps(step, sync, FLAGS.repeats, FLAGS.warmup)
    result.update(
        first_loss=float(losses[0]),
        last_loss=float(losses[-1]),
        n_params=int(sum(p.size for p in jax.tree_util.tree_leaves(carry[0]))),
        platform=jax_platform(kwargs),
    )
    return result


def run_torch_worker(model: str, impl: str, batch_size: int) -> dict:
    import torch

    from experiments import torch_models

    if FLAGS.torch_threads > 0:
        torch.set_num_threads(FLAGS.torch_threads)
    device = FLAGS.torch_device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(FLAGS.seed)
    cfg = model_config(model)
    net = getattr(torch_models, PRESETS[model].MODEL_CLASS)(**cfg).to(device).train()
    if model == "airbench":
        momentum = AIRBENCH.momentum
        optimizer = torch_models.make_sgd_nesterov(net, FLAGS.learning_rate, momentum)
    else:
        optimizer = torch_models.make_adam(net, FLAGS.learning_rate)
    loss_fn = torch.compile(net.loss) if impl == "torch_compile" else net.loss
    autocast = torch.autocast(device.split(":")[0], torch.bfloat16, enabled=impl in BF16_IMPLS)

    x_np, y_np = make_data(model, batch_size, FLAGS.seed)
    x = torch.from_numpy(x_np).to(device)
    y = torch.from_numpy(y_np).long().to(device)
    losses = []

    def step():
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = loss_fn(x, y)
        loss.backward()
        optimizer.step()
        return loss

    def sync(loss):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        losses.append(loss.detach())
        return loss

    result = _timed_steps(step, sync, FLAGS.repeats, FLAGS.warmup)
    result.update(
        first_loss=float(losses[0]),
        last_loss=float(losses[-1]),
        n_params=int(sum(p.numel() for p in net.parameters())),
        platform=torch_platform(device, cfg),
    )
    return result


def run_worker(model: str, impl: str, batch_size: int) -> dict:
    """Time ``repeats`` steps of one (model, impl, batch size) in this process."""
    import jcnn.cpu

    setting = FLAGS.huge_pages  # jcnn's workers tune their process, as its training apps do
    if setting == "all" or (setting == "jcnn" and impl in JAX_IMPLS):
        jcnn.cpu.tune()
    if impl == "solver":
        result = run_solver_worker(model, batch_size)
    elif impl in JAX_IMPLS:
        result = run_jax_worker(model, impl, batch_size)
    elif impl in TORCH_IMPLS:
        result = run_torch_worker(model, impl, batch_size)
    else:
        raise ValueError(f"unknown impl {impl!r}; expected one of {IMPLS}")
    result.pop("last", None)
    steps = result["step_s"]
    return {
        "model": model,
        "impl": impl,
        "batch_size": batch_size,
        "round": FLAGS.round,
        "ok": True,
        "repeats": FLAGS.repeats,
        "warmup": FLAGS.warmup,
        "min_s": min(steps) if steps else None,
        "median_s": statistics.median(steps) if steps else None,
        "cpu_count": os.cpu_count(),
        "pid": os.getpid(),
        "huge_pages": jcnn.cpu.status(),
        **result,
        "loss_finite": math.isfinite(result["first_loss"]) and math.isfinite(result["last_loss"]),
    }
