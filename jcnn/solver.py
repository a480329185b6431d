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
- ``lr_decay`` multiplies the learning rate after every epoch: ``lr`` is
  ``optax.exponential_decay(lr, iterations_per_epoch, lr_decay, staircase=True)``.
- One training step is one ``jax.jit``-compiled pure function
  ``(params, state, opt_state, X, y, key) -> (params, state, opt_state, loss)`` with the
  first three buffers donated. Minibatches are drawn on the host with replacement
  (``rng.choice(num_train, batch_size)``, as cs231n does), always ``batch_size`` examples,
  so a whole run compiles the step once. Accuracy is computed by a jitted prediction step
  over fixed-size chunks (the last one zero-padded and cut off again), also compiled once.
- Randomness: ``seed`` seeds the host generator (minibatches, accuracy subsamples) and the
  JAX key; the model is initialised from one half of the key and iteration ``t`` drops out
  with ``jax.random.fold_in(dropout_key, t)``. Same seed, same run, bit for bit (on CPU).
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
accuracy check, when ``solver.eval_history[-1]`` holds that check's record. With
``checkpoint_dir`` every epoch end writes ``epoch_{epoch:03d}.npz`` (params, state,
opt_state) and its JSON sidecar (epoch, histories, configuration); see
:mod:`jcnn.checkpoint`.
"""

from __future__ import annotations

import dataclasses
import math
import operator
import os
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jcnn.checkpoint import save_checkpoint

UPDATE_RULES = ("sgd", "sgd_momentum", "rmsprop", "adam")

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


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    try:
        v = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be a positive int, got {value!r}") from None
    if v <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return v


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
    ``augment(key, X) -> X`` transforms each training minibatch inside the jitted step.

    Attributes: ``params``, ``state``, ``opt_state``; ``epoch``; ``loss_history`` (one float
    per iteration), ``train_acc_history``, ``val_acc_history``, ``lr_history`` (the learning
    rate of the update just before each accuracy check), ``eval_history`` (one dict per
    check: epoch, iteration, train_acc, val_acc, lr, seconds); ``best_val_acc``,
    ``best_epoch``, ``best_params``, ``best_state``; ``iterations_per_epoch``,
    ``num_iterations``; ``trace_counts`` (how often each jitted step was traced).
    """

    def __init__(
        self,
        model: Any,
        data: Mapping[str, Any],
        *,
        update_rule: str = "sgd",
        optim_config: Mapping[str, Any] | None = None,
        lr_decay: float = 1.0,
        batch_size: int = 100,
        num_epochs: int = 10,
        num_train_samples: int | None = 1000,
        num_val_samples: int | None = None,
        print_every: int = 10,
        verbose: bool = True,
        checkpoint_dir: str | os.PathLike | None = None,
        seed: int = 0,
        params: Any = None,
        state: Any = None,
        on_iteration: Callable | Iterable[Callable] | None = None,
        on_epoch_end: Callable | Iterable[Callable] | None = None,
        augment: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
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
        self.batch_size = _positive_int("batch_size", batch_size)
        self.num_epochs = _positive_int("num_epochs", num_epochs)
        self.num_train_samples = (
            None
            if num_train_samples is None
            else _positive_int("num_train_samples", num_train_samples)
        )
        self.num_val_samples = (
            None if num_val_samples is None else _positive_int("num_val_samples", num_val_samples)
        )
        self.print_every = _positive_int("print_every", print_every)
        self.verbose = bool(verbose)
        self.checkpoint_dir = None if checkpoint_dir is None else Path(checkpoint_dir)
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
        self.schedule = optax.exponential_decay(
            init_value=self.optim_config["learning_rate"],
            transition_steps=self.iterations_per_epoch,
            decay_rate=self.lr_decay,
            staircase=True,
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

        self.trace_counts = {"train_step": 0, "eval_step": 0}
        self._train_step = self._build_train_step()
        self._eval_step = self._build_eval_step()
        self._reset()

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
            (loss, new_state), grads = jax.value_and_grad(model.loss, has_aux=True)(
                params, state, X, y, key=key
            )
            updates, opt_state = optimizer.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
            return params, new_state, opt_state, loss

        return jax.jit(train_step, donate_argnums=(0, 1, 2))

    def _build_eval_step(self):
        model = self.model

        def eval_step(params, state, X):
            self.trace_counts["eval_step"] += 1
            scores, _ = model.apply(params, state, X, train=False)
            return jnp.argmax(scores, axis=1).astype(jnp.int32)

        return jax.jit(eval_step)

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
        self._pending_losses: list[jax.Array] = []

    # ------------------------------------------------------------------------ training

    def lr_at(self, iteration: int) -> float:
        """The learning rate of update number ``iteration`` (0-based)."""
        return float(self.schedule(int(iteration)))

    def _flush_losses(self) -> None:
        if self._pending_losses:
            self.loss_history.extend(float(v) for v in jax.device_get(self._pending_losses))
            self._pending_losses = []

    def _sample_batch(self) -> tuple[np.ndarray, np.ndarray]:
        idx = self._rng.choice(self.num_train, self.batch_size)
        return np.asarray(self.X_train[idx], dtype=self._x_dtype), self.y_train[idx]

    def _step(self) -> jax.Array:
        """One update on a random minibatch; returns the (device) loss."""
        X, y = self._sample_batch()
        key = jax.random.fold_in(self._dropout_key, self.iteration)
        self.params, self.state, self.opt_state, loss = self._train_step(
            self.params, self.state, self.opt_state, X, y, key
        )
        self.iteration += 1
        return loss

    def train(self) -> None:
        """Run ``num_epochs`` epochs of ``iterations_per_epoch`` minibatch updates each."""
        start = time.perf_counter()
        for t in range(self.num_iterations):
            loss = self._step()
            self._pending_losses.append(loss)
            if self.on_iteration:
                self._flush_losses()
                for hook in self.on_iteration:
                    hook(self, self.iteration, self.loss_history[-1])
            if self.verbose and t % self.print_every == 0:
                self._flush_losses()
                print(
                    f"(Iteration {t + 1} / {self.num_iterations}) loss: {self.loss_history[-1]:f}",
                    flush=True,
                )
            epoch_end = (t + 1) % self.iterations_per_epoch == 0
            if epoch_end:
                self.epoch += 1
            if t == 0 or t == self.num_iterations - 1 or epoch_end:
                self._evaluate(time.perf_counter() - start, checkpoint=epoch_end)
        self._flush_losses()
        if self.best_params is not None:
            self.params = _copy_tree(self.best_params)
            self.state = _copy_tree(self.best_state)

    def _evaluate(self, elapsed: float, *, checkpoint: bool) -> None:
        self._flush_losses()
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
        if checkpoint and self.checkpoint_dir is not None:
            self.save_checkpoint()
        for hook in self.on_epoch_end:
            hook(self, self.epoch)

    # ---------------------------------------------------------------------- evaluation

    def predict(self, X: Any, batch_size: int = 100, *, params=None, state=None) -> np.ndarray:
        """Predicted labels for ``X`` (test mode), in jitted chunks of ``batch_size``.

        Every chunk has ``batch_size`` rows (the last is zero-padded and the padding cut
        off), so any number of images reuses one compiled step. Defaults to the solver's
        current ``params``/``state``.
        """
        batch_size = _positive_int("batch_size", batch_size)
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

    def checkpoint_metadata(self) -> dict[str, Any]:
        """What the JSON sidecar of a checkpoint records."""
        self._flush_losses()
        model = self.model
        model_config = dataclasses.asdict(model) if dataclasses.is_dataclass(model) else {}
        return {
            "epoch": self.epoch,
            "iteration": self.iteration,
            "num_epochs": self.num_epochs,
            "num_iterations": self.num_iterations,
            "iterations_per_epoch": self.iterations_per_epoch,
            "loss_history": self.loss_history,
            "train_acc_history": self.train_acc_history,
            "val_acc_history": self.val_acc_history,
            "lr_history": self.lr_history,
            "best_val_acc": self.best_val_acc,
            "best_epoch": self.best_epoch,
            "model": {"class": type(model).__name__, **model_config},
            "solver": {
                "update_rule": self.update_rule,
                "optim_config": self.optim_config,
                "lr_decay": self.lr_decay,
                "batch_size": self.batch_size,
                "num_epochs": self.num_epochs,
                "num_train_samples": self.num_train_samples,
                "num_val_samples": self.num_val_samples,
                "seed": self.seed,
                "augment": None if self.augment is None else _name(self.augment),
            },
            "jax_version": jax.__version__,
        }

    def checkpoint_tree(self) -> dict[str, Any]:
        """The arrays a checkpoint holds: ``{'params', 'state', 'opt_state'}``."""
        return {"params": self.params, "state": self.state, "opt_state": self.opt_state}

    def save_checkpoint(self, path: str | os.PathLike | None = None) -> Path:
        """Write the current checkpoint (default ``checkpoint_dir/epoch_{epoch:03d}.npz``)."""
        if path is None:
            if self.checkpoint_dir is None:
                raise ValueError("no path given and the solver has no checkpoint_dir")
            path = self.checkpoint_dir / f"epoch_{self.epoch:03d}.npz"
        return save_checkpoint(path, self.checkpoint_tree(), self.checkpoint_metadata())
