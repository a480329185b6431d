"""A run's directory: every file a training run writes, and what goes into them.

A run writes into its workdir, through one :class:`RunWriter` (only process 0 writes)::

    flags.cfg        the flags as a flagfile: --flagfile=<workdir>/flags.cfg reruns it
    config.json      flags, model, versions and device, written when the run starts
                     (:func:`start_record`)
    metrics.jsonl    {"iteration", "epoch", "loss"} every print_every iterations and
                     {"epoch", "train_acc", "val_acc", "lr", ...} after each accuracy check
                     (:func:`iteration_records`, :func:`epoch_record`, :class:`RunLogger`)
    summary.json     final/best accuracies, test accuracy of the best parameters, timings
                     (:func:`make_summary`)
    loss.png, accuracy.png, filters.png   (after every epoch and at the end, unless --noplots;
                     :func:`write_plots`)
    checkpoints/     epoch_XXX.npz + .json from the Solver (the last --keep_checkpoints),
                     step_XXXXXXXX.npz + .json every --checkpoint_every iterations, every
                     --checkpoint_minutes and where Ctrl-C stopped the run (the
                     newest two checkpoints are always kept), best.npz + .json: the
                     parameters with the best validation accuracy
    nonfinite.json   only if training met a non-finite loss: the iteration, loss, learning
                     rate and the minibatch's indices (written by the Solver)
    evaluation.json  only after ``python -m experiments.evaluate --workdir=...``: the best
                     parameters' val/test accuracy again, plain and with test-time flips
    .lock            the run's lock (:mod:`experiments.lock`): one run per workdir at a time;
                     it holds the pid of the process running there

Without ``--workdir`` a run gets a new ``runs/<app>-<YYYYmmdd-HHMMSS>-<pid>``
(:func:`create_workdir`, never one another run uses). :meth:`RunWriter.clear` (``--overwrite``)
deletes only the files listed here, never others; nothing else clears a workdir that holds
checkpoint files, even corrupt ones (:mod:`experiments.resume`).

Whole files are written atomically and as strict JSON (non-finite floats as null) by
:mod:`jcnn.files`; ``metrics.jsonl`` grows by whole lines. A resumed run rewrites
``metrics.jsonl`` from the checkpoint's histories (:func:`history_records`), so no line
appears twice.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import platform
import secrets
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jcnn import files

RESULT_FILES = ("metrics.jsonl", "summary.json")


def default_workdir(app_name: str, now: dt.datetime | None = None) -> Path:
    """``runs/<app>-<YYYYmmdd-HHMMSS>``: the stem of a new run's default workdir."""
    now = now or dt.datetime.now()
    return Path("runs") / f"{app_name}-{now:%Y%m%d-%H%M%S}"


def create_workdir(app_name: str, *, root: str | os.PathLike | None = None) -> Path:
    """A new, empty default workdir, ``runs/<app>-<YYYYmmdd-HHMMSS>-<pid>`` (under ``root``
    if given), created here with ``mkdir(exist_ok=False)``: two runs started in the same
    second never share one (on a clash a random suffix is added and it tries again)."""
    stem = default_workdir(app_name)
    parent = stem.parent if root is None else Path(root)
    parent.mkdir(parents=True, exist_ok=True)
    name = f"{stem.name}-{os.getpid()}"
    for _ in range(100):
        path = parent / name
        try:
            path.mkdir()
        except FileExistsError:
            name = f"{stem.name}-{os.getpid()}-{secrets.token_hex(3)}"
            continue
        return path
    raise FileExistsError(f"could not create a new workdir in {parent}")  # pragma: no cover


def jsonl_lines(records: Iterable[Mapping[str, Any]]) -> str:
    """``records`` as JSON lines (the policy of :mod:`jcnn.files`), each ending in a newline."""
    return "".join(files.dumps(dict(r)) + "\n" for r in records)


