"""A training run: the machinery under the cs231n :class:`~jcnn.solver.Solver` (which adds
cs231n's arguments and names). :class:`TrainingRun` builds the jitted steps and the optimiser
from a :class:`~jcnn.solver_settings.SolverSettings`, keeps what changes in one
:class:`~jcnn.run_state.RunState` (``run``), and :meth:`TrainingRun.train` runs the updates
with accuracy checks, checkpoints, stop requests and non-finite detection around them.
"""

from __future__ import annotations

import os
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jcnn import _validate as check
from jcnn import checkpoint as ckpt
from jcnn import nonfinite, parallel, selection, solver_checkpoints
from jcnn.prediction import Predictor, TestTimePredictions
from jcnn.run_state import RunState
from jcnn.sampling import Minibatches
from jcnn.solver_settings import SolverSettings
from jcnn.train import copy_tree, create_train_state, make_train_step

__all__ = ["DATA_KEYS", "TrainingRun", "TrainingStopped"]

DATA_KEYS = ("X_train", "y_train", "X_val", "y_val")


# How processes tell each other why they stop (0: not asked to).
_STOP_REASONS = (None, "SIGINT", "SIGTERM", "SIGHUP", "stop requested")


def _stop_code(reason: str | None) -> int:
    return _STOP_REASONS.index(reason) if reason in _STOP_REASONS else len(_STOP_REASONS) - 1


class TrainingStopped(Exception):
    """:meth:`TrainingRun.train` stopped early because :meth:`TrainingRun.request_stop`
    asked it to, after checkpointing the state it stopped in (with a ``checkpoint_dir``).

    Attributes:
        iteration: the updates done when it stopped.
        checkpoint: the checkpoint that holds that state (None without a checkpoint_dir).
        reason: what :meth:`TrainingRun.request_stop` was given (e.g. ``'SIGINT'``).
    """

    def __init__(self, iteration: int, checkpoint: Path | None, reason: str):
        where = f"; saved {checkpoint}" if checkpoint is not None else ""
        super().__init__(f"training stopped ({reason}) after iteration {iteration}{where}")
        self.iteration, self.checkpoint, self.reason = iteration, checkpoint, reason


def _train_state_view(name: str) -> property:
    """The attribute ``name`` of the run's :class:`~jcnn.train.TrainState`, to read and set."""

    def set_(self: TrainingRun, value: Any) -> None:
        self.run.train_state = self.run.train_state.replace(**{name: value})

    return property(lambda self: getattr(self.run.train_state, name), set_)


