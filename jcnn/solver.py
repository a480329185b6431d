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

With a ``checkpoint_dir`` every epoch end (and every ``checkpoint_every`` updates, and the
first update ending ``checkpoint_every_s`` seconds or more after the last save) writes a
checkpoint holding all the run needs to continue bit for bit, and ``resume='auto'`` restores
the newest good one when the Solver is built (:mod:`jcnn.solver_checkpoints`; what changes
as it trains is one :class:`~jcnn.run_state.RunState`, ``solver.run``). Losses are
checked when read back (no sync per step) and the parameters every ``print_every`` updates:
the first non-finite one raises
:class:`~jcnn.nonfinite.NonFiniteLossError` and writes ``nonfinite.json`` beside
``checkpoint_dir``. ``mesh`` trains data-parallel (``batch_size`` is the global batch; only
process 0 writes), ``compute_dtype='bfloat16'`` in mixed precision.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
import optax

from jcnn import _validate as check
from jcnn import checkpoint as ckpt
from jcnn import nonfinite, optim, parallel, solver_checkpoints
from jcnn.checkpoint import CheckpointMismatchError
from jcnn.nonfinite import NonFiniteLossError
from jcnn.run_state import RunField, RunState
from jcnn.solver_settings import SettingField, SolverSettings
from jcnn.train import (
    Lookahead,
    copy_tree,
    create_train_state,
    make_eval_step,
    make_train_step,
    predict,
)

__all__ = [
    "DATA_KEYS",
    "CheckpointMismatchError",
    "NonFiniteLossError",
    "Solver",
    "TrainingStopped",
]

DATA_KEYS = ("X_train", "y_train", "X_val", "y_val")


class TrainingStopped(Exception):
    """:meth:`Solver.train` stopped early because :meth:`Solver.request_stop` asked it to,
    after checkpointing the state it stopped in (with a ``checkpoint_dir``).

    Attributes:
        iteration: the updates done when it stopped.
        checkpoint: the checkpoint that holds that state (None without a checkpoint_dir).
        reason: what :meth:`Solver.request_stop` was given (e.g. ``'SIGINT'``).
    """

    def __init__(self, iteration: int, checkpoint: Path | None, reason: str):
        where = f"; saved {checkpoint}" if checkpoint is not None else ""
        super().__init__(f"training stopped ({reason}) after iteration {iteration}{where}")
        self.iteration, self.checkpoint, self.reason = iteration, checkpoint, reason


def check_epoch_batches(num_train: int, batch_size: int) -> None:
    """``sampling='epoch'`` takes whole minibatches from each epoch's permutation, so it
    needs at least one: ValueError naming ``batch_size`` if the training set is smaller."""
    if num_train < batch_size:
        raise ValueError(
            f"batch_size={batch_size} is larger than the {num_train} training images; epoch "
            f"sampling takes whole minibatches, so use a batch_size of at most {num_train} "
            "or more training images"
        )