class RunWriter:
    """Every file a run writes goes through this object, so that one switch decides who
    writes: by default only process 0 (``jax.process_index() == 0``); elsewhere each method
    does nothing and :attr:`checkpoint_dir` is None.

    Whole files (JSON, text) are written with :func:`jcnn.files.atomic_write`, so a reader
    never sees half of one; ``metrics.jsonl`` grows by whole lines.
    """

    def __init__(self, workdir: str | os.PathLike, *, enabled: bool | None = None):
        self.workdir = Path(workdir)
        self.enabled = (jax.process_index() == 0) if enabled is None else bool(enabled)
        self.lock: Any = None  # the workdir's WorkdirLock while a run holds it

    def close(self) -> None:
        """Release the workdir's lock (:mod:`experiments.lock`) if this writer holds it."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def path(self, name: str) -> Path:
        return self.workdir / name

    @property
    def checkpoint_dir(self) -> Path | None:
        return self.path("checkpoints") if self.enabled else None

    @property
    def solver_checkpoint_dir(self) -> Path | None:
        """The Solver's ``checkpoint_dir``: :attr:`checkpoint_dir`, and with several
        processes every process's (all read it to resume together; the Solver writes only
        on process 0)."""
        if self.enabled or jax.process_count() > 1:
            return self.path("checkpoints")
        return None

    def holds_run(self) -> bool:
        """Whether the workdir holds (part of) a run: result files or checkpoint files
        (``*.npz``, ``*.json``, and the ``*.corrupt`` ones moved aside)."""
        if any(self.path(n).exists() for n in RESULT_FILES):
            return True
        return bool(self.checkpoint_files())

    def checkpoint_files(
        self, suffixes: Sequence[str] = (".npz", ".json", ".corrupt")
    ) -> list[Path]:
        """The files in ``checkpoints/`` with one of ``suffixes``, sorted by name."""
        ckpt = self.path("checkpoints")
        if not ckpt.is_dir():
            return []
        return sorted(f for f in ckpt.iterdir() if f.is_file() and f.suffix in suffixes)

    def clear(self) -> None:
        """Remove the files of an earlier run (only those this module writes)."""
        if not self.enabled:
            return
        for name in (
            *RESULT_FILES,
            "config.json",
            "nonfinite.json",
            "flags.cfg",
            "loss.png",
            "accuracy.png",
            "filters.png",
        ):
            self.path(name).unlink(missing_ok=True)
        ckpt = self.path("checkpoints")
        if ckpt.is_dir():
            for f in ckpt.glob("*"):
                if f.is_file() and (
                    f.suffix in (".npz", ".json", ".corrupt")
                    or (f.name.startswith(".") and f.suffix == ".tmp")
                ):
                    f.unlink()

    def write_text(self, name: str, text: str) -> None:
        if self.enabled:
            data = text.encode()
            files.atomic_write(self.path(name), lambda f: f.write(data))

    def write_json(self, name: str, obj: Any) -> None:
        if self.enabled:
            files.write_json(self.path(name), obj)

    def append_jsonl(self, name: str, records: Iterable[Mapping[str, Any]]) -> None:
        if not self.enabled:
            return
        lines = jsonl_lines(records)
        if lines:
            self.workdir.mkdir(parents=True, exist_ok=True)
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW  # never via a link
            with open(os.open(self.path(name), flags, 0o644), "a") as f:
                f.write(lines)
                f.flush()

    def save_figure(self, name: str, fig: Any) -> None:
        if self.enabled:
            from jcnn import viz

            viz.save_figure(fig, self.path(name))

    def save_checkpoint(self, name: str, tree: Any, metadata: Mapping[str, Any]) -> None:
        if self.enabled:
            from jcnn.checkpoint import save_checkpoint

            save_checkpoint(self.path(name), tree, dict(metadata))


def iteration_records(
    loss_history: Sequence[float], start: int, print_every: int, iterations_per_epoch: int
) -> list[dict[str, Any]]:
    """Records for the iterations ``start+1 .. len(loss_history)`` (1-based) that the Solver
    prints, i.e. iteration 1, 1 + print_every, ...; ``epoch`` is the epoch the iteration
    belongs to (1-based)."""
    out = []
    for i in range(start + 1, len(loss_history) + 1):
        if (i - 1) % print_every == 0:
            epoch = (i - 1) // iterations_per_epoch + 1
            out.append({"iteration": i, "epoch": epoch, "loss": float(loss_history[i - 1])})
    return out


def history_records(solver: Any, print_every: int) -> list[dict[str, Any]]:
    """Every metrics line of the solver's histories, in the order a run writes them (the
    iteration lines up to each accuracy check, then the check's line): what metrics.jsonl
    holds when the run resumes from a checkpoint."""
    out: list[dict[str, Any]] = []
    logged, ipe = 0, solver.iterations_per_epoch
    for check in solver.eval_history:
        upto = int(check["iteration"])
        out += iteration_records(solver.loss_history[:upto], logged, print_every, ipe)
        out.append(epoch_record(check))
        logged = upto
    return out + iteration_records(solver.loss_history, logged, print_every, ipe)


def epoch_record(check: Mapping[str, Any]) -> dict[str, Any]:
    """The metrics line of one accuracy check (a ``Solver.eval_history`` entry)."""
    return {
        "epoch": int(check["epoch"]),
        "train_acc": float(check["train_acc"]),
        "val_acc": float(check["val_acc"]),
        "lr": float(f"{float(check['lr']):.7g}"),  # the schedule computes in float32
        "at_iteration": int(check["iteration"]),
        "elapsed_s": round(float(check["seconds"]), 3),
    }


def first_conv_weights(params: Mapping[str, Any]) -> np.ndarray | None:
    """The first convolution's filters ``(F, C, HH, WW)``: ``conv1`` (ThreeLayerConvNet) or
    ``conv1_1`` (VGGNet); None if the model has neither."""
    for name in ("conv1", "conv1_1"):
        layer = params.get(name)
        if isinstance(layer, Mapping) and np.ndim(layer.get("w")) == 4:
            return np.asarray(jax.device_get(layer["w"]))
    return None


def have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def write_plots(writer: RunWriter, solver: Any) -> None:
    """loss.png, accuracy.png and filters.png from the solver's histories and parameters."""
    if not writer.enabled:
        return
    from jcnn import viz

    if solver.loss_history:
        writer.save_figure(
            "loss.png",
            viz.plot_loss(solver.loss_history, iterations_per_epoch=solver.iterations_per_epoch),
        )
    if solver.eval_history:
        epochs = [r["epoch"] for r in solver.eval_history]
        writer.save_figure(
            "accuracy.png",
            viz.plot_accuracy(solver.train_acc_history, solver.val_acc_history, epochs),
        )
    w = first_conv_weights(solver.params)
    if w is not None:
        writer.save_figure("filters.png", viz.plot_filters(w))