class TrainingRun:
    """Train ``model`` on ``data`` with ``settings`` (see :class:`~jcnn.solver.Solver` for
    what each setting and hook does; the Solver is this class with cs231n's arguments).

    Args:
        model: a :mod:`jcnn.models` model.
        data: ``X_train, y_train, X_val, y_val`` host arrays (other keys are ignored).
        settings: the run's checked settings.
        params: start from these parameters instead of ``model.init``'s.
        state: and from this model state.
        on_iteration: hooks called after every update.
        on_epoch_end: hooks called after each accuracy check and its checkpoint.
        on_progress: hooks called with every progress line.
        mesh: train data-parallel over it.

    Raises:
        ValueError: naming the argument or array that is not what it must be.
        CheckpointMismatchError: ``resume`` found a checkpoint of a differently configured run.
    """

    def __init__(
        self,
        model: Any,
        data: Mapping[str, Any],
        settings: SolverSettings,
        *,
        params: Any = None,
        state: Any = None,
        on_iteration: Sequence[Callable] = (),
        on_epoch_end: Sequence[Callable] = (),
        on_progress: Sequence[Callable] = (),
        mesh: jax.sharding.Mesh | None = None,
    ):
        for attr in ("init", "apply", "loss", "check_input", "num_classes"):
            if not hasattr(model, attr):
                raise ValueError(f"model must be a jcnn.models model; it has no {attr!r}")
        self.model, self.settings, self.mesh = model, settings, mesh
        self.on_iteration, self.on_epoch_end = list(on_iteration), list(on_epoch_end)
        self.on_progress = list(on_progress)
        if mesh is not None:
            parallel.check_mesh(mesh, settings.batch_size)
            self._rows = parallel.process_slice(mesh, settings.batch_size)  # this process's

        self._take_data(data)
        self._make_optimizer()
        key = jax.random.key(settings.seed)
        train_state = create_train_state(
            model, self.optimizer, key=key, params=params, model_state=state,
            lookahead=settings.lookahead, proxy=selection.proxy_state(settings.selection, key),
        )  # fmt: skip
        self.run = RunState(train_state, host_rng=np.random.default_rng(settings.seed))
        self._x_dtype = np.dtype(jax.tree_util.tree_leaves(self.params)[0].dtype)
        solver_checkpoints.check_same_in_every_process(self)  # before values cross processes
        self._make_steps()
        self._reset()
        self._replicate()
        if settings.batch_size < 100:  # the accuracy checks' chunks are larger: do they fit?
            self.predictor.check_fits((self.params, self.state))  # (placed as they will be)
        self._resume(settings)
        agreed = (self.run.iteration, settings.print_every, self.num_iterations)  # see _stop_agreed
        parallel.assert_same_in_every_process(
            zlib.crc32(repr((*agreed, self.iterations_per_epoch)).encode()) >> 1,  # int32
            "processes restored different checkpoints (or only some found one: put checkpoint_dir "
            "on a filesystem every process sees, or start over), or print_every differs",
        )

    def _take_data(self, data: Mapping[str, Any]) -> None:
        """The training and validation arrays, checked against the model, and the run's
        iteration counts."""
        s = self.settings
        arrays = check.training_data(self.model, data, DATA_KEYS, s)
        self.X_train, self.y_train, self.X_val, self.y_val = arrays
        self._fingerprint: str | None = None
        self.num_train = self.X_train.shape[0]
        self._batches = Minibatches(self.num_train, s.batch_size, s.sampling, s.seed)
        self.iterations_per_epoch = self._batches.per_epoch
        self.num_iterations = s.num_epochs * self.iterations_per_epoch
        self.warmup_iterations = s.warmup_iterations(self.iterations_per_epoch)

    def _make_optimizer(self) -> None:
        """``optimizer`` and ``schedule`` (:meth:`SolverSettings.optimizer`)."""
        self.optimizer, self.schedule = self.settings.optimizer(
            self.iterations_per_epoch, self.num_iterations
        )

    def _make_steps(self) -> None:
        """The jitted train step and eval steps (with and without test-time augmentation)."""
        model, s, mesh = self.model, self.settings, self.mesh
        self._train_step = make_train_step(
            model, self.optimizer, augment=s.augment, compute_dtype=s.compute_dtype, mesh=mesh,
            lookahead=s.lookahead, micro_batches=s.micro_batches, select=s.selection,
        )  # fmt: skip
        self.predictor = Predictor.make(
            model, dtype=self._x_dtype, compute_dtype=s.compute_dtype, mesh=mesh,
            flip=s.test_time_flip, translate=s.test_time_translate,
        )  # fmt: skip
        self._all_finite = jax.jit(nonfinite.all_finite)

    # -------------------------------------------------------------------------- state

    params = _train_state_view("params")
    state = _train_state_view("model_state")
    opt_state = _train_state_view("opt_state")

    @property
    def trace_counts(self) -> dict[str, int]:
        """How often each jitted step was traced (once per run each)."""
        return {
            "train_step": self._train_step.traces(),
            "eval_step": self.predictor.augmented.traces(),
        }

    def _reset(self) -> None:
        """Book-keeping, as cs231n's ``_reset``: a run with nothing done yet (the current
        train state and host generator kept)."""
        self.run = RunState(self.run.train_state, self.run.host_rng)
        self.resumed_from: dict[str, Any] | None = None
        self.last_checkpoint: Path | None = None
        self._log = nonfinite.StepLog()
        self._stop_reason: str | None = None

    def request_stop(self, reason: str = "stop requested") -> None:
        """Ask :meth:`train` to stop after the update in progress: it checkpoints that state
        (with a ``checkpoint_dir``) and raises :class:`TrainingStopped` naming ``reason``
        (e.g. ``'SIGINT'``); a run built with the same arguments resumes from it and ends
        exactly as an uninterrupted one. Safe in a signal handler (it only sets a flag).
        With several processes, a request to any one stops them all, after the same update
        (the next progress line or accuracy check); the others' reason reads
        e.g. ``'SIGTERM to process 1'``."""
        self._stop_reason = str(reason)

    def _replicate(self) -> None:
        """With a mesh: the train state (and best_*) replicated on its devices."""
        if self.mesh is not None:
            run = self.run
            run.train_state, run.best_params, run.best_state = parallel.replicate(
                (run.train_state, run.best_params, run.best_state), self.mesh
            )

    def lr_at(self, iteration: int) -> float:
        """The learning rate of update number ``iteration`` (0-based)."""
        return float(self.schedule(int(iteration)))

    # -------------------------------------------------------------------- checkpoints

    @property
    def data_fingerprint(self) -> str:
        """``'sha256:...'`` of the training and validation arrays, computed once: part of
        the run's identity (a run does not resume on other data unless ``check_data=False``)."""
        if self._fingerprint is None:
            self._fingerprint = solver_checkpoints.data_fingerprint(self)
        return self._fingerprint

    def _identity(self) -> dict[str, Any]:  # what a checkpoint must share with this run
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

    def _resume(self, settings: SolverSettings) -> None:
        """Restore the newest good checkpoint, if any (by ``settings.resume``); one whose
        arrays turn out damaged is moved aside like any corrupt one, and the one before it
        is tried."""
        found = ckpt.resume_checkpoint(
            settings.checkpoint_dir, settings.resume, self.iterations_per_epoch
        )
        while found is not None:
            try:
                self._restore(*found)
                return
            except ckpt.CorruptCheckpointError as e:
                ckpt.quarantine(found[0], f"corrupt checkpoint: {e}; using the one before it")
            found = ckpt.resume_checkpoint(
                settings.checkpoint_dir, settings.resume, self.iterations_per_epoch
            )

    def _restore(self, npz: Path, meta: Mapping[str, Any]) -> Path:
        run = solver_checkpoints.restore(self, npz, meta)  # checks it first
        self._reset()
        self.run = run
        self._replicate()
        self._log.verified(run.iteration)  # checkpoints hold only finite values
        self.last_checkpoint = npz
        self.resumed_from = {
            "path": str(npz), "iteration": run.iteration, "epoch": run.epoch,
            "elapsed_s": run.elapsed_s,
        }  # fmt: skip
        if self.settings.checkpoint_dir is not None and parallel.is_primary():
            ckpt.remove_stale_temporaries(self.settings.checkpoint_dir)
        if self.settings.verbose:
            print(
                f"(Resuming from {npz}: iteration {run.iteration} / {self.num_iterations}, "
                f"epoch {run.epoch} / {self.settings.num_epochs})",
                flush=True,
            )
        return npz

    # ----------------------------------------------------------------------- training

    def train(self) -> None:
        """Run the remaining updates of the run, from ``iteration`` (0, or where the
        restored checkpoint stopped) to ``num_iterations``, then make the best parameters
        the current ones. Raises :class:`~jcnn.nonfinite.NonFiniteLossError` at the first
        non-finite step. The run's clock (``run.elapsed_s``, ``run.outside_s``) runs
        meanwhile."""
        run, s = self.run, self.settings
        last_save = time.perf_counter()
        with run.clock_running():
            for t in range(run.iteration, self.num_iterations):
                self._step()
                if self.on_iteration:
                    self._read_losses()
                    for hook in self.on_iteration:
                        hook(self, run.iteration, run.loss_history[-1])
                if t % s.print_every == 0:
                    self._report_progress(t)
                epoch_end = (t + 1) % self.iterations_per_epoch == 0
                run.epoch += epoch_end
                evaluate = t == 0 or t == self.num_iterations - 1 or epoch_end
                saved = s.checkpoint_dir is not None and bool(
                    epoch_end
                    or (s.checkpoint_every and (t + 1) % s.checkpoint_every == 0)
                    or self._save_is_due(last_save)
                )
                if evaluate or saved:
                    self._verify_finite()  # the queued steps' time is training, not the check's
                    with run.outside_updates():
                        last_save = self._check_and_save(evaluate, saved) or last_save
                if self._stop_agreed(evaluate or t % s.print_every == 0):
                    self._stop(saved)
            self._verify_finite()
        if run.best_params is not None:
            self.params, self.state = copy_tree((run.best_params, run.best_state))

    def _report_progress(self, t: int) -> None:
        """Every ``print_every`` updates: the parameters checked, the cs231n line, the hooks."""
        self._verify_finite()
        if self.settings.verbose:
            loss = self.run.loss_history[-1]
            print(f"(Iteration {t + 1} / {self.num_iterations}) loss: {loss:f}", flush=True)
        for hook in self.on_progress:
            hook(self, self.run.iteration)

    def _check_and_save(self, evaluate: bool, save: bool) -> float | None:
        """The accuracy check, the checkpoint and the epoch-end hooks due after an update;
        returns when the checkpoint was saved (None if none was)."""
        if evaluate:
            self._evaluate(self.run.tick())
        saved_at = None
        if save:
            saved_at = time.perf_counter()
            self.save_checkpoint()
        if evaluate:
            for hook in self.on_epoch_end:
                hook(self, self.run.epoch)
        return saved_at

    def _save_is_due(self, last_save: float) -> bool:
        """``checkpoint_every_s`` seconds since the last save (single-process runs only:
        processes would not agree on when, and a save reads every process's arrays)."""
        every = self.settings.checkpoint_every_s
        if every is None or jax.process_count() > 1:
            return False
        return time.perf_counter() - last_save >= every

    def _stop_agreed(self, every_process_checks: bool) -> bool:
        """Whether :meth:`train` stops after this update. With one process: once a stop was
        requested. With several: only after an update where every process checks (a
        progress line or an accuracy check: ``every_process_checks``), and then
        if any process was asked, so that all stop after the same update and process 0's
        checkpoint holds it (a process that stopped alone left the others waiting in their
        next collective, and itself in JAX's shutdown, for minutes)."""
        if jax.process_count() == 1:
            return self._stop_reason is not None
        if not every_process_checks:
            return False
        asked = parallel.gather_from_every_process(_stop_code(self._stop_reason))
        first = next((i for i, code in enumerate(asked) if code), None)
        if first is not None and self._stop_reason is None:
            self._stop_reason = f"{_STOP_REASONS[asked[first]]} to process {first}"
        return first is not None

    def _stop(self, saved: bool) -> None:
        """Checkpoint the current state (unless just done) and raise TrainingStopped; with
        several processes, once process 0's checkpoint is written."""
        reason, self._stop_reason = self._stop_reason or "stop requested", None
        folder = self.settings.checkpoint_dir
        if folder is not None and not saved:
            self.save_checkpoint()
        parallel.wait_for_every_process("jcnn: stopped, checkpoint written")
        checkpoint = self.last_checkpoint if folder is not None else None
        raise TrainingStopped(self.run.iteration, checkpoint, reason)

    def _step(self) -> jax.Array:
        """One update on a random minibatch; returns its (device) loss, queued to be read
        back later with its finite flag."""
        run = self.run
        idx = self._batches.rows(run.iteration, run.host_rng)  # the same in every process
        rows = idx if self.mesh is None else idx[self._rows]  # this process's rows only
        batch: tuple[Any, ...] = (np.asarray(self.X_train[rows], self._x_dtype), self.y_train[rows])
        if self.mesh is not None:
            batch = parallel.put_batch(self.mesh, batch, self.settings.batch_size)
        try:
            run.train_state, metrics = self._train_step(run.train_state, batch)
        except FloatingPointError as e:  # jax_debug_nans: JAX names the primitive
            self._read_losses()  # an earlier bad step is the one to report
            self._stop_nonfinite(run.iteration + 1, float("nan"), idx, cause=e)
        run.iteration += 1
        self._log.add(metrics["loss"], metrics["finite"], run.iteration, idx)
        return metrics["loss"]

    # ------------------------------------------------------------- non-finite values

    def _read_losses(self) -> None:
        """Read the pending losses into ``loss_history``; the first non-finite one stops."""
        pending = self._log.read()
        for loss, ok, iteration, idx in pending:
            self.run.loss_history.append(loss)
            if not ok:
                self._stop_nonfinite(iteration, loss, idx, detected_after=pending[-1][2])

    def _verify_finite(self) -> None:
        """The pending losses, then the parameters and statistics, checked finite."""
        self._read_losses()
        run = self.run
        if run.iteration == self._log.verified_iteration:
            return
        if not bool(self._all_finite((self.params, self.state))):
            last_idx = self._log.unverified[-1][1]
            self._stop_nonfinite(run.iteration, run.loss_history[-1], last_idx, params=True)
        self._log.verified(run.iteration)

    def nonfinite_report_path(self) -> Path | None:
        """``nonfinite.json`` beside the ``checkpoint_dir`` (None without one)."""
        folder = self.settings.checkpoint_dir
        return None if folder is None else folder.parent / "nonfinite.json"

    def _stop_nonfinite(self, iteration: int, loss: float, idx: Any, **how: Any) -> None:
        s = self.settings
        found = nonfinite.report(
            self._log, iteration=iteration, loss=loss, indices=idx, labels=self.y_train[idx],
            learning_rate=self.lr_at(iteration - 1), iterations_per_epoch=self.iterations_per_epoch,
            num_iterations=self.num_iterations, recent_losses=self.run.loss_history[-20:],
            last_good_checkpoint=self.last_checkpoint, update_rule=s.update_rule,
            optim_config=s.optim_config, seed=s.seed, **how,
        )  # fmt: skip
        nonfinite.stop(
            found, loss=loss, path=self.nonfinite_report_path(), write=parallel.is_primary(),
            last_checkpoint=self.last_checkpoint, cause=how.get("cause"),
        )  # fmt: skip

    # --------------------------------------------------------------------- evaluation

    def _evaluate(self, elapsed: float) -> None:
        """An accuracy check: the histories, the line, and the best parameters so far."""
        self._verify_finite()
        run, s = self.run, self.settings
        train_acc = self.check_accuracy(self.X_train, self.y_train, s.num_train_samples)
        val_acc = float("nan")  # without a validation split
        if len(self.y_val):
            val_acc = self.check_accuracy(self.X_val, self.y_val, s.num_val_samples)
        lr = self.lr_at(run.iteration - 1)
        run.train_acc_history.append(train_acc)
        run.val_acc_history.append(val_acc)
        run.lr_history.append(lr)
        run.eval_history.append(
            {"epoch": run.epoch, "iteration": run.iteration, "loss": run.loss_history[-1],
             "train_acc": train_acc, "val_acc": val_acc, "lr": lr, "seconds": elapsed}
        )  # fmt: skip
        if s.verbose:
            val = f"; val_acc: {val_acc:f}" if len(self.y_val) else ""  # none: no split
            print(f"(Epoch {run.epoch} / {s.num_epochs}) train acc: {train_acc:f}{val}", flush=True)
        if not s.select_best:
            run.best_val_acc, run.best_epoch = val_acc, run.epoch
        elif val_acc > run.best_val_acc or run.best_params is None:
            run.best_val_acc, run.best_epoch = val_acc, run.epoch
            run.best_params, run.best_state = copy_tree((self.params, self.state))

    def predict(
        self, X: Any, batch_size: int = 100, *, params=None, state=None, augment: bool = True
    ) -> np.ndarray:
        """Predicted labels for ``X`` (test mode, :meth:`jcnn.prediction.Predictor.labels`),
        with the run's current ``params``/``state`` unless given; ``augment=False`` leaves
        out the test-time flips and shifts."""
        variables = self._variables(params, state)
        return self.predictor.labels(variables, X, batch_size, augment=augment)

    def _variables(self, params: Any, state: Any) -> tuple[Any, Any]:
        """``(params, state)``, the run's current ones where None."""
        return (self.params if params is None else params, self.state if state is None else state)

    def test_time_predictions(
        self, X: Any, batch_size: int = 100, *, confidence: float | None = None
    ) -> TestTimePredictions:
        """The plain and the test-time-augmented labels of ``X`` in one pass
        (:func:`jcnn.prediction.predict_where_unsure`): with a ``confidence``, only the
        images whose plain prediction is less sure than that get the augmented views."""
        variables = (self.params, self.state)
        return self.predictor.where_unsure(variables, X, batch_size, confidence=confidence)

    def check_accuracy(
        self, X: Any, y: Any, num_samples: int | None = None, batch_size: int = 100, *,
        params: Any = None, state: Any = None, augment: bool = True,
    ) -> float:  # fmt: skip
        """Fraction of ``X`` classified as ``y`` (as :meth:`predict` labels it); on
        ``num_samples`` images drawn at random (with replacement, from the run's generator)
        when ``X`` has more."""
        return self.predictor.accuracy(
            self._variables(params, state), X, y, num_samples=num_samples,
            rng=self.run.host_rng, batch_size=batch_size, augment=augment,
        )  # fmt: skip
