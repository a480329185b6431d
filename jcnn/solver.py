"""The cs231n ``Solver``: the assignment's interface as a thin facade over :mod:`jcnn.train`
(the jitted step), :mod:`jcnn.optim` (optimisers, schedules), :mod:`jcnn.checkpoint`
(checkpoints, resuming) and :mod:`jcnn.nonfinite` (catching a non-finite loss).

>>> solver = Solver(model, data, update_rule='adam', optim_config={'learning_rate': 1e-3},
...                 lr_decay=0.95, batch_size=100, num_epochs=10, print_every=100)  # doctest: +SKIP
>>> solver.train()                                                               # doctest: +SKIP
(Iteration 1 / 4900) loss: 2.302585
(Epoch 0 / 10) train acc: 0.103000; val_acc: 0.098000
>>> solver.check_accuracy(data['X_test'], data['y_test'])                        # doctest: +SKIP

As in cs231n: minibatches are drawn on the host with replacement
(``rng.choice(num_train, batch_size)``), always ``batch_size`` examples (one compile per run);
accuracy is checked after the first iteration (epoch 0) and after every epoch, and the
parameters with the best validation accuracy become ``params``/``state`` when ``train`` ends.
``seed`` seeds the host generator and the JAX key: same seed, same run, bit for bit (on CPU),
interrupted and resumed or not. Hooks instead of subclassing: ``on_iteration(solver,
iteration, loss)`` after every update (each step then waits for its loss),
``on_progress(solver, iteration)`` with every progress line (every ``print_every`` updates,
no extra wait) and ``on_epoch_end(solver, epoch)`` after each accuracy check and its
checkpoint.

With a ``checkpoint_dir`` every epoch end (and every ``checkpoint_every`` updates) writes a
checkpoint holding all the run needs to continue bit for bit; ``resume='auto'`` restores the
newest good one when the Solver is built (``True``: one must exist; ``False``: the folder must
hold none); one of a differently configured run is a
:class:`~jcnn.checkpoint.CheckpointMismatchError` naming what differs (``num_epochs`` may grow,
not shrink below what the checkpoint has done). The run's identity includes a SHA-256
fingerprint of the training and validation arrays (:attr:`Solver.data_fingerprint`), so a run
does not silently continue on other data; ``check_data=False`` accepts that (only that).
Losses are checked when read back (no sync per step) and the parameters every
``print_every`` updates: the first non-finite one raises
:class:`~jcnn.nonfinite.NonFiniteLossError` and writes ``nonfinite.json`` beside
``checkpoint_dir``. ``mesh`` trains data-parallel (``batch_size`` is the global batch; only
process 0 writes), ``compute_dtype='bfloat16'`` in mixed precision.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jcnn import _validate as check
from jcnn import checkpoint as ckpt
from jcnn import nonfinite, optim, parallel
from jcnn.checkpoint import CheckpointMismatchError
from jcnn.nonfinite import NonFiniteLossError
from jcnn.train import (
    TrainState,
    copy_tree,
    create_train_state,
    make_eval_step,
    make_train_step,
    predict,
)

__all__ = ["DATA_KEYS", "CheckpointMismatchError", "NonFiniteLossError", "Solver"]

DATA_KEYS = ("X_train", "y_train", "X_val", "y_val")


def _hooks(name: str, value: Callable | Iterable[Callable] | None) -> list[Callable]:
    hooks = [] if value is None else [value] if callable(value) else list(value)
    for h in hooks:
        if not callable(h):
            raise ValueError(f"{name} must be a callable or a list of callables, got {h!r}")
    return hooks


def _name(fn: Callable) -> str:
    """A readable name for a function (``functools.partial`` included)."""
    inner = getattr(fn, "func", fn)
    return getattr(inner, "__qualname__", None) or repr(fn)


class Solver:
    """Train a :mod:`jcnn.models` model on ``data`` the cs231n way (see the module docs).

    ``data`` holds ``X_train, y_train, X_val, y_val`` (host arrays; images shaped like the
    model's ``input_dim``, integer labels in ``[0, num_classes)``); other keys are ignored.
    ``params``/``state`` start training from given values instead of ``model.init``.
    ``run_config`` (JSON-able, e.g. the command line's flags) is recorded in every
    checkpoint. ``check_data=False`` resumes a checkpoint made on other data (its data
    fingerprint differs). Every argument is checked when the Solver is built (ValueError
    naming it).

    Attributes: ``params``, ``state``, ``opt_state`` (views of ``train_state``, a
    :class:`~jcnn.train.TrainState`); ``epoch``, ``iteration`` (updates done);
    ``loss_history`` (one float per iteration), ``train_acc_history``, ``val_acc_history``,
    ``lr_history`` (the learning rate of the update before each accuracy check),
    ``eval_history`` (one dict per check); ``best_val_acc``, ``best_epoch``, ``best_params``,
    ``best_state``; ``iterations_per_epoch``, ``num_iterations``; ``trace_counts``;
    ``resumed_from`` (None, or ``{'path', 'iteration', 'epoch', 'elapsed_s'}``);
    ``last_checkpoint``; ``elapsed_s`` (seconds in :meth:`train`, over every session).
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
        on_progress: Callable | Iterable[Callable] | None = None,
        augment: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
        mesh: jax.sharding.Mesh | None = None,
        compute_dtype: Any = None,
        test_time_flip: bool = False,
        check_data: bool = True,
    ):
        for attr in ("init", "apply", "loss", "check_input", "num_classes"):
            if not hasattr(model, attr):
                raise ValueError(f"model must be a jcnn.models model; it has no {attr!r}")
        self.model = model
        self.update_rule = update_rule
        self.optim_config = optim.resolve_optim_config(update_rule, optim_config)
        self.lr_decay = check.finite_float("lr_decay", lr_decay, minimum=0.0, strict=True)
        optim.check_schedule(lr_schedule, self.lr_decay)
        self.lr_schedule = lr_schedule
        self.warmup_epochs = check.finite_float("warmup_epochs", warmup_epochs, minimum=0.0)
        self.batch_size = check.positive_int("batch_size", batch_size)
        self.num_epochs = check.positive_int("num_epochs", num_epochs)
        opt_int = lambda name, v: None if v is None else check.positive_int(name, v)  # noqa: E731
        self.num_train_samples = opt_int("num_train_samples", num_train_samples)
        self.num_val_samples = opt_int("num_val_samples", num_val_samples)
        self.print_every = check.positive_int("print_every", print_every)
        self.verbose = bool(verbose)
        self.checkpoint_dir = None if checkpoint_dir is None else Path(checkpoint_dir)
        self.checkpoint_every = opt_int("checkpoint_every", checkpoint_every)
        self.keep_checkpoints = check.nonnegative_int("keep_checkpoints", keep_checkpoints)
        if resume is True and self.checkpoint_dir is None:
            raise ValueError("resume=True needs a checkpoint_dir to resume from")
        self.resume = resume
        if run_config is not None and not isinstance(run_config, Mapping):
            raise ValueError(f"run_config must be a dict or None, got {type(run_config).__name__}")
        try:
            self.run_config = None if run_config is None else ckpt.to_plain_json(dict(run_config))
        except TypeError as e:
            raise ValueError(f"run_config must be JSON-able: {e}") from None
        self.seed = check.seed("seed", seed)
        self.on_iteration = _hooks("on_iteration", on_iteration)
        self.on_epoch_end = _hooks("on_epoch_end", on_epoch_end)
        self.on_progress = _hooks("on_progress", on_progress)
        if augment is not None and not callable(augment):
            raise ValueError(f"augment must be a function (key, X) -> X or None, got {augment!r}")
        self.augment = augment
        if mesh is not None:
            parallel.check_mesh(mesh, self.batch_size)
            self._rows = parallel.process_slice(mesh, self.batch_size)  # this process's rows
        self.mesh = mesh
        self.compute_dtype = parallel.resolve_compute_dtype(compute_dtype)

        if not isinstance(data, Mapping):
            raise ValueError(f"data must be a dict holding {DATA_KEYS}, got {type(data).__name__}")
        missing = [k for k in DATA_KEYS if k not in data]
        if missing:
            raise ValueError(f"data is missing {missing}: it must hold {list(DATA_KEYS)}")
        self.X_train, self.y_train = check.labelled_images(
            model, data["X_train"], data["y_train"], "X_train", "y_train"
        )
        self.X_val, self.y_val = check.labelled_images(
            model, data["X_val"], data["y_val"], "X_val", "y_val"
        )

        self.check_data = bool(check_data)
        self._fingerprint: str | None = None
        self.num_train = self.X_train.shape[0]
        self.iterations_per_epoch = max(self.num_train // self.batch_size, 1)
        self.num_iterations = self.num_epochs * self.iterations_per_epoch
        self.warmup_iterations = round(self.warmup_epochs * self.iterations_per_epoch)
        self.schedule = optim.make_schedule(
            self.optim_config["learning_rate"],
            lr_schedule=self.lr_schedule,
            lr_decay=self.lr_decay,
            iterations_per_epoch=self.iterations_per_epoch,
            num_iterations=self.num_iterations,
            warmup_iterations=self.warmup_iterations,
        )
        self.optimizer, _ = optim.make_optimizer(update_rule, self.optim_config, self.schedule)
        self.train_state = create_train_state(
            model, self.optimizer, key=jax.random.key(self.seed), params=params, model_state=state
        )
        self._x_dtype = np.dtype(jax.tree_util.tree_leaves(self.params)[0].dtype)
        self._train_step = make_train_step(
            model, self.optimizer, augment=augment, compute_dtype=self.compute_dtype, mesh=mesh
        )
        self._eval_step = make_eval_step(  # checks test_time_flip
            model, compute_dtype=self.compute_dtype, mesh=mesh, test_time_flip=test_time_flip
        )
        self.test_time_flip = bool(test_time_flip)
        self._all_finite = jax.jit(nonfinite.all_finite)
        self._rng = np.random.default_rng(self.seed)
        self._reset()
        self._replicate()
        found = ckpt.resume_checkpoint(self.checkpoint_dir, resume, self.iterations_per_epoch)
        if found is not None:
            self._restore(*found)
        parallel.assert_same_in_every_process(
            self.iteration,
            "processes restored different checkpoints (or only some found one): put "
            "checkpoint_dir on a filesystem every process sees, or start over",
        )

    # -------------------------------------------------------------------------- state

    params = property(
        lambda self: self.train_state.params,
        lambda self, v: setattr(self, "train_state", self.train_state.replace(params=v)),
    )
    state = property(
        lambda self: self.train_state.model_state,
        lambda self, v: setattr(self, "train_state", self.train_state.replace(model_state=v)),
    )
    opt_state = property(
        lambda self: self.train_state.opt_state,
        lambda self, v: setattr(self, "train_state", self.train_state.replace(opt_state=v)),
    )

    @property
    def trace_counts(self) -> dict[str, int]:
        """How often each jitted step was traced (once per run each)."""
        return {"train_step": self._train_step.traces(), "eval_step": self._eval_step.traces()}

    def _reset(self) -> None:
        """Book-keeping, as cs231n's ``_reset``."""
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
        self.resumed_from: dict[str, Any] | None = None
        self.last_checkpoint: Path | None = None
        self._log = nonfinite.StepLog()

    def _replicate(self) -> None:
        """With a mesh: the train state (and best_*) replicated on its devices."""
        if self.mesh is not None:
            self.train_state, self.best_params, self.best_state = parallel.replicate(
                (self.train_state, self.best_params, self.best_state), self.mesh
            )

    def lr_at(self, iteration: int) -> float:
        """The learning rate of update number ``iteration`` (0-based)."""
        return float(self.schedule(int(iteration)))

    # ----------------------------------------------------------------------- training

    def train(self) -> None:
        """Run the remaining updates of the run, from ``iteration`` (0, or where the
        restored checkpoint stopped) to ``num_iterations``, then make the best parameters
        the current ones. Raises :class:`~jcnn.nonfinite.NonFiniteLossError` at the first
        non-finite step."""
        clock0 = time.perf_counter() - self.elapsed_s
        for t in range(self.iteration, self.num_iterations):
            self._step()
            if self.on_iteration:
                self._read_losses()
                for hook in self.on_iteration:
                    hook(self, self.iteration, self.loss_history[-1])
            if t % self.print_every == 0:
                self._verify_finite()
                if self.verbose:
                    print(
                        f"(Iteration {t + 1} / {self.num_iterations}) "
                        f"loss: {self.loss_history[-1]:f}",
                        flush=True,
                    )
                for hook in self.on_progress:
                    hook(self, self.iteration)
            epoch_end = (t + 1) % self.iterations_per_epoch == 0
            self.epoch += epoch_end
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
            self.params, self.state = copy_tree((self.best_params, self.best_state))

    def _step(self) -> jax.Array:
        """One update on a random minibatch; returns its (device) loss, queued to be read
        back later with its finite flag."""
        idx = self._rng.choice(self.num_train, self.batch_size)  # the same in every process
        rows = idx if self.mesh is None else idx[self._rows]  # this process's rows only
        batch: tuple[Any, ...] = (np.asarray(self.X_train[rows], self._x_dtype), self.y_train[rows])
        if self.mesh is not None:
            batch = parallel.put_batch(self.mesh, batch, self.batch_size)
        try:
            self.train_state, metrics = self._train_step(self.train_state, batch)
        except FloatingPointError as e:  # jax_debug_nans: JAX names the primitive
            self._read_losses()  # an earlier bad step is the one to report
            self._stop_nonfinite(self.iteration + 1, float("nan"), idx, cause=e)
        self.iteration += 1
        self._log.add(metrics["loss"], metrics["finite"], self.iteration, idx)
        return metrics["loss"]

    def _read_losses(self) -> None:
        """Read the pending losses into ``loss_history``; the first non-finite one stops."""
        pending = self._log.read()
        for loss, ok, iteration, idx in pending:
            self.loss_history.append(loss)
            if not ok:
                self._stop_nonfinite(iteration, loss, idx, detected_after=pending[-1][2])

    def _verify_finite(self) -> None:
        """The pending losses, then the parameters and statistics, checked finite."""
        self._read_losses()
        if self.iteration == self._log.verified_iteration:
            return
        if not bool(self._all_finite((self.params, self.state))):
            last_idx = self._log.unverified[-1][1]
            self._stop_nonfinite(self.iteration, self.loss_history[-1], last_idx, params=True)
        self._log.verified(self.iteration)

    def _evaluate(self, elapsed: float) -> None:
        self._verify_finite()
        train_acc = self.check_accuracy(self.X_train, self.y_train, self.num_train_samples)
        val_acc = self.check_accuracy(self.X_val, self.y_val, self.num_val_samples)
        lr = self.lr_at(self.iteration - 1)
        self.train_acc_history.append(train_acc)
        self.val_acc_history.append(val_acc)
        self.lr_history.append(lr)
        self.eval_history.append(
            {"epoch": self.epoch, "iteration": self.iteration, "loss": self.loss_history[-1],
             "train_acc": train_acc, "val_acc": val_acc, "lr": lr, "seconds": elapsed}
        )  # fmt: skip
        if self.verbose:
            print(
                f"(Epoch {self.epoch} / {self.num_epochs}) train acc: {train_acc:f}; "
                f"val_acc: {val_acc:f}",
                flush=True,
            )
        if val_acc > self.best_val_acc or self.best_params is None:
            self.best_val_acc, self.best_epoch = val_acc, self.epoch
            self.best_params, self.best_state = copy_tree((self.params, self.state))

    def nonfinite_report_path(self) -> Path | None:
        """``nonfinite.json`` beside the ``checkpoint_dir`` (None without one)."""
        return (
            None if self.checkpoint_dir is None else self.checkpoint_dir.parent / "nonfinite.json"
        )

    def _stop_nonfinite(self, iteration: int, loss: float, idx: Any, **how: Any) -> None:
        found = nonfinite.report(
            self._log, iteration=iteration, loss=loss, indices=idx, labels=self.y_train[idx],
            learning_rate=self.lr_at(iteration - 1), iterations_per_epoch=self.iterations_per_epoch,
            num_iterations=self.num_iterations, recent_losses=self.loss_history[-20:],
            last_good_checkpoint=self.last_checkpoint, update_rule=self.update_rule,
            optim_config=self.optim_config, seed=self.seed, **how,
        )  # fmt: skip
        nonfinite.stop(
            found, loss=loss, path=self.nonfinite_report_path(), write=parallel.is_primary(),
            last_checkpoint=self.last_checkpoint, cause=how.get("cause"),
        )  # fmt: skip

    # --------------------------------------------------------------------- evaluation

    def predict(self, X: Any, batch_size: int = 100, *, params=None, state=None) -> np.ndarray:
        """Predicted labels for ``X`` (test mode) by :func:`jcnn.train.predict`, with the
        solver's current ``params``/``state`` unless given."""
        batch_size = check.positive_int("batch_size", batch_size)
        self.model.check_input(np.asarray(X))
        variables = (
            self.params if params is None else params,
            self.state if state is None else state,
        )
        return predict(
            self._eval_step, variables, X, batch_size=batch_size, mesh=self.mesh,
            dtype=self._x_dtype,
        )  # fmt: skip

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
        if X.shape[0] == 0:
            raise ValueError("check_accuracy needs at least one image")
        if num_samples is not None and X.shape[0] > num_samples:
            mask = self._rng.choice(X.shape[0], num_samples)
            X, y = X[mask], y[mask]
        return float(np.mean(self.predict(X, batch_size, **kw) == y))

    # -------------------------------------------------------------------- checkpoints

    @property
    def data_fingerprint(self) -> str:
        """``'sha256:...'`` of the training and validation arrays as the Solver holds them
        (:func:`jcnn.files.arrays_digest` over X_train, y_train, X_val, y_val), computed
        once: part of the run's identity, so a run does not resume on other data (unless
        ``check_data=False``)."""
        if self._fingerprint is None:
            from jcnn.files import arrays_digest

            arrays = (self.X_train, self.y_train, self.X_val, self.y_val)
            self._fingerprint = "sha256:" + arrays_digest(arrays)
        return self._fingerprint

    def _identity(self) -> dict[str, Any]:
        """The settings a checkpoint must share with this Solver to be resumed (plain JSON;
        :func:`jcnn.checkpoint.check_resumable` compares them)."""
        model = self.model
        is_instance = dataclasses.is_dataclass(model) and not isinstance(model, type)
        model_config = dataclasses.asdict(model) if is_instance else {}
        return ckpt.to_plain_json(
            {
                "model": {"class": type(model).__name__, **model_config},
                "solver": {
                    "update_rule": self.update_rule, "optim_config": self.optim_config,
                    "lr_decay": self.lr_decay, "lr_schedule": self.lr_schedule,
                    "warmup_epochs": self.warmup_epochs, "batch_size": self.batch_size,
                    "num_train_samples": self.num_train_samples,
                    "num_val_samples": self.num_val_samples, "seed": self.seed,
                    "augment": None if self.augment is None else _name(self.augment),
                    "compute_dtype": getattr(self.compute_dtype, "name", None),
                    "test_time_flip": self.test_time_flip,  # the best parameters depend on it
                },
                "data": {
                    "num_train": int(self.num_train), "num_val": int(self.X_val.shape[0]),
                    "image_shape": list(self.X_train.shape[1:]), "dtype": self._x_dtype.name,
                    "fingerprint": self.data_fingerprint,
                },
            }
        )  # fmt: skip

    def checkpoint_metadata(self) -> dict[str, Any]:
        """What a checkpoint's JSON sidecar records (verifies the pending losses and the
        parameters first)."""
        self._verify_finite()
        identity = self._identity()
        return {
            "format": ckpt.CHECKPOINT_FORMAT, "epoch": self.epoch, "iteration": self.iteration,
            "num_epochs": self.num_epochs, "num_iterations": self.num_iterations,
            "iterations_per_epoch": self.iterations_per_epoch,
            "loss_history": self.loss_history, "train_acc_history": self.train_acc_history,
            "val_acc_history": self.val_acc_history, "lr_history": self.lr_history,
            "eval_history": self.eval_history, "best_val_acc": self.best_val_acc,
            "best_epoch": self.best_epoch, "has_best": self.best_params is not None,
            "host_rng": self._rng.bit_generator.state, "elapsed_s": self.elapsed_s,
            "model": identity["model"],
            "solver": {**identity["solver"], "num_epochs": self.num_epochs},
            "data": identity["data"], "run_config": self.run_config,
            "num_devices": 1 if self.mesh is None else int(self.mesh.size),  # may change
            "jax_version": jax.__version__,
        }  # fmt: skip

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
            "rng": {"dropout_key": jax.random.key_data(self.train_state.key)},
        }

    def save_checkpoint(self, path: str | os.PathLike | None = None) -> Path:
        """Write the current checkpoint (default: :func:`jcnn.checkpoint.run_checkpoint_path`
        in ``checkpoint_dir``, then prune old ones). Pending losses are checked first, and
        non-finite arrays are never written: both raise NonFiniteLossError. With several
        processes only process 0 writes. Returns the path."""
        meta = self.checkpoint_metadata()  # reads the pending losses back: may raise
        host = jax.device_get(self.checkpoint_tree())
        bad = nonfinite.nonfinite_leaves(ckpt.flatten_tree(host))
        if bad:
            raise NonFiniteLossError(
                f"refusing to checkpoint non-finite values at iteration {self.iteration}: "
                f"{bad[:5]}{'...' if len(bad) > 5 else ''}"
            )
        folder = self.checkpoint_dir
        if path is None and folder is None:
            raise ValueError("no path given and the solver has no checkpoint_dir")
        target = Path(path) if path is not None else ckpt.run_checkpoint_path(
            folder, self.iteration, self.iterations_per_epoch  # type: ignore[arg-type]
        )  # fmt: skip
        if parallel.is_primary():
            target = ckpt.save_checkpoint(target, host, meta)
            if path is None and folder is not None:
                ckpt.prune_run_checkpoints(
                    folder, iterations_per_epoch=self.iterations_per_epoch,
                    keep_epochs=self.keep_checkpoints,
                )  # fmt: skip
        self.last_checkpoint = target
        return target

    def restore(self, path: str | os.PathLike | None = None) -> Path:
        """Restore a checkpoint written by :meth:`save_checkpoint` (default: the newest good
        one in ``checkpoint_dir``), so that :meth:`train` continues the run exactly. Raises
        CheckpointMismatchError for a differently configured run, CorruptCheckpointError
        if its checksums fail. Returns its path."""
        if path is None:
            if self.checkpoint_dir is None:
                raise ValueError("no path given and the solver has no checkpoint_dir")
            found = ckpt.latest_checkpoint(self.checkpoint_dir, ckpt.CHECKPOINT_PATTERNS)
            if found is None:
                raise FileNotFoundError(f"{self.checkpoint_dir} holds no complete checkpoint")
            return self._restore(*found)
        npz = Path(path)
        npz = npz if npz.suffix == ".npz" else npz.with_name(npz.name + ".npz")
        return self._restore(npz, ckpt.verify_checkpoint(npz))

    def _restore(self, npz: Path, meta: Mapping[str, Any]) -> Path:
        ckpt.check_resumable(
            npz, dict(meta), self._identity(),
            ignore=() if self.check_data else ("data.fingerprint",),
        )  # fmt: skip
        done = int(meta["iteration"])
        if done > self.num_iterations:
            needed = -(-done // self.iterations_per_epoch)
            raise CheckpointMismatchError(
                f"num_epochs={self.num_epochs} ({self.num_iterations} iterations) is below "
                f"what checkpoint {npz} has done ({done} iterations, epoch {meta['epoch']}): "
                f"pass num_epochs={needed} or more to continue it",
                {"solver.num_epochs": (meta.get("num_epochs"), self.num_epochs)},
            )
        tree, _ = ckpt.load_checkpoint(npz, self.checkpoint_tree(), verify=False)
        self._reset()
        key = jax.random.wrap_key_data(
            jax.numpy.asarray(tree["rng"]["dropout_key"]),
            impl=jax.random.key_impl(self.train_state.key),
        )
        self.iteration, self.epoch = int(meta["iteration"]), int(meta["epoch"])
        params, model_state, opt_state = copy_tree(
            (tree["params"], tree["state"], tree["opt_state"])
        )
        self.train_state = TrainState(
            params, model_state, opt_state, jax.numpy.asarray(self.iteration, jax.numpy.int32), key
        )
        if meta["has_best"]:
            self.best_params, self.best_state = copy_tree((tree["best_params"], tree["best_state"]))
        self._replicate()
        self._rng.bit_generator.state = meta["host_rng"]
        for name in ("loss_history", "train_acc_history", "val_acc_history", "lr_history"):
            setattr(self, name, [float(v) for v in meta[name]])
        self.eval_history = [dict(r) for r in meta["eval_history"]]
        self.best_val_acc, self.best_epoch = float(meta["best_val_acc"]), meta["best_epoch"]
        self.elapsed_s = float(meta["elapsed_s"])
        self._log.verified(self.iteration)  # checkpoints hold only finite values
        self.last_checkpoint = npz
        self.resumed_from = {
            "path": str(npz), "iteration": self.iteration, "epoch": self.epoch,
            "elapsed_s": self.elapsed_s,
        }  # fmt: skip
        if self.checkpoint_dir is not None and parallel.is_primary():
            ckpt.remove_stale_temporaries(self.checkpoint_dir)
        if self.verbose:
            print(
                f"(Resuming from {npz}: iteration {self.iteration} / {self.num_iterations}, "
                f"epoch {self.epoch} / {self.num_epochs})",
                flush=True,
            )
        return npz