class RunLogger:
    """The Solver's ``on_epoch_end`` hook: metrics lines and plots. (The Solver prunes its
    checkpoints itself, and its run's clock counts this hook's time as outside training.)"""

    def __init__(self, writer: RunWriter, config: Mapping[str, Any], *, plots: bool):
        self.writer = writer
        self.print_every = int(config["print_every"])
        self.plot_every_epoch = bool(config["plot_every_epoch"]) and plots
        self.logged = 0  # iterations of loss_history already considered

    def start(self, solver: Any) -> None:
        """Log from the solver's state on (a resumed run's earlier lines are written)."""
        self.logged = len(solver.loss_history)

    def flush(self, solver: Any) -> None:
        records = iteration_records(
            solver.loss_history, self.logged, self.print_every, solver.iterations_per_epoch
        )
        self.logged = len(solver.loss_history)
        self.writer.append_jsonl("metrics.jsonl", records)

    def __call__(self, solver: Any, epoch: int) -> None:
        self.flush(solver)
        self.writer.append_jsonl("metrics.jsonl", [epoch_record(solver.eval_history[-1])])
        if self.plot_every_epoch:
            write_plots(self.writer, solver)


def describe_device(mesh: Any = None) -> dict[str, Any]:
    d = jax.devices()[0]
    out = {
        "platform": d.platform,
        "device_kind": d.device_kind,
        "device_count": jax.device_count(),
        "process_count": jax.process_count(),
        "backend": jax.default_backend(),
    }
    if mesh is not None:
        out["mesh_devices"] = int(mesh.size)  # the devices this run trains on
    return out


def describe_host() -> dict[str, Any]:
    return {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
    }


def model_config(model: Any) -> dict[str, Any]:
    fields = dataclasses.asdict(model) if dataclasses.is_dataclass(model) else {}
    return {"class": type(model).__name__, **fields}


def num_params(params: Any) -> int:
    return int(sum(np.size(leaf) for leaf in jax.tree_util.tree_leaves(params)))


def make_summary(
    solver: Any,
    *,
    app_name: str,
    model: Any,
    config: Mapping[str, Any],
    test_acc: float | None,
    timings: Mapping[str, float],
    start_iteration: int = 0,
) -> dict[str, Any]:
    """The run's summary. Timings are this session's: for a resumed run (``start_iteration``
    > 0), images/s counts the iterations trained since it resumed."""
    images = solver.num_iterations * solver.batch_size
    images_now = (solver.iteration - start_iteration) * solver.batch_size
    train_s = timings["train_s"]
    return {
        "app": app_name,
        "workdir": str(config.get("workdir")),
        "final_train_acc": solver.train_acc_history[-1],
        "final_val_acc": solver.val_acc_history[-1],
        "best_val_acc": solver.best_val_acc,
        "best_epoch": solver.best_epoch,
        "test_acc": test_acc,
        "final_loss": solver.loss_history[-1],
        "epochs": solver.num_epochs,
        "iterations": solver.num_iterations,
        "iterations_per_epoch": solver.iterations_per_epoch,
        "batch_size": solver.batch_size,
        "training_images_seen": images,
        "resumed_from_iteration": start_iteration or None,
        "wall_time_s": round(timings["wall_s"], 3),
        "data_time_s": round(timings["data_s"], 3),
        "train_time_s": round(train_s, 3),
        "eval_time_s": round(timings["outside_training_s"], 3),
        "images_per_s": round(images_now / train_s, 2) if train_s > 0 and images_now else None,
        "num_params": num_params(solver.params),
        "num_train": int(solver.num_train),
        "num_val": int(np.shape(solver.X_val)[0]),
        "model": model_config(model),
        "flags": dict(config),
        "jax_version": jax.__version__,
        "device": describe_device(getattr(solver, "mesh", None)),
        "host": describe_host(),
    }


def start_record(
    *,
    app_name: str,
    config: Mapping[str, Any],
    model: Any,
    data: Mapping[str, Any],
    resumed_from: Any,
    mesh: Any = None,
) -> dict[str, Any]:
    """What ``config.json`` holds: the run's flags, model, data shapes, versions and device."""
    return {
        "app": app_name,
        "started": dt.datetime.now().isoformat(timespec="seconds"),
        "resumed_from": resumed_from,
        "flags": dict(config),
        "model": model_config(model),
        "data": {k: list(np.shape(data[k])) for k in ("X_train", "X_val", "X_test") if k in data},
        "jax_version": jax.__version__,
        "device": describe_device(mesh),
        "host": describe_host(),
    }
