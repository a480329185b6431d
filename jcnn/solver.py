"""The cs231n ``Solver``, driven by optax and one jit-compiled training step.

>>> solver = Solver(model, data, update_rule='adam', optim_config={'learning_rate': 1e-3},
...                 lr_decay=0.95, batch_size=100, num_epochs=10, print_every=100)  # doctest: +SKIP
>>> solver.train()                                                               # doctest: +SKIP
(Iteration 1 / 4900) loss: 2.302585
(Epoch 0 / 10) train acc: 0.103000; val_acc: 0.098000
...
>>> solver.check_accuracy(data['X_test'], data['y_test'])                        # doctest: +SKIP

How it maps onto the assignment:

- ``update_rule`` is an optax transformation with the assignment's defaults, passed
  explicitly because optax's own differ: ``sgd`` → ``optax.sgd(lr)``; ``sgd_momentum`` →
  ``optax.sgd(lr, momentum=0.9)``; ``rmsprop`` → ``optax.rmsprop(lr, decay=0.99, eps=1e-8,
  eps_in_sqrt=False)`` (eps added outside the square root); ``adam`` → ``optax.adam(lr,
  b1=0.9, b2=0.999, eps=1e-8)``. ``optim_config`` keys as in cs231n: ``learning_rate``,
  ``momentum``, ``decay_rate``, ``beta1``, ``beta2``, ``epsilon``.
- ``lr_decay`` multiplies the learning rate after every epoch (``lr_schedule=
  'exponential'``, the assignment's): update ``t`` uses ``lr · lr_decay ** (t //
  iterations_per_epoch)``. ``lr_schedule='cosine'`` anneals it to 0 over the run instead:
  ``lr · (1 + cos(π t / num_iterations)) / 2``. Either way, ``warmup_epochs > 0`` ramps it
  up linearly over that many epochs first (update ``t < W`` uses ``lr · (t + 1) / W``;
  the cosine then spans the remaining ``num_iterations - W`` updates). See
  :func:`make_schedule`.
- One training step is one ``jax.jit``-compiled pure function
  ``(params, state, opt_state, X, y, key) -> (params, state, opt_state, loss)`` with the
  first three buffers donated. Minibatches are drawn on the host with replacement
  (``rng.choice(num_train, batch_size)``, as cs231n does), always ``batch_size`` examples,
  so a whole run compiles the step once. Accuracy is computed by a jitted prediction step
  over fixed-size chunks (the last one zero-padded and cut off again), also compiled once.
- Randomness: ``seed`` seeds the host generator (minibatches, accuracy subsamples) and the
  JAX key; the model is initialised from one half of the key and iteration ``t`` drops out
  with ``jax.random.fold_in(dropout_key, t)``. Same seed, same run, bit for bit (on CPU),
  interrupted and resumed or not.
- Augmentation: ``augment``, a function ``(key, X) -> X`` of the same shape (e.g.
  :func:`jcnn.augment.random_crop_flip`), transforms each minibatch inside the jitted step,
  before the loss, with its own key ``jax.random.fold_in(step_key, AUGMENT_FOLD)`` (the
  dropout keys are untouched). Accuracy checks see the data as given.
- As in cs231n, accuracy is checked after the first iteration (epoch 0) and at the end of
  every epoch; the parameters with the best validation accuracy are kept in
  ``best_params`` / ``best_state`` and become ``params`` / ``state`` when ``train`` ends.

Hooks for experiments (no subclassing): ``on_iteration`` callables get ``(solver,
iteration, loss)`` after every update (``iteration`` counts from 1; asking for them makes
each step wait for its loss), ``on_epoch_end`` callables get ``(solver, epoch)`` after each
accuracy check (and after that point's checkpoint), when ``solver.eval_history[-1]`` holds
that check's record.

Checkpoints and resuming (``checkpoint_dir``): every epoch end writes
``epoch_{epoch:03d}.npz`` and, with ``checkpoint_every=k``, every k-th update in between
writes ``step_{iteration:08d}.npz``; each with its JSON sidecar (see :mod:`jcnn.checkpoint`:
atomic, checksummed). A checkpoint holds everything the run needs to continue bit for bit:
params, state, opt_state, best_params/best_state and the dropout key (arrays), and the
iteration/epoch counters, the host generator's state (``bit_generator.state``), every
history, best_val_acc/best_epoch, the elapsed training time and the configuration (model
hyper-parameters, solver settings, data sizes, ``run_config``) in the sidecar. The two
newest checkpoints are always kept (so the previous one survives until the next is complete,
and a corrupt newest one has a fallback); the last ``keep_checkpoints`` epoch ones too (0:
every epoch's); other ones are deleted.

``resume='auto'`` (the default): a Solver whose ``checkpoint_dir`` holds a checkpoint
restores the newest one whose checksums hold when it is built (a corrupt one is moved aside
with a :class:`~jcnn.checkpoint.CorruptCheckpointWarning` and the one before it is used),
and :meth:`train` continues from there: a run killed at any moment and started again with
the same arguments ends with exactly the parameters and histories of a run never
interrupted. A checkpoint of a differently configured run (another model shape, seed,
update rule, batch size, data size, ...) is a :class:`CheckpointMismatchError` naming what
differs; ``num_epochs`` may change (to extend a run; with ``lr_schedule='cosine'`` the
rest of the run then follows the longer cosine). ``resume=True`` insists on a
checkpoint (FileNotFoundError without one); ``resume=False`` starts from scratch and refuses
a ``checkpoint_dir`` that already holds checkpoints. :meth:`restore` restores one by hand.

Data parallel (``mesh``, a 1-D mesh from :func:`jcnn.parallel.make_mesh`): the train and
eval steps are jitted with shardings: every minibatch is split over the mesh's devices on
axis 0, parameters, optimiser state and batchnorm statistics are replicated, and XLA turns
the batch reductions into all-reduces, so the loss, the gradients and the batchnorm
statistics are those of the *global* batch (batchnorm's ``jnp.mean`` over the sharded batch
axis is a global mean). Same seed, same run on any number of devices, up to round-off in the
order of the sums. ``batch_size`` is the global batch and must divide evenly over the
devices (ValueError otherwise). With several processes (hosts, after
``jax.distributed.initialize``), every process draws the same global indices from the shared
seed and gathers only its own rows (:func:`jcnn.parallel.process_slice`); every process
reads checkpoints (the ``checkpoint_dir`` must then be on a filesystem they share), only
process 0 writes files (checkpoints, ``nonfinite.json``).

Mixed precision (``compute_dtype='bfloat16'``): the network runs in bfloat16, while the
parameters, optimiser state, batchnorm statistics, gradients and the loss stay float32 (see
:func:`jcnn.parallel.mixed_precision_loss`); accuracy checks use the same compute dtype.

Numerics: each step also reports whether its loss is finite; the flag is read back with the
losses (no extra host sync), and the first bad step stops training with a
:class:`NonFiniteLossError` naming the iteration. The parameters and batchnorm statistics
are verified finite (a finite loss can come with an update that overflowed) at every
``print_every``-th iteration, before every accuracy check and checkpoint, and at the end —
not after every step, where reading every parameter again cost up to 10 % of a step. So a
bad update is caught either by the next step's loss or at the next verification; the report
then says after which iteration the parameters were last verified (``print_every=1``
verifies every step and names the exact update). What was seen (the iteration, loss,
learning rate, the minibatch's indices and labels, recent losses, the last good checkpoint)
goes to ``err.report`` and, with a ``checkpoint_dir``, to ``nonfinite.json`` beside it
(``checkpoint_dir/../nonfinite.json``). Checkpoints are written only after the losses and
parameters before them were checked, and never hold non-finite values. Under
``jax.config.update('jax_debug_nans', True)`` JAX's own FloatingPointError (naming the
primitive) is reported the same way.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import operator
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jcnn import parallel
from jcnn._validate import positive_int
from jcnn.checkpoint import (
    atomic_write,
    flatten_tree,
    latest_checkpoint,
    load_checkpoint,
    remove_stale_temporaries,
    save_checkpoint,
    sidecar_path,
    to_plain_json,
    verify_checkpoint,
)

UPDATE_RULES = ("sgd", "sgd_momentum", "rmsprop", "adam")
LR_SCHEDULES = ("exponential", "cosine")

# fold_in data of the augmentation key: far from the small ints models fold in for dropout.
AUGMENT_FOLD = 0x61756720

# cs231n's per-rule defaults (optim.py), in its config key names.
_DEFAULTS: dict[str, dict[str, float]] = {
    "sgd": {"learning_rate": 1e-2},
    "sgd_momentum": {"learning_rate": 1e-2, "momentum": 0.9},
    "rmsprop": {"learning_rate": 1e-2, "decay_rate": 0.99, "epsilon": 1e-8},
    "adam": {"learning_rate": 1e-3, "beta1": 0.9, "beta2": 0.999, "epsilon": 1e-8},
}

DATA_KEYS = ("X_train", "y_train", "X_val", "y_val")

# Version of what a Solver checkpoint holds (arrays and sidecar keys); resume needs this one.
CHECKPOINT_FORMAT = 2
CHECKPOINT_PATTERNS = ("epoch_*.npz", "step_*.npz")
_CHECKPOINT_NAME = re.compile(r"(epoch|step)_(\d+)\.npz")
RESUME_CHOICES = (True, False, "auto")


class NonFiniteLossError(FloatingPointError):
    """Training met a non-finite loss (or an update that made the parameters or batchnorm
    statistics non-finite). The message names the iteration; ``report`` holds what was seen
    (iteration, loss, learning rate, the minibatch's indices and labels, ...) and
    ``report_path`` the ``nonfinite.json`` it was written to (None without a
    ``checkpoint_dir``)."""

    def __init__(self, message: str, report: Mapping[str, Any] | None = None, report_path=None):
        super().__init__(message)
        self.report = dict(report or {})
        self.report_path = report_path


class CheckpointMismatchError(ValueError):
    """The checkpoint to resume from was made by a differently configured run;
    ``differences`` maps each differing setting (``'model.num_filters'``) to ``(in the
    checkpoint, now)``."""

    def __init__(self, message: str, differences: Mapping[str, tuple[Any, Any]]):
        super().__init__(message)
        self.differences = dict(differences)


_ABSENT = "<absent>"


def config_differences(saved: Any, current: Any, prefix: str = "") -> dict[str, tuple[Any, Any]]:
    """``{'dotted.key': (saved, current)}`` for every leaf of two nested dicts of plain JSON
    values that differs (a key only one side has counts as ``'<absent>'`` on the other)."""
    if isinstance(saved, Mapping) and isinstance(current, Mapping):
        out: dict[str, tuple[Any, Any]] = {}
        for k in sorted(set(saved) | set(current), key=str):
            out.update(
                config_differences(saved.get(k, _ABSENT), current.get(k, _ABSENT), f"{prefix}{k}.")
            )
        return out
    return {} if saved == current else {prefix.rstrip("."): (saved, current)}


def describe_differences(differences: Mapping[str, tuple[Any, Any]], limit: int = 8) -> str:
    """``'model.num_filters: [4] in the checkpoint, [8] now; ...'``."""
    items = [
        f"{k}: {json.dumps(a)} in the checkpoint, {json.dumps(b)} now"
        for k, (a, b) in list(differences.items())[:limit]
    ]
    more = len(differences) - limit
    return "; ".join(items) + (f"; and {more} more" if more > 0 else "")


def _json_float(v: float) -> float | str:
    """A float for strict JSON: NaN and infinities as the strings 'nan', 'inf', '-inf'."""
    v = float(v)
    return v if math.isfinite(v) else repr(v)


def _all_finite(tree: Any) -> jax.Array:
    """One boolean: every floating leaf of ``tree`` is finite (inside jit)."""
    checks = [
        jnp.all(jnp.isfinite(leaf))
        for leaf in jax.tree_util.tree_leaves(tree)
        if jnp.issubdtype(jnp.asarray(leaf).dtype, jnp.inexact)
    ]
    return jnp.all(jnp.stack(checks)) if checks else jnp.bool_(True)


def _nonfinite_names(arrays: Mapping[str, np.ndarray]) -> list[str]:
    return [
        name
        for name, a in arrays.items()
        if np.issubdtype(a.dtype, np.inexact) and not np.isfinite(a).all()
    ]


def make_optimizer(
    update_rule: str, optim_config: Mapping[str, Any] | None, schedule
) -> tuple[optax.GradientTransformation, dict[str, float]]:
    """The optax transformation for a cs231n ``update_rule`` and the full config it used.

    ``schedule`` is the learning rate (a float or an optax schedule); ``optim_config``'s
    ``learning_rate`` is ignored here (it is the schedule's initial value).
    """
    if update_rule not in UPDATE_RULES:
        raise ValueError(f"update_rule must be one of {UPDATE_RULES}, got {update_rule!r}")
    config = resolve_optim_config(update_rule, optim_config)
    if update_rule == "sgd":
        tx = optax.sgd(schedule)
    elif update_rule == "sgd_momentum":
        tx = optax.sgd(schedule, momentum=config["momentum"])
    elif update_rule == "rmsprop":
        tx = optax.rmsprop(
            schedule, decay=config["decay_rate"], eps=config["epsilon"], eps_in_sqrt=False
        )
    else:
        tx = optax.adam(schedule, b1=config["beta1"], b2=config["beta2"], eps=config["epsilon"])
    return tx, config


def check_schedule(lr_schedule: str, lr_decay: float) -> None:
    """ValueError unless ``lr_schedule`` is known and ``lr_decay`` fits it."""
    if lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {lr_schedule!r}")
    if lr_schedule == "cosine" and lr_decay != 1.0:
        raise ValueError(
            f"lr_decay={lr_decay} applies to lr_schedule='exponential' only; "
            "lr_schedule='cosine' anneals to 0 by itself (pass lr_decay=1.0)"
        )


def make_schedule(
    learning_rate: float,
    *,
    lr_schedule: str = "exponential",
    lr_decay: float = 1.0,
    iterations_per_epoch: int,
    num_iterations: int,
    warmup_iterations: int = 0,
) -> optax.Schedule:
    """The learning rate of update ``t`` (0-based), an optax schedule.

    ``'exponential'``: ``lr · lr_decay ** (t // iterations_per_epoch)`` (cs231n's per-epoch
    decay). ``'cosine'``: ``lr · (1 + cos(π · min(t', T') / T')) / 2`` with ``t' = t - W``,
    ``T' = num_iterations - W``: from ``lr`` down to 0 at ``t = num_iterations``
    (``lr_decay`` must be 1). ``W = warmup_iterations > 0`` first ramps linearly:
    ``lr · (t + 1) / W`` for ``t < W`` (the first update already moves; update ``W - 1``
    uses ``lr``).

    >>> f = make_schedule(0.1, lr_schedule='cosine', iterations_per_epoch=10,
    ...                   num_iterations=100, warmup_iterations=10)
    >>> [round(float(f(t)), 4) for t in (0, 9, 10, 55, 99)]
    [0.01, 0.1, 0.1, 0.05, 0.0]
    """
    check_schedule(lr_schedule, lr_decay)
    warmup = int(warmup_iterations)
    if warmup < 0 or warmup >= max(num_iterations, 1):
        raise ValueError(
            f"the warm-up must be shorter than the run: {warmup} warm-up iterations "
            f"of {num_iterations}"
        )
    lr = float(learning_rate)
    if lr_schedule == "exponential":
        decayed = optax.exponential_decay(
            init_value=lr, transition_steps=int(iterations_per_epoch), decay_rate=lr_decay,
            staircase=True,
        )  # fmt: skip
    else:
        span = num_iterations - warmup

        def decayed(t):
            done = jnp.clip((jnp.asarray(t, jnp.float32) - warmup) / span, 0.0, 1.0)
            return 0.5 * lr * (1.0 + jnp.cos(jnp.pi * done))

    if not warmup:
        return decayed

    def schedule(t):
        ramp = lr * (jnp.asarray(t, jnp.float32) + 1.0) / warmup
        return jnp.where(t < warmup, ramp, decayed(t))

    return schedule


def resolve_optim_config(update_rule: str, optim_config: Mapping[str, Any] | None) -> dict:
    """cs231n defaults for ``update_rule`` overridden by ``optim_config``; unknown keys and
    non-finite or out-of-range values raise ValueError."""
    if update_rule not in UPDATE_RULES:
        raise ValueError(f"update_rule must be one of {UPDATE_RULES}, got {update_rule!r}")
    if optim_config is None:
        optim_config = {}
    if not isinstance(optim_config, Mapping):
        raise ValueError(f"optim_config must be a dict, got {type(optim_config).__name__}")
    config = dict(_DEFAULTS[update_rule])
    unknown = sorted(set(optim_config) - set(config))
    if unknown:
        raise ValueError(
            f"optim_config has keys {unknown} that update_rule={update_rule!r} does not use "
            f"(it takes {sorted(config)})"
        )
    for k, v in optim_config.items():
        try:
            v = float(v)
        except (TypeError, ValueError):
            raise ValueError(f"optim_config[{k!r}] must be a float, got {v!r}") from None
        if not math.isfinite(v):
            raise ValueError(f"optim_config[{k!r}] must be finite, got {v!r}")
        config[k] = v
    if config["learning_rate"] <= 0:
        raise ValueError(
            f"optim_config['learning_rate'] must be > 0, got {config['learning_rate']}"
        )
    for k in ("momentum", "decay_rate", "beta1", "beta2"):
        if k in config and not 0.0 <= config[k] < 1.0:
            raise ValueError(f"optim_config[{k!r}] must be in [0, 1), got {config[k]}")
    if "epsilon" in config and config["epsilon"] < 0:
        raise ValueError(f"optim_config['epsilon'] must be >= 0, got {config['epsilon']}")
    return config


def _callbacks(name: str, value: Callable | Iterable[Callable] | None) -> list[Callable]:
    if value is None:
        return []
    hooks = [value] if callable(value) else list(value)
    for h in hooks:
        if not callable(h):
            raise ValueError(f"{name} must be a callable or a list of callables, got {h!r}")
    return hooks


def _check_finite(name: str, X: np.ndarray, rows: int = 4096) -> None:
    """ValueError if ``X`` holds NaN or inf (checked in blocks of rows: no full-size mask)."""
    bad: list[int] = []
    for start in range(0, X.shape[0], rows):
        block = X[start : start + rows].reshape(min(rows, X.shape[0] - start), -1)
        ok = np.isfinite(block).all(axis=1)
        if not ok.all():
            bad.extend((start + np.flatnonzero(~ok)).tolist())
    if bad:
        raise ValueError(
            f"{name} holds non-finite values (NaN or inf) in {len(bad)} image(s), "
            f"first at index {bad[0]}"
        )


def _name(fn: Callable) -> str:
    """A readable name for a function (``functools.partial`` included)."""
    inner = getattr(fn, "func", fn)
    return getattr(inner, "__qualname__", None) or repr(fn)


def _copy_tree(tree: Any) -> Any:
    """Fresh device buffers (so later donation of the original leaves them intact)."""
    return jax.tree_util.tree_map(jnp.array, tree)


class Solver:
    """Train a :mod:`jcnn.models` model on ``data`` the cs231n way (see the module docs).

    ``data`` holds ``X_train, y_train, X_val, y_val`` (host arrays; images shaped like the
    model's ``input_dim``, integer labels in ``[0, num_classes)``); other keys are ignored.
    ``params``/``state`` start training from given values instead of ``model.init``.
    ``lr_decay``, ``lr_schedule`` (``'exponential'`` or ``'cosine'``), ``warmup_epochs``:
    the learning rate over the run (module docs, :func:`make_schedule`).
    ``augment(key, X) -> X`` transforms each training minibatch inside the jitted step.
    ``checkpoint_dir``, ``checkpoint_every``, ``keep_checkpoints``, ``resume``: checkpoints
    and resuming (module docs); ``run_config`` (JSON-able, e.g. the command line's flags) is
    recorded in every checkpoint's sidecar as ``run_config``. ``mesh`` (a 1-D mesh from
    :func:`jcnn.parallel.make_mesh`) trains data-parallel over its devices, ``compute_dtype``
    (``'bfloat16'``) in mixed precision (module docs). ``test_time_flip``: every accuracy
    (and :meth:`predict`) takes the class of the summed scores of each image and its
    left-right mirror (the test-time counterpart of flip augmentation; twice the compute).

    Attributes: ``params``, ``state``, ``opt_state``; ``epoch``; ``loss_history`` (one float
    per iteration), ``train_acc_history``, ``val_acc_history``, ``lr_history`` (the learning
    rate of the update just before each accuracy check), ``eval_history`` (one dict per
    check: epoch, iteration, train_acc, val_acc, lr, seconds); ``best_val_acc``,
    ``best_epoch``, ``best_params``, ``best_state``; ``iterations_per_epoch``,
    ``num_iterations``; ``trace_counts`` (how often each jitted step was traced);
    ``iteration`` (updates done); ``resumed_from`` (None, or the checkpoint restored:
    ``{'path', 'iteration', 'epoch', 'elapsed_s'}``); ``last_checkpoint`` (the newest
    checkpoint written or restored); ``elapsed_s`` (seconds spent in :meth:`train`, over
    every session of a resumed run).
    """

    def __init__(
        self,
        model: Any,
        data: Mapping[str, Any],
        *,
        update_rule: str = "sgd",
        optim_config: Mapping[str, Any] | None = None,
        lr_decay: float = 1.0,
        lr_schedule: str = "exponential",
        warmup_epochs: float = 0.0,
        batch_size: int = 100,
        num_epochs: int = 10,
        num_train_samples: int | None = 1000,
        num_val_samples: int | None = None,
        print_every: int = 10,
        verbose: bool = True,
        checkpoint_dir: str | os.PathLike | None = None,
        checkpoint_every: int | None = None,
        keep_checkpoints: int = 0,
        resume: bool | str = "auto",
        run_config: Mapping[str, Any] | None = None,
        seed: int = 0,
        params: Any = None,
        state: Any = None,
        on_iteration: Callable | Iterable[Callable] | None = None,
        on_epoch_end: Callable | Iterable[Callable] | None = None,
        augment: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
        mesh: jax.sharding.Mesh | None = None,
        compute_dtype: Any = None,
        test_time_flip: bool = False,
    ):
        for attr in ("init", "apply", "loss", "check_input", "num_classes"):
            if not hasattr(model, attr):
                raise ValueError(f"model must be a jcnn.models model; it has no {attr!r}")
        self.model = model

        # ---- plain arguments
        self.update_rule = update_rule
        self.optim_config = resolve_optim_config(update_rule, optim_config)
        try:
            self.lr_decay = float(lr_decay)
        except (TypeError, ValueError):
            raise ValueError(f"lr_decay must be a float > 0, got {lr_decay!r}") from None
        if not (math.isfinite(self.lr_decay) and self.lr_decay > 0):
            raise ValueError(f"lr_decay must be a finite float > 0, got {lr_decay!r}")
        check_schedule(lr_schedule, self.lr_decay)
        self.lr_schedule = lr_schedule
        try:
            self.warmup_epochs = float(warmup_epochs)
        except (TypeError, ValueError):
            raise ValueError(f"warmup_epochs must be a float >= 0, got {warmup_epochs!r}") from None
        if not (math.isfinite(self.warmup_epochs) and self.warmup_epochs >= 0):
            raise ValueError(f"warmup_epochs must be a finite float >= 0, got {warmup_epochs!r}")
        self.batch_size = positive_int("batch_size", batch_size)
        self.num_epochs = positive_int("num_epochs", num_epochs)
        self.num_train_samples = (
            None
            if num_train_samples is None
            else positive_int("num_train_samples", num_train_samples)
        )
        self.num_val_samples = (
            None if num_val_samples is None else positive_int("num_val_samples", num_val_samples)
        )
        self.print_every = positive_int("print_every", print_every)
        self.verbose = bool(verbose)
        self.checkpoint_dir = None if checkpoint_dir is None else Path(checkpoint_dir)
        self.checkpoint_every = (
            None if checkpoint_every is None else positive_int("checkpoint_every", checkpoint_every)
        )
        if isinstance(keep_checkpoints, bool) or not isinstance(keep_checkpoints, int | np.integer):
            raise ValueError(f"keep_checkpoints must be an int >= 0, got {keep_checkpoints!r}")
        if keep_checkpoints < 0:
            raise ValueError(f"keep_checkpoints must be an int >= 0, got {keep_checkpoints!r}")
        self.keep_checkpoints = int(keep_checkpoints)
        if not any(resume is c or (isinstance(c, str) and resume == c) for c in RESUME_CHOICES):
            raise ValueError(f"resume must be True, False or 'auto', got {resume!r}")
        if resume is True and self.checkpoint_dir is None:
            raise ValueError("resume=True needs a checkpoint_dir to resume from")
        self.resume = resume
        if run_config is not None and not isinstance(run_config, Mapping):
            raise ValueError(f"run_config must be a dict or None, got {type(run_config).__name__}")
        try:
            self.run_config = None if run_config is None else to_plain_json(dict(run_config))
        except TypeError as e:
            raise ValueError(f"run_config must be JSON-able: {e}") from None
        if isinstance(seed, bool):
            raise ValueError(f"seed must be an int, got {seed!r}")
        try:
            self.seed = operator.index(seed)
        except TypeError:
            raise ValueError(f"seed must be an int, got {seed!r}") from None
        self.on_iteration = _callbacks("on_iteration", on_iteration)
        self.on_epoch_end = _callbacks("on_epoch_end", on_epoch_end)
        if augment is not None and not callable(augment):
            raise ValueError(f"augment must be a function (key, X) -> X or None, got {augment!r}")
        self.augment = augment
        if not isinstance(test_time_flip, bool | np.bool_):
            raise ValueError(f"test_time_flip must be True or False, got {test_time_flip!r}")
        if test_time_flip and len(model.input_shape) != 3:
            raise ValueError(
                "test_time_flip mirrors images (C, H, W); this model takes inputs shaped "
                f"{model.input_shape}"
            )
        self.test_time_flip = bool(test_time_flip)
        if mesh is not None:
            if not isinstance(mesh, jax.sharding.Mesh) or mesh.axis_names != (parallel.DATA_AXIS,):
                raise ValueError(
                    f"mesh must be a 1-D jax.sharding.Mesh with axis {parallel.DATA_AXIS!r} "
                    f"(see jcnn.parallel.make_mesh), got {mesh!r}"
                )
            parallel.check_batch_divisible(self.batch_size, mesh)
            self._rows = parallel.process_slice(mesh, self.batch_size)  # this process's rows
        self.mesh = mesh
        self.compute_dtype = parallel.resolve_compute_dtype(compute_dtype)

        # ---- data, checked once on the host
        if not isinstance(data, Mapping):
            raise ValueError(
                f"data must be a dict with keys {DATA_KEYS}, got {type(data).__name__}"
            )
        missing = [k for k in DATA_KEYS if k not in data]
        if missing:
            raise ValueError(f"data is missing {missing}: it must hold {list(DATA_KEYS)}")
        self.X_train, self.y_train = self._check_split(data, "train")
        self.X_val, self.y_val = self._check_split(data, "val")

        # ---- schedule, optimiser, parameters
        self.num_train = self.X_train.shape[0]
        self.iterations_per_epoch = max(self.num_train // self.batch_size, 1)
        self.num_iterations = self.num_epochs * self.iterations_per_epoch
        self.warmup_iterations = round(self.warmup_epochs * self.iterations_per_epoch)
        self.schedule = make_schedule(
            self.optim_config["learning_rate"],
            lr_schedule=self.lr_schedule,
            lr_decay=self.lr_decay,
            iterations_per_epoch=self.iterations_per_epoch,
            num_iterations=self.num_iterations,
            warmup_iterations=self.warmup_iterations,
        )
        self.optimizer, _ = make_optimizer(update_rule, self.optim_config, self.schedule)

        self._rng = np.random.default_rng(self.seed)
        init_key, self._dropout_key = jax.random.split(jax.random.key(self.seed))
        if params is None:
            if state is not None:
                raise ValueError("state given without params: pass both or neither")
            self.params, self.state = model.init(init_key)
        else:
            if state is None and getattr(model, "batchnorm_layers", tuple)():
                raise ValueError(
                    "params given without state, but the model has batchnorm: pass the "
                    "state (running statistics) that goes with them"
                )
            self.params = _copy_tree(params)
            self.state = _copy_tree({} if state is None else state)
        leaves = jax.tree_util.tree_leaves(self.params)
        if not leaves:
            raise ValueError("params has no arrays")
        self._x_dtype = np.dtype(leaves[0].dtype)
        self.opt_state = self.optimizer.init(self.params)
        self._replicate()

        self.trace_counts = {"train_step": 0, "eval_step": 0}
        self._train_step = self._build_train_step()
        self._eval_step = self._build_eval_step()
        self._all_finite = jax.jit(_all_finite)
        self._reset()
        self.resumed_from: dict[str, Any] | None = None
        self.last_checkpoint: Path | None = None
        self._resume_at_start()
        if jax.process_count() > 1:  # every process must continue from the same point
            from jax.experimental import multihost_utils

            multihost_utils.assert_equal(
                np.int64(self.iteration),
                "processes restored different checkpoints (or only some found one): put "
                "checkpoint_dir on a filesystem every process sees, or start over",
            )

    # ------------------------------------------------------------------------- set-up

    def _check_split(self, data: Mapping[str, Any], split: str) -> tuple[np.ndarray, np.ndarray]:
        xk, yk = f"X_{split}", f"y_{split}"
        X, y = np.asarray(data[xk]), np.asarray(data[yk])
        if X.ndim < 1 or X.shape[0] == 0:
            raise ValueError(f"{xk} is empty (shape {X.shape})")
        if y.ndim != 1:
            raise ValueError(f"{yk} must be a vector of labels (N,), got shape {y.shape}")
        if X.shape[0] != y.shape[0]:
            raise ValueError(
                f"{xk} and {yk} differ in length: {X.shape[0]} images vs {y.shape[0]} labels"
            )
        self.model.check_input(X, xk)
        if not (np.issubdtype(X.dtype, np.floating) or np.issubdtype(X.dtype, np.integer)):
            raise ValueError(f"{xk} must hold numbers, got dtype {X.dtype}")
        if np.issubdtype(X.dtype, np.floating):
            _check_finite(xk, X)
        if not np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_:
            raise ValueError(f"{yk} must hold integer class labels, got dtype {y.dtype}")
        k = self.model.num_classes
        out = (y < 0) | (y >= k)
        if out.any():
            i = int(np.flatnonzero(out)[0])
            raise ValueError(
                f"{yk} holds labels outside [0, {k}) (num_classes of the model): "
                f"{int(out.sum())} of them, e.g. {yk}[{i}] = {int(y[i])}"
            )
        return X, y.astype(np.int32)

    def _build_train_step(self):
        model, optimizer, augment = self.model, self.optimizer, self.augment
        loss_fn = parallel.mixed_precision_loss(model, self.compute_dtype)  # model.loss if None

        def train_step(params, state, opt_state, X, y, key):
            self.trace_counts["train_step"] += 1  # runs only while tracing
            if augment is not None:
                X_aug = augment(jax.random.fold_in(key, AUGMENT_FOLD), X)
                if jnp.shape(X_aug) != X.shape:
                    raise ValueError(
                        f"augment must keep the minibatch's shape {X.shape}, "
                        f"returned {jnp.shape(X_aug)}"
                    )
                X = X_aug
            (loss, new_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(
                params, state, X, y, key=key
            )
            updates, opt_state = optimizer.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
            # Read back with the loss: no extra sync. (The parameters are verified apart,
            # every print_every steps: see _verify_finite.)
            return params, new_state, opt_state, loss, jnp.isfinite(loss)

        if self.mesh is None:
            return jax.jit(train_step, donate_argnums=(0, 1, 2))
        # The minibatch split over the devices, everything else replicated (outputs too).
        rep, batch = parallel.replicated_sharding(self.mesh), parallel.batch_sharding(self.mesh)
        return jax.jit(
            train_step,
            donate_argnums=(0, 1, 2),
            in_shardings=(rep, rep, rep, batch, batch, rep),
            out_shardings=rep,
        )

    def _build_eval_step(self):
        model, compute_dtype, flip = self.model, self.compute_dtype, self.test_time_flip

        def eval_step(params, state, X):
            self.trace_counts["eval_step"] += 1
            params = parallel.predict_params(params, compute_dtype)
            scores, _ = model.apply(params, state, X, train=False)
            if flip:  # the mean of the scores of each image and of its mirror image
                mirrored, _ = model.apply(params, state, X[..., ::-1], train=False)
                scores = scores + mirrored
            return jnp.argmax(scores, axis=1).astype(jnp.int32)

        if self.mesh is None:
            return jax.jit(eval_step)
        rep, batch = parallel.replicated_sharding(self.mesh), parallel.batch_sharding(self.mesh)
        # Predictions come back replicated: every process reads all of them.
        return jax.jit(eval_step, in_shardings=(rep, rep, batch), out_shardings=rep)

    def _replicate(self) -> None:
        """With a mesh: params, state, opt_state (and best_*) replicated on its devices."""
        if self.mesh is None:
            return
        self.params, self.state, self.opt_state = parallel.replicate(
            (self.params, self.state, self.opt_state), self.mesh
        )
        if getattr(self, "best_params", None) is not None:
            self.best_params, self.best_state = parallel.replicate(
                (self.best_params, self.best_state), self.mesh
            )

    def _reset(self) -> None:
        """Book-keeping, as cs231n's ``_reset`` (called by the constructor)."""
        self.epoch = 0
        self.iteration = 0  # updates done so far, over every call to train()
        self.best_val_acc = 0.0
        self.best_epoch: int | None = None
        self.best_params: Any = None
        self.best_state: Any = None
        self.loss_history: list[float] = []
        self.train_acc_history: list[float] = []
        self.val_acc_history: list[float] = []
        self.lr_history: list[float] = []
        self.eval_history: list[dict[str, Any]] = []
        self.elapsed_s = 0.0
        # (device loss, device finite flag, iteration (1-based), minibatch indices) of the
        # updates whose loss has not been read back yet.
        self._pending: list[tuple[jax.Array, jax.Array, int, np.ndarray]] = []
        # The iteration after which params and state were last verified finite, and the
        # minibatch indices of the updates since then (for the report if they are not).
        self._verified_iteration = 0
        self._unverified: list[tuple[int, np.ndarray]] = []

    # ------------------------------------------------------------------------ training

    def lr_at(self, iteration: int) -> float:
        """The learning rate of update number ``iteration`` (0-based)."""
        return float(self.schedule(int(iteration)))

    def _flush_losses(self) -> None:
        """Read the pending losses back (one transfer) into ``loss_history``, checking each
        step's finite flag: the first bad step raises :class:`NonFiniteLossError`."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        values = jax.device_get([(loss, ok) for loss, ok, _, _ in pending])
        for (loss, ok), (_, _, iteration, idx) in zip(values, pending, strict=True):
            self.loss_history.append(float(loss))
            if not bool(ok):
                self._stop_nonfinite(iteration, float(loss), idx, detected_after=pending[-1][2])

    def _verify_finite(self) -> None:
        """Check the pending losses, then that params and state are finite (one jitted
        reduction, one host read); non-finite ones raise :class:`NonFiniteLossError`."""
        self._flush_losses()
        if self.iteration == self._verified_iteration:
            return
        if not bool(self._all_finite((self.params, self.state))):
            self._stop_nonfinite(
                self.iteration, self.loss_history[-1], self._unverified[-1][1], params=True
            )
        self._verified_iteration = self.iteration
        self._unverified = []

    def _sample_indices(self) -> np.ndarray:
        return self._rng.choice(self.num_train, self.batch_size)

    def _step(self) -> jax.Array:
        """One update on a random minibatch; returns the (device) loss, queued for reading
        back with its finite flag."""
        idx = self._sample_indices()  # the global minibatch, the same in every process
        rows = idx if self.mesh is None else idx[self._rows]  # this process's rows only
        X, y = np.asarray(self.X_train[rows], dtype=self._x_dtype), self.y_train[rows]
        if self.mesh is not None:
            X, y = parallel.put_batch(self.mesh, (X, y), self.batch_size)
        key = jax.random.fold_in(self._dropout_key, self.iteration)
        try:
            self.params, self.state, self.opt_state, loss, ok = self._train_step(
                self.params, self.state, self.opt_state, X, y, key
            )
        except FloatingPointError as e:  # jax_debug_nans: JAX names the primitive
            self._flush_losses()  # an earlier bad step is the one to report
            self._stop_nonfinite(self.iteration + 1, float("nan"), idx, cause=e)
        self.iteration += 1
        self._pending.append((loss, ok, self.iteration, idx))
        self._unverified.append((self.iteration, idx))
        return loss

    def train(self) -> None:
        """Run the remaining minibatch updates of the run: from ``self.iteration`` (0, or
        where the restored checkpoint stopped) to ``num_iterations`` (``num_epochs`` epochs
        of ``iterations_per_epoch``), then make the best parameters the current ones. A
        finished run has nothing left to do. Raises :class:`NonFiniteLossError` at the first
        non-finite step (see the module docs)."""
        clock0 = time.perf_counter() - self.elapsed_s
        for t in range(self.iteration, self.num_iterations):
            self._step()
            if self.on_iteration:
                self._flush_losses()
                for hook in self.on_iteration:
                    hook(self, self.iteration, self.loss_history[-1])
            if t % self.print_every == 0:
                self._verify_finite()
            if self.verbose and t % self.print_every == 0:
                print(
                    f"(Iteration {t + 1} / {self.num_iterations}) loss: {self.loss_history[-1]:f}",
                    flush=True,
                )
            epoch_end = (t + 1) % self.iterations_per_epoch == 0
            if epoch_end:
                self.epoch += 1
            evaluate = t == 0 or t == self.num_iterations - 1 or epoch_end
            if evaluate:
                self._evaluate(time.perf_counter() - clock0)
            if self.checkpoint_dir is not None and (
                epoch_end or (self.checkpoint_every and (t + 1) % self.checkpoint_every == 0)
            ):
                self.elapsed_s = time.perf_counter() - clock0
                self.save_checkpoint()
            if evaluate:
                for hook in self.on_epoch_end:
                    hook(self, self.epoch)
        self._verify_finite()
        self.elapsed_s = time.perf_counter() - clock0
        if self.best_params is not None:
            self.params = _copy_tree(self.best_params)
            self.state = _copy_tree(self.best_state)

    def _evaluate(self, elapsed: float) -> None:
        self._verify_finite()
        train_acc = self.check_accuracy(
            self.X_train, self.y_train, num_samples=self.num_train_samples
        )
        val_acc = self.check_accuracy(self.X_val, self.y_val, num_samples=self.num_val_samples)
        lr = self.lr_at(self.iteration - 1)
        self.train_acc_history.append(train_acc)
        self.val_acc_history.append(val_acc)
        self.lr_history.append(lr)
        self.eval_history.append(
            {
                "epoch": self.epoch,
                "iteration": self.iteration,
                "loss": self.loss_history[-1],
                "train_acc": train_acc,
                "val_acc": val_acc,
                "lr": lr,
                "seconds": elapsed,
            }
        )
        if self.verbose:
            print(
                f"(Epoch {self.epoch} / {self.num_epochs}) train acc: {train_acc:f}; "
                f"val_acc: {val_acc:f}",
                flush=True,
            )
        if val_acc > self.best_val_acc or self.best_params is None:
            self.best_val_acc = val_acc
            self.best_epoch = self.epoch
            self.best_params = _copy_tree(self.params)
            self.best_state = _copy_tree(self.state)

    # ------------------------------------------------------------------------ numerics

    def nonfinite_report_path(self) -> Path | None:
        """Where a non-finite step is reported: ``nonfinite.json`` beside the
        ``checkpoint_dir`` (None without one)."""
        return (
            None if self.checkpoint_dir is None else self.checkpoint_dir.parent / "nonfinite.json"
        )

    def _stop_nonfinite(
        self,
        iteration: int,
        loss: float,
        idx: np.ndarray,
        *,
        detected_after: int | None = None,
        cause: BaseException | None = None,
        params: bool = False,
    ) -> None:
        """Write the report and raise. ``params``: the loss was finite but the parameters
        or statistics after ``iteration`` are not (found at a verification)."""
        lr = self.lr_at(iteration - 1)
        epoch = (iteration - 1) // self.iterations_per_epoch + 1
        what = "parameters after the update (finite loss)" if params else "loss"
        verified = self._verified_iteration
        idx = np.asarray(idx)
        report = {
            "error": f"non-finite {what}",
            "iteration": iteration,
            "epoch": epoch,
            "num_iterations": self.num_iterations,
            "loss": _json_float(loss),
            "learning_rate": lr,
            "batch_indices": idx.tolist(),
            "batch_labels": self.y_train[idx].tolist(),
            "recent_losses": [_json_float(v) for v in self.loss_history[-20:]],
            "detected_after_iteration": iteration if detected_after is None else detected_after,
            # Params/state were verified finite after this iteration; any update since then
            # (their minibatches below) may be the one that made them non-finite.
            "params_verified_after_iteration": verified,
            "unverified_batch_indices": {
                str(t): np.asarray(i).tolist() for t, i in self._unverified if t <= iteration
            },
            "last_good_checkpoint": None
            if self.last_checkpoint is None
            else str(self.last_checkpoint),
            "update_rule": self.update_rule,
            "optim_config": self.optim_config,
            "seed": self.seed,
            "jax_debug_nans": bool(jax.config.jax_debug_nans),
            "cause": None if cause is None else f"{type(cause).__name__}: {cause}",
            "time": dt.datetime.now().isoformat(timespec="seconds"),
        }
        path = self.nonfinite_report_path()
        if path is not None and parallel.is_primary():
            text = json.dumps(report, indent=1) + "\n"
            atomic_write(path, lambda f: f.write(text.encode()))
        where = f"; details in {path}" if path is not None else ""
        kept = (
            f"; the last good checkpoint, {self.last_checkpoint}, is kept"
            if self.last_checkpoint is not None
            else ""
        )
        since = (
            f"; parameters last verified finite after iteration {verified}"
            if iteration - verified > 1
            else ""
        )
        raise NonFiniteLossError(
            f"non-finite {what} at iteration {iteration} / {self.num_iterations} (epoch {epoch}, "
            f"learning rate {lr:g}, loss {loss!r}){since}: training stopped{where}{kept}",
            report,
            path,
        ) from cause

    # ---------------------------------------------------------------------- evaluation

    def predict(self, X: Any, batch_size: int = 100, *, params=None, state=None) -> np.ndarray:
        """Predicted labels for ``X`` (test mode), in jitted chunks of ``batch_size``.

        Every chunk has ``batch_size`` rows (the last is zero-padded and the padding cut
        off), so any number of images reuses one compiled step. Defaults to the solver's
        current ``params``/``state``. With a ``mesh`` each chunk is split over its devices
        (``batch_size`` rounded up to a multiple of the device count).
        """
        batch_size = positive_int("batch_size", batch_size)
        if self.mesh is not None:
            batch_size = -(-batch_size // self.mesh.size) * self.mesh.size
        X = np.asarray(X)
        self.model.check_input(X)
        params = self.params if params is None else params
        state = self.state if state is None else state
        n = X.shape[0]
        outs = []
        for start in range(0, n, batch_size):
            chunk = np.asarray(X[start : start + batch_size], dtype=self._x_dtype)
            if chunk.shape[0] < batch_size:
                pad = np.zeros((batch_size - chunk.shape[0], *chunk.shape[1:]), chunk.dtype)
                chunk = np.concatenate([chunk, pad])
            if self.mesh is not None:
                (chunk,) = parallel.shard_batch(self.mesh, chunk)
            outs.append(self._eval_step(params, state, chunk))
        preds = np.concatenate(jax.device_get(outs)) if outs else np.zeros((0,), np.int32)
        return preds[:n]

    def check_accuracy(
        self, X: Any, y: Any, num_samples: int | None = None, batch_size: int = 100, **kw
    ) -> float:
        """Fraction of ``X`` classified as ``y``; on ``num_samples`` images drawn at random
        (with replacement, from the solver's generator) when ``X`` has more."""
        X, y = np.asarray(X), np.asarray(y)
        if y.ndim != 1 or X.shape[0] != y.shape[0]:
            raise ValueError(
                f"X and y differ in length: X has shape {X.shape}, y has shape {y.shape}"
            )
        n = X.shape[0]
        if n == 0:
            raise ValueError("check_accuracy needs at least one image")
        if num_samples is not None and n > num_samples:
            mask = self._rng.choice(n, num_samples)
            X, y = X[mask], y[mask]
        return float(np.mean(self.predict(X, batch_size, **kw) == y))

    # ---------------------------------------------------------------------- checkpoints

    def _identity(self) -> dict[str, Any]:
        """The settings a checkpoint must share with this Solver to be resumed (as plain
        JSON): the model's hyper-parameters, the solver's (but ``num_epochs``), the data."""
        model = self.model
        model_config = dataclasses.asdict(model) if dataclasses.is_dataclass(model) else {}
        if model_config.get("label_smoothing") == 0.0:  # checkpoints from before the field
            del model_config["label_smoothing"]
        return to_plain_json(
            {
                "model": {"class": type(model).__name__, **model_config},
                "solver": {
                    "update_rule": self.update_rule,
                    "optim_config": self.optim_config,
                    "lr_decay": self.lr_decay,
                    # only when set, so runs match checkpoints from before the options
                    **(
                        {"lr_schedule": self.lr_schedule}
                        if self.lr_schedule != "exponential"
                        else {}
                    ),
                    **({"warmup_epochs": self.warmup_epochs} if self.warmup_epochs else {}),
                    "batch_size": self.batch_size,
                    "num_train_samples": self.num_train_samples,
                    "num_val_samples": self.num_val_samples,
                    "seed": self.seed,
                    "augment": None if self.augment is None else _name(self.augment),
                    # only when set, so float32 runs match checkpoints from before the option
                    **(
                        {"compute_dtype": self.compute_dtype.name}
                        if self.compute_dtype is not None
                        else {}
                    ),
                    # the val accuracy (and so the best parameters) depends on it
                    **({"test_time_flip": True} if self.test_time_flip else {}),
                },
                "data": {
                    "num_train": int(self.num_train),
                    "num_val": int(self.X_val.shape[0]),
                    "image_shape": list(self.X_train.shape[1:]),
                    "dtype": self._x_dtype.name,
                },
            }
        )

    def checkpoint_metadata(self) -> dict[str, Any]:
        """What the JSON sidecar of a checkpoint records (verifies pending losses and the
        parameters first)."""
        self._verify_finite()
        identity = self._identity()
        return {
            "format": CHECKPOINT_FORMAT,
            "epoch": self.epoch,
            "iteration": self.iteration,
            "num_epochs": self.num_epochs,
            "num_iterations": self.num_iterations,
            "iterations_per_epoch": self.iterations_per_epoch,
            "loss_history": self.loss_history,
            "train_acc_history": self.train_acc_history,
            "val_acc_history": self.val_acc_history,
            "lr_history": self.lr_history,
            "eval_history": self.eval_history,
            "best_val_acc": self.best_val_acc,
            "best_epoch": self.best_epoch,
            "has_best": self.best_params is not None,
            "host_rng": self._rng.bit_generator.state,
            "elapsed_s": self.elapsed_s,
            "model": identity["model"],
            "solver": {**identity["solver"], "num_epochs": self.num_epochs},
            "data": identity["data"],
            "run_config": self.run_config,
            "num_devices": 1 if self.mesh is None else int(self.mesh.size),  # may change
            "jax_version": jax.__version__,
        }

    def checkpoint_tree(self) -> dict[str, Any]:
        """The arrays a checkpoint holds: ``{'params', 'state', 'opt_state', 'best_params',
        'best_state', 'rng': {'dropout_key'}}`` (best = current before the first check)."""
        best = self.best_params is not None
        return {
            "params": self.params,
            "state": self.state,
            "opt_state": self.opt_state,
            "best_params": self.best_params if best else self.params,
            "best_state": self.best_state if best else self.state,
            "rng": {"dropout_key": jax.random.key_data(self._dropout_key)},
        }

    def _default_checkpoint_path(self) -> Path:
        if self.checkpoint_dir is None:
            raise ValueError("no path given and the solver has no checkpoint_dir")
        if self.iteration % self.iterations_per_epoch == 0:
            return (
                self.checkpoint_dir / f"epoch_{self.iteration // self.iterations_per_epoch:03d}.npz"
            )
        return self.checkpoint_dir / f"step_{self.iteration:08d}.npz"

    def save_checkpoint(self, path: str | os.PathLike | None = None) -> Path:
        """Write the current checkpoint (default ``checkpoint_dir/epoch_{epoch:03d}.npz`` at
        an epoch end, else ``step_{iteration:08d}.npz``, then prune old ones). Pending losses
        are checked first, and non-finite arrays are never written: both raise
        :class:`NonFiniteLossError`. With several processes only process 0 writes (the others
        check the same values and return the same path)."""
        meta = self.checkpoint_metadata()  # reads the pending losses back: may raise
        host = jax.device_get(self.checkpoint_tree())
        bad = _nonfinite_names(flatten_tree(host))
        if bad:
            raise NonFiniteLossError(
                f"refusing to checkpoint non-finite values at iteration {self.iteration}: "
                f"{bad[:5]}{'...' if len(bad) > 5 else ''}"
            )
        default = path is None
        target = self._default_checkpoint_path() if default else Path(path)
        if not parallel.is_primary():
            self.last_checkpoint = target
            return target
        out = save_checkpoint(target, host, meta)
        self.last_checkpoint = out
        if default:
            self._prune_checkpoints()
        return out

    def _checkpoints_on_disk(self) -> list[tuple[int, str, Path]]:
        """``(iteration, kind, npz)`` of the complete checkpoints in ``checkpoint_dir``."""
        out = []
        if self.checkpoint_dir is not None and self.checkpoint_dir.is_dir():
            for pattern in CHECKPOINT_PATTERNS:
                for npz in self.checkpoint_dir.glob(pattern):
                    m = _CHECKPOINT_NAME.fullmatch(npz.name)
                    if m and sidecar_path(npz).is_file():
                        n = int(m.group(2))
                        it = n * self.iterations_per_epoch if m.group(1) == "epoch" else n
                        out.append((it, m.group(1), npz))
        return sorted(out)

    def _prune_checkpoints(self) -> None:
        """Keep the newest ``keep_checkpoints`` epoch checkpoints (all if 0), the newest
        checkpoint, and at least one before it (so a corrupt newest one has a fallback);
        delete the rest, each sidecar first (the sidecar marks a checkpoint complete)."""
        found = [npz for _, _, npz in self._checkpoints_on_disk()]
        epochs = [npz for npz in found if npz.name.startswith("epoch_")]
        keep = set(epochs[-self.keep_checkpoints :] if self.keep_checkpoints else epochs)
        keep.update(found[-1:])
        for npz in reversed(found):
            if len(keep) >= 2:
                break
            keep.add(npz)
        for npz in found:
            if npz not in keep:
                sidecar_path(npz).unlink(missing_ok=True)
                npz.unlink(missing_ok=True)

    # ------------------------------------------------------------------------- resuming

    def _resume_at_start(self) -> None:
        if self.checkpoint_dir is None:
            return
        if self.resume is False:
            if self._checkpoints_on_disk():
                raise ValueError(
                    f"checkpoint_dir {self.checkpoint_dir} already holds checkpoints; with "
                    "resume=False the solver would mix two runs: empty it, choose another "
                    "checkpoint_dir, or pass resume='auto' to continue from them"
                )
            return
        found = latest_checkpoint(self.checkpoint_dir, CHECKPOINT_PATTERNS)
        if found is None:
            if self.resume is True:
                raise FileNotFoundError(
                    f"resume=True, but {self.checkpoint_dir} holds no complete checkpoint"
                )
            return
        self._restore(*found)

    def restore(self, path: str | os.PathLike | None = None) -> Path:
        """Restore a checkpoint written by :meth:`save_checkpoint` (default: the newest good
        one in ``checkpoint_dir``): parameters, optimiser state, best parameters, counters,
        histories and both random generators, so that :meth:`train` continues the run
        exactly. Raises :class:`CheckpointMismatchError` if it belongs to a differently
        configured run, :class:`~jcnn.checkpoint.CorruptCheckpointError` if its checksums
        fail. Returns its path."""
        if path is None:
            if self.checkpoint_dir is None:
                raise ValueError("no path given and the solver has no checkpoint_dir")
            found = latest_checkpoint(self.checkpoint_dir, CHECKPOINT_PATTERNS)
            if found is None:
                raise FileNotFoundError(f"{self.checkpoint_dir} holds no complete checkpoint")
            return self._restore(*found)
        npz = Path(path)
        npz = npz if npz.suffix == ".npz" else npz.with_name(npz.name + ".npz")
        return self._restore(npz, verify_checkpoint(npz))

    def _restore(self, npz: Path, meta: Mapping[str, Any]) -> Path:
        if meta.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(
                f"checkpoint {npz} has format {meta.get('format')!r}, not {CHECKPOINT_FORMAT}: "
                "it was written by another jcnn version and lacks what resuming needs"
            )
        saved = {k: meta.get(k) for k in ("model", "solver", "data")}
        saved["solver"] = {k: v for k, v in (saved["solver"] or {}).items() if k != "num_epochs"}
        differences = config_differences(saved, self._identity())
        if differences:
            raise CheckpointMismatchError(
                f"checkpoint {npz} was made by a differently configured run: "
                f"{describe_differences(differences)}. Resume with the settings it was made "
                "with, or start the new run in another checkpoint_dir",
                differences,
            )
        tree, _ = load_checkpoint(npz, self.checkpoint_tree(), verify=False)
        self.params = _copy_tree(tree["params"])
        self.state = _copy_tree(tree["state"])
        self.opt_state = _copy_tree(tree["opt_state"])
        if meta["has_best"]:
            self.best_params = _copy_tree(tree["best_params"])
            self.best_state = _copy_tree(tree["best_state"])
        else:
            self.best_params = self.best_state = None
        self._replicate()
        self._dropout_key = jax.random.wrap_key_data(
            jnp.asarray(tree["rng"]["dropout_key"]), impl=jax.random.key_impl(self._dropout_key)
        )
        rng = np.random.default_rng()
        rng.bit_generator.state = meta["host_rng"]
        self._rng = rng
        self.iteration = int(meta["iteration"])
        self.epoch = int(meta["epoch"])
        self.loss_history = [float(v) for v in meta["loss_history"]]
        self.train_acc_history = [float(v) for v in meta["train_acc_history"]]
        self.val_acc_history = [float(v) for v in meta["val_acc_history"]]
        self.lr_history = [float(v) for v in meta["lr_history"]]
        self.eval_history = [dict(r) for r in meta["eval_history"]]
        self.best_val_acc = float(meta["best_val_acc"])
        self.best_epoch = meta["best_epoch"]
        self.elapsed_s = float(meta["elapsed_s"])
        self._pending = []
        self._verified_iteration = self.iteration  # checkpoints hold only finite values
        self._unverified = []
        self.last_checkpoint = npz
        self.resumed_from = {
            "path": str(npz),
            "iteration": self.iteration,
            "epoch": self.epoch,
            "elapsed_s": self.elapsed_s,
        }
        if self.checkpoint_dir is not None and parallel.is_primary():
            remove_stale_temporaries(self.checkpoint_dir)
        if self.verbose:
            print(
                f"(Resuming from {npz}: iteration {self.iteration} / {self.num_iterations}, "
                f"epoch {self.epoch} / {self.num_epochs})",
                flush=True,
            )
        return npz
