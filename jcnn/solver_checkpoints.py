"""Saving and restoring a :class:`~jcnn.training_run.TrainingRun` (a
:class:`~jcnn.solver.Solver`'s run): what its checkpoint holds.

A checkpoint is the run's :class:`~jcnn.run_state.RunState` (its arrays and its progress)
plus the run's identity (model, solver settings, data: what a checkpoint must share with
the run to be resumed, :func:`identity`); :func:`metadata`, :func:`save` and
:func:`restore` are what the Solver's ``checkpoint_metadata``, ``save_checkpoint`` and
``restore`` do. The files, their names, pruning and the resume rule itself are
:mod:`jcnn.checkpoint`'s.

``resume='auto'`` restores the newest good checkpoint of ``checkpoint_dir`` when the Solver is
built (``True``: one must exist; ``False``: the folder must hold none). One made by a
differently configured run is a :class:`~jcnn.checkpoint.CheckpointMismatchError` naming
what differs; ``num_epochs`` may grow, not shrink below what the checkpoint has done. The
run's identity includes a SHA-256 fingerprint of the training and validation arrays
(:func:`data_fingerprint`), so a run does not silently continue on other
data; ``check_data=False`` accepts that (only that).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jcnn import checkpoint as ckpt
from jcnn import nonfinite, parallel
from jcnn.checkpoint import CheckpointMismatchError
from jcnn.checkpoint.store import key_path_name
from jcnn.files import arrays_digest
from jcnn.nonfinite import NonFiniteLossError

if TYPE_CHECKING:
    from jcnn.training_run import TrainingRun

__all__ = ["check_values", "data_fingerprint", "identity", "metadata", "restore", "save"]


def _name(fn: Callable) -> str:
    """A readable name for a function (``functools.partial`` included)."""
    inner = getattr(fn, "func", fn)
    return getattr(inner, "__qualname__", None) or repr(fn)


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


def data_fingerprint(solver: TrainingRun) -> str:
    """``'sha256:...'`` of the training and validation arrays as the Solver holds them
    (:func:`jcnn.files.arrays_digest` over X_train, y_train, X_val, y_val)."""
    arrays = (solver.X_train, solver.y_train, solver.X_val, solver.y_val)
    return "sha256:" + arrays_digest(arrays)


def identity(solver: TrainingRun) -> dict[str, Any]:
    """The settings a checkpoint must share with ``solver`` to be resumed (plain JSON;
    :func:`jcnn.checkpoint.check_resumable` compares them)."""
    s, model = solver.settings, solver.model
    is_instance = dataclasses.is_dataclass(model) and not isinstance(model, type)
    model_config = dataclasses.asdict(model) if is_instance else {}
    return ckpt.to_plain_json(
        {
            "model": {"class": type(model).__name__, **model_config},
            "solver": {
                "update_rule": s.update_rule, "optim_config": s.optim_config,
                "lr_decay": s.lr_decay, "lr_schedule": s.lr_schedule,
                "warmup_epochs": s.warmup_epochs, "batch_size": s.batch_size,
                "num_train_samples": s.num_train_samples,
                "num_val_samples": s.num_val_samples, "seed": s.seed,
                "augment": None if s.augment is None else _name(s.augment),
                "compute_dtype": getattr(s.compute_dtype, "name", None),
                "test_time_flip": s.test_time_flip,  # the best parameters depend on it
                "test_time_translate": s.test_time_translate,
                # An optax object has no stable name: its settings are the run_config's.
                "optimizer": None if s.custom_optimizer is None else "custom",
                "sampling": s.sampling, "select_best": s.select_best,
                "lookahead": _lookahead_identity(s.lookahead),
                "selection": None if s.selection is None else s.selection.identity(),
            },
            "data": {
                "num_train": int(solver.num_train), "num_val": int(solver.X_val.shape[0]),
                "image_shape": list(solver.X_train.shape[1:]), "dtype": solver._x_dtype.name,
                "fingerprint": solver.data_fingerprint,
            },
        }
    )  # fmt: skip


class ProcessesDifferError(ValueError):
    """The processes of a multi-process run were given different settings or data."""


def check_same_in_every_process(solver: TrainingRun) -> None:
    """In a multi-process run: every process was given the settings a checkpoint records
    (:func:`identity`: the model, the optimiser, the seed, the data...); they would otherwise
    train replicas apart, or fail in JAX with a long traceback. A collective.

    Raises:
      ProcessesDifferError: naming each setting that differs between the processes (the
        data's alone when they differ).
    """
    if jax.process_count() == 1:
        return
    fields = {
        f"{group}.{name}": value
        for group, values in identity(solver).items()
        for name, value in values.items()
    }
    differ = parallel.differing_across_processes(fields)
    data = [name for name in differ if name.startswith("data.")]
    if data:  # the same flags, other arrays: other files, or other contents in them
        raise ProcessesDifferError(
            "the processes of this run loaded different training or validation data "
            f"({', '.join(data)} {'differs' if len(data) == 1 else 'differ'}): every "
            "process must read the same images and labels (their folder may differ, its "
            "files' contents may not)"
        )
    if differ:
        raise ProcessesDifferError(
            f"the processes of this run were given different {', '.join(differ)}: start "
            "every process with the same flags (only --process_id differs)"
        )


def metadata(solver: TrainingRun) -> dict[str, Any]:
    """What a checkpoint's JSON sidecar records: the run's progress, identity and flags."""
    ident, num_epochs = identity(solver), solver.settings.num_epochs
    return {
        "format": ckpt.CHECKPOINT_FORMAT, **solver.run.progress(),
        "num_epochs": num_epochs, "num_iterations": solver.num_iterations,
        "iterations_per_epoch": solver.iterations_per_epoch, "model": ident["model"],
        "solver": {**ident["solver"], "num_epochs": num_epochs},
        "data": ident["data"], "run_config": solver.settings.run_config,
        "num_devices": 1 if solver.mesh is None else int(solver.mesh.size),  # may change
        "jax_version": jax.__version__,
    }  # fmt: skip


def save(solver: TrainingRun, path: str | os.PathLike | None = None) -> Path:
    """Write the run's checkpoint (default: :func:`jcnn.checkpoint.run_checkpoint_path` in
    ``checkpoint_dir``, then prune old ones); non-finite arrays are never written
    (NonFiniteLossError). With several processes only process 0 writes. Returns the path."""
    meta = metadata(solver)
    host = jax.device_get(solver.run.checkpoint_tree())
    bad = nonfinite.nonfinite_leaves(ckpt.flatten_tree(host))
    if bad:
        raise NonFiniteLossError(
            f"refusing to checkpoint non-finite values at iteration {solver.run.iteration}: "
            f"{bad[:5]}{'...' if len(bad) > 5 else ''}"
        )
    folder = solver.settings.checkpoint_dir
    if path is not None:
        target = Path(path)
    elif folder is not None:
        target = ckpt.run_checkpoint_path(folder, solver.run.iteration, solver.iterations_per_epoch)
    else:
        raise ValueError("no path given and the solver has no checkpoint_dir")
    if parallel.is_primary():
        target = ckpt.save_checkpoint(target, host, meta)
        if path is None and folder is not None:
            ckpt.prune_run_checkpoints(
                folder, iterations_per_epoch=solver.iterations_per_epoch,
                keep_epochs=solver.settings.keep_checkpoints,
            )  # fmt: skip
    return target


def find(solver: TrainingRun, path: str | os.PathLike | None) -> tuple[Path, dict[str, Any]]:
    """The checkpoint to restore and its verified sidecar: ``path``, or the newest good
    one in ``checkpoint_dir``."""
    if path is None:
        folder = solver.settings.checkpoint_dir
        if folder is None:
            raise ValueError("no path given and the solver has no checkpoint_dir")
        found = ckpt.latest_run_checkpoint(folder)
        if found is None:
            raise FileNotFoundError(f"{folder} holds no complete checkpoint")
        return found
    npz = Path(path)
    npz = npz if npz.suffix == ".npz" else npz.with_name(npz.name + ".npz")
    meta = ckpt.verify_checkpoint(npz)
    ckpt.check_run_sidecar(npz, meta)
    return npz, meta


def restore(solver: TrainingRun, npz: Path, meta: Mapping[str, Any]) -> Any:
    """The :class:`~jcnn.run_state.RunState` checkpoint ``npz`` holds, after checking that
    it was made by a run like ``solver``'s (CheckpointMismatchError naming what differs;
    ``num_epochs`` may grow, not shrink below what it has done). Arrays that do not fit the
    run its sidecar names are damaged: CorruptCheckpointError."""
    # Which code computes the model (its impl fields) may change; the function may not.
    impl = tuple(f"model.{name}" for name in getattr(solver.model, "IMPLEMENTATION_FIELDS", ()))
    ckpt.check_resumable(
        npz, dict(meta), identity(solver),
        ignore=impl + (() if solver.settings.check_data else ("data.fingerprint",)),
    )  # fmt: skip
    done, num_epochs = int(meta["iteration"]), solver.settings.num_epochs
    if done > solver.num_iterations:
        needed = -(-done // solver.iterations_per_epoch)
        raise CheckpointMismatchError(
            f"num_epochs={num_epochs} ({solver.num_iterations} iterations) is below "
            f"what checkpoint {npz} has done ({done} iterations, epoch {meta['epoch']}): "
            f"pass num_epochs={needed} or more to continue it",
            {"solver.num_epochs": (meta.get("num_epochs"), num_epochs)},
        )
    try:
        tree, _ = ckpt.load_checkpoint(npz, solver.run.checkpoint_tree(), verify=False)
    except ckpt.CorruptCheckpointError:
        raise
    except ValueError as e:  # its sidecar names this run's settings: the arrays are damaged
        raise ckpt.CorruptCheckpointError(str(e)) from None
    check_values(tree)
    _check_counts(tree["opt_state"], done)
    return solver.run.restored(tree, meta)


def _check_counts(opt_state: Any, done: int) -> None:
    """The optimiser's update counts (optax's ``count``, Muon's ``iteration``) cannot exceed
    the updates the run has done (wrappers such as gradient accumulation count fewer)."""
    for path, leaf in jax.tree_util.tree_flatten_with_path(opt_state)[0]:
        name, a = key_path_name(path), np.asarray(leaf)
        if name.split("/")[-1] in ("count", "iteration") and a.ndim == 0 and a > done:
            raise ckpt.CorruptCheckpointError(
                f"opt_state/{name} counts {int(a)} updates after {done} iterations"
            )


def check_values(tree: Mapping[str, Any]) -> None:
    """Refuse values a run never writes: every floating-point array of a run checkpoint is
    finite (``save`` refuses anything else), and batchnorm running variances, update counts
    and the second moments of Adam and RMSProp (optax's ``ScaleByAdamState.nu``,
    ``ScaleByRmsState.nu``) are >= 0. A checkpoint without checksums is only as good as
    these checks; one with checksums can still have been written by other code.

    Raises:
      CorruptCheckpointError: naming the first array that breaks a rule.
    """

    def squares(x: Any) -> bool:
        return isinstance(x, optax.ScaleByAdamState | optax.ScaleByRmsState)

    states = jax.tree_util.tree_leaves(dict(tree), is_leaf=squares)
    second = {id(a) for x in states if squares(x) for a in jax.tree_util.tree_leaves(x.nu)}
    for path, leaf in jax.tree_util.tree_flatten_with_path(dict(tree))[0]:
        name, a = key_path_name(path), np.asarray(leaf)
        if jnp.issubdtype(a.dtype, jnp.floating):
            if not np.isfinite(a if a.dtype.itemsize >= 4 else a.astype(np.float32)).all():
                raise ckpt.CorruptCheckpointError(
                    f"{name} holds non-finite values (a run writes only finite numbers)"
                )
        elif not jnp.issubdtype(a.dtype, jnp.signedinteger):
            continue
        kept_positive = id(leaf) in second or name.split("/")[-1] in ("running_var", "count")
        if kept_positive and (a < 0).any():
            raise ckpt.CorruptCheckpointError(f"{name} holds a negative value")