class Solver:
    """Train a :mod:`jcnn.models` model on ``data`` the cs231n way (see the module docs).

    ``data`` holds ``X_train, y_train, X_val, y_val`` (host arrays; images shaped like the
    model's ``input_dim``, integer labels in ``[0, num_classes)``); other keys are ignored.
    ``params``/``state`` start training from given values instead of ``model.init``.
    ``run_config`` (JSON-able, e.g. the command line's flags) is recorded in every
    checkpoint. ``check_data=False`` resumes a checkpoint made on other data (its data
    fingerprint differs). Every argument is checked when the Solver is built (ValueError
    naming it).

    For recipes beyond cs231n's (e.g. :mod:`experiments.airbench_cifar`): ``optimizer``, an
    optax transformation used instead of ``update_rule``/``optim_config``/``lr_*``
    (``schedule(t)`` then gives the learning rate recorded in ``lr_history``);
    ``sampling='epoch'``, a new permutation of the training set each epoch (the last partial
    batch left out, so it needs at least ``batch_size`` training images) instead of draws
    with replacement; ``select_best=False``, the final
    weights are the result (``data['X_val']`` may then be empty, and ``val_acc`` is NaN);
    ``lookahead`` (:class:`~jcnn.train.Lookahead`); ``test_time_translate``, test-time
    shifts (:func:`~jcnn.train.make_eval_step`). ``augment`` may take a ``step`` keyword.

    Attributes: ``params``, ``state``, ``opt_state`` (views of ``train_state``, a
    :class:`~jcnn.train.TrainState`); ``epoch``, ``iteration`` (updates done);
    ``loss_history`` (one float per iteration), ``train_acc_history``, ``val_acc_history``,
    ``lr_history`` (the learning rate of the update before each accuracy check),
    ``eval_history`` (one dict per check); ``best_val_acc``, ``best_epoch``, ``best_params``,
    ``best_state``; ``iterations_per_epoch``, ``num_iterations``; ``trace_counts``;
    ``resumed_from`` (None, or ``{'path', 'iteration', 'epoch', 'elapsed_s'}``);
    ``last_checkpoint``; ``elapsed_s`` (seconds in :meth:`train`, over every session).
    Everything of these that changes as the run trains is ``run``, a
    :class:`~jcnn.run_state.RunState`, saved and restored as a unit.
    """

    # Views of self.settings, under cs231n's names.
    update_rule = SettingField()
    optim_config = SettingField()
    lr_decay = SettingField()
    lr_schedule = SettingField()
    warmup_epochs = SettingField()
    batch_size = SettingField()
    num_epochs = SettingField()
    num_train_samples = SettingField()
    num_val_samples = SettingField()
    print_every = SettingField()
    verbose = SettingField()
    checkpoint_dir = SettingField()
    checkpoint_every = SettingField()
    checkpoint_every_s = SettingField()
    keep_checkpoints = SettingField()
    resume = SettingField()
    run_config = SettingField()
    seed = SettingField()
    augment = SettingField()
    compute_dtype = SettingField()
    test_time_flip = SettingField()
    test_time_translate = SettingField()
    check_data = SettingField()
    custom_optimizer = SettingField()
    sampling = SettingField()
    select_best = SettingField()
    lookahead = SettingField()

    # Views of self.run, under cs231n's names.
    train_state = RunField()
    epoch = RunField()
    iteration = RunField()
    best_val_acc = RunField()
    best_epoch = RunField()
    best_params = RunField()
    best_state = RunField()
    loss_history = RunField()
    train_acc_history = RunField()
    val_acc_history = RunField()
    lr_history = RunField()
    eval_history = RunField()
    elapsed_s = RunField()

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
        checkpoint_every_s: float | None = None,
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
        test_time_translate: int = 0,
        check_data: bool = True,
        optimizer: optax.GradientTransformation | None = None,
        schedule: Callable[[Any], Any] | None = None,
        sampling: str = "replacement",
        select_best: bool = True,
        lookahead: Lookahead | None = None,
    ):
        for attr in ("init", "apply", "loss", "check_input", "num_classes"):
            if not hasattr(model, attr):
                raise ValueError(f"model must be a jcnn.models model; it has no {attr!r}")
        self.model = model
        self.settings = SolverSettings.checked(
            update_rule=update_rule, optim_config=optim_config, lr_decay=lr_decay,
            lr_schedule=lr_schedule, warmup_epochs=warmup_epochs, batch_size=batch_size,
            num_epochs=num_epochs, num_train_samples=num_train_samples,
            num_val_samples=num_val_samples, print_every=print_every, verbose=verbose,
            checkpoint_dir=checkpoint_dir, checkpoint_every=checkpoint_every,
            checkpoint_every_s=checkpoint_every_s, keep_checkpoints=keep_checkpoints,
            resume=resume, run_config=run_config, seed=seed, augment=augment,
            compute_dtype=compute_dtype, test_time_flip=test_time_flip,
            test_time_translate=test_time_translate, check_data=check_data,
            optimizer=optimizer, schedule=schedule, sampling=sampling,
            select_best=select_best, lookahead=lookahead,
        )  # fmt: skip
        self.on_iteration = check.callables("on_iteration", on_iteration)
        self.on_epoch_end = check.callables("on_epoch_end", on_epoch_end)
        self.on_progress = check.callables("on_progress", on_progress)
        if mesh is not None:
            parallel.check_mesh(mesh, self.batch_size)
            self._rows = parallel.process_slice(mesh, self.batch_size)  # this process's rows
        self.mesh = mesh

        self._take_data(data)
        self._make_optimizer()
        train_state = create_train_state(
            model, self.optimizer, key=jax.random.key(self.seed), params=params,
            model_state=state, lookahead=lookahead,
        )  # fmt: skip
        self.run = RunState(train_state, host_rng=np.random.default_rng(self.seed))
        self._x_dtype = np.dtype(jax.tree_util.tree_leaves(self.params)[0].dtype)
        self._make_steps()
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

    def _take_data(self, data: Mapping[str, Any]) -> None:
        """The training and validation arrays, checked against the model, and the run's
        iteration counts."""
        if not isinstance(data, Mapping):
            raise ValueError(f"data must be a dict holding {DATA_KEYS}, got {type(data).__name__}")
        missing = [k for k in DATA_KEYS if k not in data]
        if missing:
            raise ValueError(f"data is missing {missing}: it must hold {list(DATA_KEYS)}")
        model = self.model
        self.X_train, self.y_train = check.labelled_images(
            model, data["X_train"], data["y_train"], "X_train", "y_train"
        )
        if not self.select_best and np.shape(data["X_val"])[0] == 0:
            self.X_val = np.zeros((0, *np.shape(self.X_train)[1:]), self.X_train.dtype)
            self.y_val = np.zeros((0,), np.int32)
        else:
            self.X_val, self.y_val = check.labelled_images(
                model, data["X_val"], data["y_val"], "X_val", "y_val"
            )
        self._fingerprint: str | None = None
        self.num_train = self.X_train.shape[0]
        if self.sampling == "epoch":
            check_epoch_batches(self.num_train, self.batch_size)
        self.iterations_per_epoch = max(self.num_train // self.batch_size, 1)
        self.num_iterations = self.num_epochs * self.iterations_per_epoch
        self.warmup_iterations = round(self.warmup_epochs * self.iterations_per_epoch)

    def _make_optimizer(self) -> None:
        """``optimizer`` and ``schedule``: cs231n's rule and schedule as optax objects, or
        the given optax transformation (and its schedule, if any)."""
        if self.custom_optimizer is None:
            self.schedule = optim.make_schedule(
                self.optim_config["learning_rate"],
                lr_schedule=self.lr_schedule,
                lr_decay=self.lr_decay,
                iterations_per_epoch=self.iterations_per_epoch,
                num_iterations=self.num_iterations,
                warmup_iterations=self.warmup_iterations,
            )
            self.optimizer, _ = optim.make_optimizer(
                self.update_rule, self.optim_config, self.schedule
            )
        else:
            given = self.settings.custom_schedule
            self.optimizer = self.custom_optimizer
            self.schedule = given if given is not None else (lambda t: float("nan"))

    def _make_steps(self) -> None:
        """The jitted train step and eval steps (with and without test-time augmentation)."""
        model, dtype, mesh = self.model, self.compute_dtype, self.mesh
        self._train_step = make_train_step(
            model, self.optimizer, augment=self.augment, compute_dtype=dtype, mesh=mesh,
            lookahead=self.lookahead,
        )  # fmt: skip
        self._eval_step = make_eval_step(
            model, compute_dtype=dtype, mesh=mesh, test_time_flip=self.test_time_flip,
            test_time_translate=self.test_time_translate,
        )  # fmt: skip
        self._plain_eval_step = (
            make_eval_step(model, compute_dtype=dtype, mesh=mesh)
            if self.test_time_flip or self.test_time_translate
            else self._eval_step
        )
        self._all_finite = jax.jit(nonfinite.all_finite)

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
        """Book-keeping, as cs231n's ``_reset``: a run with nothing done yet (the current
        train state and host generator kept)."""
        self.run = RunState(self.run.train_state, self.run.host_rng)
        self.resumed_from: dict[str, Any] | None = None
        self.last_checkpoint: Path | None = None
        self._log = nonfinite.StepLog()
        self._order: tuple[int, np.ndarray] | None = None
        self._stop_reason: str | None = None

    def request_stop(self, reason: str = "stop requested") -> None:
        """Ask :meth:`train` to stop after the update in progress: it checkpoints that state
        (with a ``checkpoint_dir``) and raises :class:`TrainingStopped`; a new Solver built
        with the same arguments resumes from it and ends exactly as an uninterrupted run.
        Safe to call from a signal handler (it only sets a flag).

        Args:
            reason: named in the :class:`TrainingStopped` message (e.g. ``'SIGINT'``).
        """
        self._stop_reason = str(reason)

    def _replicate(self) -> None:
        """With a mesh: the train state (and best_*) replicated on its devices."""
        if self.mesh is not None:
            self.train_state, self.best_params, self.best_state = parallel.replicate(
                (self.train_state, self.best_params, self.best_state), self.mesh
            )

    def lr_at(self, iteration: int) -> float:
        """The learning rate of update number ``iteration`` (0-based)."""
        return float(self.schedule(int(iteration)))

    # -------------------------------------------------------------------- checkpoints

    @property
    def data_fingerprint(self) -> str:
        """``'sha256:...'`` of the training and validation arrays as the Solver holds them,
        computed once: part of the run's identity, so a run does not resume on other data
        (unless ``check_data=False``)."""
        if self._fingerprint is None:
            self._fingerprint = solver_checkpoints.data_fingerprint(self)
        return self._fingerprint

    def _identity(self) -> dict[str, Any]:
        return solver_checkpoints.identity(self)

    def checkpoint_tree(self) -> dict[str, Any]:
        """The arrays a checkpoint holds (:meth:`jcnn.run_state.RunState.checkpoint_tree`)."""
        return self.run.checkpoint_tree()

    def checkpoint_metadata(self) -> dict[str, Any]:
        """What a checkpoint's JSON sidecar records (verifies the pending losses and the
        parameters first)."""
        self._verify_finite()
        return solver_checkpoints.metadata(self)

    def save_checkpoint(self, path: str | os.PathLike | None = None) -> Path:
        """Write the current checkpoint (default: :func:`jcnn.checkpoint.run_checkpoint_path`
        in ``checkpoint_dir``, then prune old ones). Pending losses are checked first, and
        non-finite arrays are never written: both raise NonFiniteLossError. With several
        processes only process 0 writes. Returns the path."""
        self._verify_finite()
        self.last_checkpoint = solver_checkpoints.save(self, path)
        return self.last_checkpoint

    def restore(self, path: str | os.PathLike | None = None) -> Path:
        """Restore a checkpoint written by :meth:`save_checkpoint` (default: the newest good
        one in ``checkpoint_dir``), so that :meth:`train` continues the run exactly. Raises
        CheckpointMismatchError for a differently configured run, CorruptCheckpointError
        if its checksums fail. Returns its path."""
        return self._restore(*solver_checkpoints.find(self, path))

    def _restore(self, npz: Path, meta: Mapping[str, Any]) -> Path:
        run = solver_checkpoints.restore(self, npz, meta)  # checks it first
        self._reset()
        self.run = run
        self._replicate()
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

    # ----------------------------------------------------------------------- training

    def train(self) -> None:
        """Run the remaining updates of the run, from ``iteration`` (0, or where the
        restored checkpoint stopped) to ``num_iterations``, then make the best parameters
        the current ones. Raises :class:`~jcnn.nonfinite.NonFiniteLossError` at the first
        non-finite step."""
        clock0 = time.perf_counter() - self.elapsed_s
        last_save = time.perf_counter()
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
                # Wait for the queued steps first: their time is training, not the check's.
                self._verify_finite()
                self._evaluate(time.perf_counter() - clock0)
            saved = self.checkpoint_dir is not None and bool(
                epoch_end
                or (self.checkpoint_every and (t + 1) % self.checkpoint_every == 0)
                or self._save_is_due(last_save)
            )
            if saved:
                last_save = time.perf_counter()
                self.elapsed_s = time.perf_counter() - clock0
                self.save_checkpoint()
            if evaluate:
                for hook in self.on_epoch_end:
                    hook(self, self.epoch)
            if self._stop_reason is not None:
                self._stop(saved, clock0)
        self._verify_finite()
        self.elapsed_s = time.perf_counter() - clock0
        if self.best_params is not None:
            self.params, self.state = copy_tree((self.best_params, self.best_state))

    def _save_is_due(self, last_save: float) -> bool:
        """``checkpoint_every_s`` seconds since the last save (single-process runs only:
        processes would not agree on when, and a save reads every process's arrays)."""
        if self.checkpoint_every_s is None or jax.process_count() > 1:
            return False
        return time.perf_counter() - last_save >= self.checkpoint_every_s

    def _stop(self, saved: bool, clock0: float) -> None:
        """Checkpoint the current state (unless just done) and raise TrainingStopped."""
        reason, self._stop_reason = self._stop_reason or "stop requested", None
        if self.checkpoint_dir is not None and not saved:
            self.elapsed_s = time.perf_counter() - clock0
            self.save_checkpoint()
        checkpoint = self.last_checkpoint if self.checkpoint_dir is not None else None
        raise TrainingStopped(self.iteration, checkpoint, reason)

    def _step(self) -> jax.Array:
        """One update on a random minibatch; returns its (device) loss, queued to be read
        back later with its finite flag."""
        idx = self._next_indices()  # the same in every process
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

    def _next_indices(self) -> np.ndarray:
        """The next minibatch's rows: drawn with replacement, or (``sampling='epoch'``) the
        next ``batch_size`` rows of this epoch's permutation (the last partial batch of an
        epoch is left out). Epoch ``e``'s permutation comes from ``(seed, e)`` alone, so a
        run resumed in the middle of an epoch continues it exactly."""
        if self.sampling == "replacement":
            return self.run.host_rng.choice(self.num_train, self.batch_size)
        epoch, k = divmod(self.iteration, self.iterations_per_epoch)
        if self._order is None or self._order[0] != epoch:
            order = np.random.default_rng([self.seed, epoch]).permutation(self.num_train)
            self._order = (epoch, order)
        return self._order[1][k * self.batch_size : (k + 1) * self.batch_size]

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
        val_acc = (
            self.check_accuracy(self.X_val, self.y_val, self.num_val_samples)
            if len(self.y_val)
            else float("nan")
        )
        lr = self.lr_at(self.iteration - 1)
        self.train_acc_history.append(train_acc)
        self.val_acc_history.append(val_acc)
        self.lr_history.append(lr)
        self.eval_history.append(
            {"epoch": self.epoch, "iteration": self.iteration, "loss": self.loss_history[-1],
             "train_acc": train_acc, "val_acc": val_acc, "lr": lr, "seconds": elapsed}
        )  # fmt: skip
        if self.verbose:
            val = f"; val_acc: {val_acc:f}" if len(self.y_val) else ""  # none: no split
            print(
                f"(Epoch {self.epoch} / {self.num_epochs}) train acc: {train_acc:f}{val}",
                flush=True,
            )
        if not self.select_best:
            self.best_val_acc, self.best_epoch = val_acc, self.epoch
        elif val_acc > self.best_val_acc or self.best_params is None:
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

    def predict(
        self, X: Any, batch_size: int = 100, *, params=None, state=None, augment: bool = True
    ) -> np.ndarray:
        """Predicted labels for ``X`` (test mode) by :func:`jcnn.train.predict`, with the
        solver's current ``params``/``state`` unless given; ``augment=False`` leaves out the
        test-time flips and shifts."""
        batch_size = check.positive_int("batch_size", batch_size)
        self.model.check_input(np.asarray(X))
        variables = (
            self.params if params is None else params,
            self.state if state is None else state,
        )
        step = self._eval_step if augment else self._plain_eval_step
        return predict(
            step, variables, X, batch_size=batch_size, mesh=self.mesh,
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
            mask = self.run.host_rng.choice(X.shape[0], num_samples)
            X, y = X[mask], y[mask]
        return float(np.mean(self.predict(X, batch_size, **kw) == y))
