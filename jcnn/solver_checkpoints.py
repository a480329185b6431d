"""Saving and restoring a :class:`~jcnn.solver.Solver`'s run: what its checkpoint holds.

:class:`CheckpointedRun` is the Solver's half that deals with checkpoints, kept apart from
its training loop: the run's identity (model, solver settings, data; what a checkpoint must
share with the run to be resumed), the sidecar metadata (counters, histories, the host
generator's state), the arrays (parameters, optimiser state, best parameters, the step key),
and :meth:`~CheckpointedRun.save_checkpoint` / :meth:`~CheckpointedRun.restore`. The files,
their names, pruning and the resume rule itself are :mod:`jcnn.checkpoint`'s.

``resume='auto'`` restores the newest good checkpoint of ``checkpoint_dir`` when the Solver is
built (``True``: one must exist; ``False``: the folder must hold none). One made by a
differently configured run is a :class:`~jcnn.checkpoint.CheckpointMismatchError` naming
what differs; ``num_epochs`` may grow, not shrink below what the checkpoint has done. The
run's identity includes a SHA-256 fingerprint of the training and validation arrays
(:attr:`CheckpointedRun.data_fingerprint`), so a run does not silently continue on other
data; ``check_data=False`` accepts that (only that).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jcnn import checkpoint as ckpt
from jcnn import nonfinite, parallel
from jcnn.checkpoint import CheckpointMismatchError
from jcnn.files import arrays_digest
from jcnn.nonfinite import NonFiniteLossError
from jcnn.train import TrainState, copy_tree

__all__ = ["CheckpointedRun"]


def _name(fn: Callable) -> str:
    """A readable name for a function (``functools.partial`` included)."""
    inner = getattr(fn, "func", fn)
    return getattr(inner, "__qualname__", None) or repr(fn)


def _float(v: Any) -> float:
    """A number read back from a sidecar: JSON has no NaN, so a NaN (e.g. the val accuracy
    of a run without a validation split) was written as null."""
    return float("nan") if v is None else float(v)


def _name_or_none(fn: Any) -> str | None:
    return None if fn is None else _name(fn)


def _lookahead_identity(lookahead: Any) -> dict[str, Any] | None:
    if lookahead is None:
        return None
    return {
        "every": lookahead.every,
        "num_iterations": lookahead.num_iterations,
        "decay": _name_or_none(lookahead.decay),
    }


class CheckpointedRun:
    """Checkpoints of a :class:`~jcnn.solver.Solver` (a mixin: it reads and sets the
    Solver's attributes — settings, ``train_state``, counters, histories, ``best_*``)."""

    _fingerprint: str | None = None
    # What it uses of the Solver (set there; declared for the type checker).
    model: Any
    update_rule: str
    optim_config: dict[str, float]
    lr_decay: float
    lr_schedule: str
    warmup_epochs: float
    batch_size: int
    num_epochs: int
    num_train_samples: int | None
    num_val_samples: int | None
    seed: int
    augment: Callable | None
    compute_dtype: Any
    test_time_flip: bool
    test_time_translate: int
    custom_optimizer: Any
    sampling: str
    select_best: bool
    lookahead: Any
    check_data: bool
    run_config: dict[str, Any] | None
    mesh: Any
    verbose: bool
    checkpoint_dir: Path | None
    keep_checkpoints: int
    X_train: np.ndarray
    y_train: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray
    _x_dtype: np.dtype
    _rng: np.random.Generator
    _log: nonfinite.StepLog
    num_train: int
    iterations_per_epoch: int
    num_iterations: int
    train_state: TrainState
    epoch: int
    iteration: int
    loss_history: list[float]
    train_acc_history: list[float]
    val_acc_history: list[float]
    lr_history: list[float]
    eval_history: list[dict[str, Any]]
    best_val_acc: float
    best_epoch: int | None
    best_params: Any
    best_state: Any
    elapsed_s: float
    resumed_from: dict[str, Any] | None
    last_checkpoint: Path | None

    def _verify_finite(self) -> None: ...
    def _reset(self) -> None: ...
    def _replicate(self) -> None: ...

    @property
    def data_fingerprint(self) -> str:
        """``'sha256:...'`` of the training and validation arrays as the Solver holds them
        (:func:`jcnn.files.arrays_digest` over X_train, y_train, X_val, y_val), computed
        once: part of the run's identity, so a run does not resume on other data (unless
        ``check_data=False``)."""
        if self._fingerprint is None:
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
                    "test_time_translate": self.test_time_translate,
                    # An optax object has no stable name: its settings are the run_config's.
                    "optimizer": None if self.custom_optimizer is None else "custom",
                    "sampling": self.sampling, "select_best": self.select_best,
                    "lookahead": _lookahead_identity(self.lookahead),
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
            "params": self.train_state.params,
            "state": self.train_state.model_state,
            "opt_state": self.train_state.opt_state,
            "best_params": self.best_params if best else self.train_state.params,
            "best_state": self.best_state if best else self.train_state.model_state,
            "rng": {"dropout_key": jax.random.key_data(self.train_state.key)},
            **({} if self.train_state.slow is None else {"slow": self.train_state.slow}),
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
            found = ckpt.latest_run_checkpoint(self.checkpoint_dir)
            if found is None:
                raise FileNotFoundError(f"{self.checkpoint_dir} holds no complete checkpoint")
            return self._restore(*found)
        npz = Path(path)
        npz = npz if npz.suffix == ".npz" else npz.with_name(npz.name + ".npz")
        meta = ckpt.verify_checkpoint(npz)
        ckpt.check_run_sidecar(npz, meta)
        return self._restore(npz, meta)

    def _restore(self, npz: Path, meta: Mapping[str, Any]) -> Path:
        # Which code computes the model (its impl fields) may change; the function may not.
        impl = tuple(f"model.{name}" for name in getattr(self.model, "IMPLEMENTATION_FIELDS", ()))
        ckpt.check_resumable(
            npz, dict(meta), self._identity(),
            ignore=impl + (() if self.check_data else ("data.fingerprint",)),
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
            jnp.asarray(tree["rng"]["dropout_key"]),
            impl=jax.random.key_impl(self.train_state.key),
        )
        self.iteration, self.epoch = int(meta["iteration"]), int(meta["epoch"])
        params, model_state, opt_state, slow = copy_tree(
            (tree["params"], tree["state"], tree["opt_state"], tree.get("slow"))
        )
        self.train_state = TrainState(
            params, model_state, opt_state, jnp.asarray(self.iteration, jnp.int32), key, slow
        )
        if meta["has_best"]:
            self.best_params, self.best_state = copy_tree((tree["best_params"], tree["best_state"]))
        self._replicate()
        self._rng.bit_generator.state = meta["host_rng"]
        for name in ("loss_history", "train_acc_history", "val_acc_history", "lr_history"):
            setattr(self, name, [_float(v) for v in meta[name]])
        self.eval_history = [
            {k: _float(v) if k == "val_acc" else v for k, v in r.items()}
            for r in meta["eval_history"]
        ]
        self.best_val_acc, self.best_epoch = _float(meta["best_val_acc"]), meta["best_epoch"]
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
