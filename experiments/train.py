"""The run loop of the CIFAR-10 training apps: flags in, a trained model and its files out.

The apps (:mod:`experiments.vgg_cifar`, :mod:`experiments.three_layer_cifar`) only add their
model's flags and a ``make_model(config)``; the rest lives in one module per job::

    experiments.train_flags   the common flags and their checks, config_from_flags
    experiments.rundir        the workdir's files: RunWriter, metrics lines, plots, summary
    experiments.resume        which checkpoint a rerun resumes from, which flags may differ
    experiments.presets       the models' default hyper-parameters

and this module runs them::

    config = config_from_flags(fv, names)          # plain dict of flag values
    model = make_model(config)                     # checked before any data is loaded
    summary = train_and_evaluate(config, model, RunWriter(workdir), app_name='vgg_cifar')

Bad flags stop the program with one line naming the flag, before data is loaded: the flag
validators (:mod:`experiments.train_flags`) run while the command line and flagfiles are
parsed, and the model itself is built (its dataclass checks every field; no arrays yet)
before the data; so is a ``--workdir`` or ``--data_dir`` that names a file, or a workdir (or
its checkpoints folder) that cannot be written (:func:`check_paths`). Every other failure a
user can fix ends the same way, ``FATAL <cause>: <what to do>`` on stderr and exit status 1,
no traceback (:mod:`experiments.errors`; ``JCNN_DEBUG=1`` prints the traceback too): a
flagfile that is not text, a full disk (the last good checkpoint is kept, and the same
command resumes from it), a permission problem, bad data, a non-finite loss, processes that
do not all reach ``--coordinator_address`` within ``--coordinator_timeout`` seconds. Any
other exception is a bug and keeps its traceback. The files a run writes are listed in
:mod:`experiments.rundir`; rerunning the same command resumes it
(:mod:`experiments.resume`), ``--overwrite`` starts over.
Process 0 locks the workdir (:mod:`experiments.lock`) before it reads or clears it, until the
run ends: a second run started there stops with one line naming the first one's pid.

Scaling out: training is data-parallel over ``--num_devices`` devices per process (default:
all local ones); ``--batch_size`` is the global batch, split evenly over them (a batch that
does not divide stops the app before the data is loaded). Several hosts: start one process
per host with the same flags plus ``--coordinator_address=host0:port --num_processes=N
--process_id=i``; :func:`main` calls ``jax.distributed.initialize`` before anything touches a
device. Every process loads the (small) dataset and gathers only its rows of each global
batch; only process 0 prints and writes; every process reads the checkpoints to resume, so
the workdir must then be on a filesystem they share. ``--compute_dtype=bfloat16`` runs the
network in bfloat16 (parameters, optimiser state and the loss stay float32).
"""

from __future__ import annotations

import functools
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from absl import flags

from experiments import errors, rundir
from experiments.errors import UsageFailure
from experiments.lock import WorkdirLock
from experiments.progress import Progress
from experiments.resume import check_resumable
from experiments.rundir import RunLogger, RunWriter
from experiments.train_flags import config_from_flags, flagfile_text
from jcnn import files

# An app's own Solver arguments: (config, model, data) -> keyword arguments.
SolverOptions = Callable[[Mapping[str, Any], Any, Mapping[str, Any]], dict[str, Any]]


def data_shape(config: Mapping[str, Any]) -> dict[str, Any]:
    """The model's ``num_classes`` and ``input_dim`` for the run's data, known before the data
    are loaded: CIFAR-10's, or an image folder's (its class folders, and ``--image_size`` or
    its first image's size); a folder that cannot be used stops the app with one line."""
    if config.get("dataset", "cifar10") != "folder":
        return {"num_classes": 10, "input_dim": (3, 32, 32)}
    from jcnn.data import DatasetError, describe_image_folder

    try:
        classes, (h, w) = describe_image_folder(config["data_dir"], config.get("image_size"))
    except DatasetError as e:
        raise UsageFailure(f"--data_dir={config['data_dir']} (--dataset=folder): {e}") from None
    return {"num_classes": len(classes), "input_dim": (3, h, w)}


def load_data(config: Mapping[str, Any]) -> dict[str, Any]:
    """CIFAR-10, or an image folder (``--dataset=folder``), split the cs231n way (mean image
    subtracted, float32 NCHW); a problem with the data on disk or the split sizes stops the
    app with one line."""
    from jcnn.data import DatasetError, get_cifar10_data, load_image_folder, split_and_preprocess
    from jcnn.data.cifar10 import resolve_data_dir

    counts = config["num_train"], config["num_val"], config["num_test"]
    if config.get("dataset", "cifar10") == "folder":
        root = config["data_dir"]
        try:
            raw = load_image_folder(root, size=config.get("image_size"))
        except DatasetError as e:
            raise UsageFailure(f"could not load the image folder {root} (--data_dir): {e}") from e
        train, test = len(raw.X_train), len(raw.X_test)
        if counts[0] + counts[1] > train or counts[2] > test:
            raise UsageFailure(
                f"--num_train={counts[0]} + --num_val={counts[1]} and --num_test={counts[2]} do "
                f"not fit the image folder {root}, which has {train} training and {test} test "
                f"images: pass e.g. --num_train={max(1, train - train // 10)} "
                f"--num_val={train // 10} --num_test={test}"
            )
        return split_and_preprocess(raw, *counts)
    try:
        return get_cifar10_data(
            config["data_dir"], num_training=counts[0], num_validation=counts[1],
            num_test=counts[2],
        )  # fmt: skip
    except (DatasetError, ValueError) as e:
        where = resolve_data_dir(config["data_dir"])
        raise UsageFailure(f"could not load CIFAR-10 from {where} (--data_dir): {e}") from e


def make_augment(config: Mapping[str, Any]) -> Callable | None:
    if not config["augment"]:
        return None
    from jcnn.augment import random_crop_flip

    cut = int(config.get("cutout", 0))
    if cut:
        return functools.partial(random_crop_flip, pad=int(config["augment_pad"]), cutout=cut)
    return functools.partial(random_crop_flip, pad=int(config["augment_pad"]))


def solver_kwargs(config: Mapping[str, Any]) -> dict[str, Any]:
    """The Solver's keyword arguments for a run's config."""
    return dict(
        checkpoint_every=config.get("checkpoint_every"),
        checkpoint_every_s=60.0 * config["checkpoint_minutes"]
        if config.get("checkpoint_minutes")
        else None,
        keep_checkpoints=config.get("keep_checkpoints", 0),
        update_rule=config["update_rule"],
        optim_config={"learning_rate": config["learning_rate"]},
        lr_decay=config["lr_decay"],
        lr_schedule=config.get("lr_schedule", "exponential"),
        warmup_epochs=config.get("warmup_epochs", 0.0),
        batch_size=config["batch_size"],
        num_epochs=config["num_epochs"],
        num_train_samples=config["num_train_samples"],
        num_val_samples=config["num_val_samples"],
        print_every=config["print_every"],
        seed=config["seed"],
        compute_dtype=config.get("compute_dtype"),
        test_time_flip=config.get("test_time_flip", False),
        check_data=not config.get("allow_data_change", False),
        verbose=True,
    )


def make_run_mesh(config: Mapping[str, Any]) -> Any:
    """The run's device mesh (``--num_devices`` per process); too many devices, or a batch
    size that does not split evenly over them, stops the app with one line."""
    from jcnn.parallel import make_mesh

    try:
        return make_mesh(config.get("num_devices"), batch_size=config["batch_size"])
    except ValueError as e:
        raise UsageFailure(f"--num_devices / --batch_size: {e}") from None


def start_processes(config: Mapping[str, Any]) -> None:
    """``jax.distributed.initialize`` for a multi-host run (``--num_processes`` > 1, or a
    ``--coordinator_address``); a failure stops the app with one line, and so does not
    hearing from every process within ``--coordinator_timeout`` seconds (JAX would abort)."""
    from jcnn.parallel import initialize_distributed

    n = config.get("num_processes") or 1
    address = config.get("coordinator_address")
    if n == 1 and not address:
        return
    pid, timeout = config.get("process_id"), int(config.get("coordinator_timeout") or 300)

    def give_up() -> None:  # JAX's own timeout aborts the process with a C++ stack trace
        message = errors.UsageFailure(
            f"could not start process {pid} of {n}: not every process connected to "
            f"the coordinator at {address} (--coordinator_address) within {timeout} s "
            "(--coordinator_timeout): start process 0 there with the same "
            "--coordinator_address and --num_processes, start every process, and check that "
            "the address is reachable from this host"
        ).code
        sys.stderr.write(f"{message}\n")
        sys.stderr.flush()
        os._exit(1)

    watchdog = threading.Timer(timeout, give_up)
    watchdog.daemon = True
    if not errors.debug():  # JCNN_DEBUG: let JAX abort with its own report
        watchdog.start()

    try:  # JAX gets a little longer, so that the watchdog speaks first
        initialize_distributed(address, n, pid, timeout_s=timeout + 10)
    except (ValueError, RuntimeError) as e:
        raise UsageFailure(f"could not start process {pid} of {n}: {e}") from None
    finally:
        watchdog.cancel()


def _newest_checkpoint(config: Mapping[str, Any]) -> str | None:
    """The newest good checkpoint of the run in ``config['workdir']`` (None: none yet)."""
    from jcnn.checkpoint import latest_run_checkpoint

    if not config.get("workdir"):
        return None
    try:
        found = latest_run_checkpoint(Path(config["workdir"]) / "checkpoints")
    except Exception:  # noqa: BLE001 - only for the advice; the failure is the lost process
        return None
    return None if found is None else str(found[0])


def _probe_writable(folder: Path) -> str | None:
    """Why ``folder`` cannot be written (None: it can): a probe file created and removed."""
    if not os.access(folder, os.W_OK | os.X_OK):
        return "permission denied"
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".jcnn-probe.", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        return e.strerror or str(e)
    return None


def check_paths(config: Mapping[str, Any]) -> None:
    """Before any data is loaded or training starts: ``--workdir`` and ``--data_dir`` must
    not name files, and the workdir (its checkpoints folder too, if any; else its nearest
    existing parent) must be writable. Each problem stops the app with one line."""
    from jcnn.data.cifar10 import resolve_data_dir

    workdir = Path(config["workdir"]) if config.get("workdir") else Path("runs")
    data_dir = (
        Path(config["data_dir"])
        if config.get("dataset") == "folder"
        else resolve_data_dir(config["data_dir"])
    )
    for flag, path in (("workdir", workdir), ("data_dir", data_dir)):
        if path.exists() and not path.is_dir():
            raise UsageFailure(f"--{flag}={path} is a file, not a folder: choose a folder")
    folders = [p for p in (workdir, workdir / "checkpoints") if p.is_dir()]
    if not folders:  # created later: its nearest existing parent must take it
        parent = next((p for p in workdir.absolute().parents if p.exists()), None)
        if parent is not None and not parent.is_dir():
            raise UsageFailure(f"--workdir={workdir}: {parent} is a file, not a folder")
        folders = [parent] if parent is not None else []
    for folder in folders:
        why = _probe_writable(folder)
        if why is not None:
            raise UsageFailure(
                f"--workdir={workdir}: cannot write in {folder} ({why}): make it writable, or "
                "choose another --workdir"
            )


def _printer(primary: bool) -> Callable[..., None]:
    """``print`` on the process that reports (process 0), a no-op elsewhere."""
    return print if primary else (lambda *args, **kwargs: None)


def make_solver(
    config: Mapping[str, Any],
    model: Any,
    data: Mapping[str, Any],
    writer: RunWriter,
    logger: RunLogger,
    mesh: Any,
    progress: Progress | None = None,
    solver_options: SolverOptions | None = None,
) -> Any:
    """The run's Solver, resumed from the workdir's newest checkpoint if it holds one.
    ``solver_options(config, model, data)`` gives the app's own Solver arguments (they
    override the common flags' ones)."""
    from jcnn.checkpoint import CheckpointMismatchError
    from jcnn.parallel import is_primary
    from jcnn.solver import Solver

    kwargs = {"augment": make_augment(config), **solver_kwargs(config), "verbose": is_primary()}
    try:
        if solver_options is not None:
            kwargs.update(solver_options(config, model, data))
        return Solver(
            model,
            data,
            checkpoint_dir=writer.solver_checkpoint_dir,
            on_epoch_end=[logger],
            on_progress=[] if progress is None else [progress],
            resume="auto",
            run_config=config,
            mesh=mesh,
            **kwargs,
        )
    except CheckpointMismatchError:
        raise  # main names the workdir
    except ValueError as e:  # a setting the flag checks let through; the message names it
        raise UsageFailure(f"invalid training flags: {e}") from e


def recipe_names(argv: Sequence[str]) -> list[str]:
    """The flagfiles on a command line, by name (``vgg_seed.cfg``), in order."""
    names, it = [], iter(argv)
    for arg in it:
        if arg.startswith("--flagfile="):
            names.append(Path(arg.split("=", 1)[1]).name)
        elif arg == "--flagfile":
            names.append(Path(next(it, "")).name)
    return [n for n in names if n]


def describe_run(
    app_name: str, model: Any, solver: Any, data: Mapping[str, Any], mesh: Any, workdir: Path
) -> str:
    """The line an app prints before training: app and recipe (its flagfiles), model, data,
    schedule, devices (the CPU's model and jcnn's compiled kernels on a CPU), workdir."""
    dev = rundir.describe_device(mesh)
    procs = f" in {dev['process_count']} processes" if dev["process_count"] > 1 else ""
    where = f"{dev['platform']} ({dev['device_kind']})"
    if dev["platform"] == "cpu":
        from experiments.benchmark.machine import cpu_model
        from jcnn import native

        built = [
            name for name, lib in (("oneDNN", "onednn"), ("jcnn", "kernels")) if native.load(lib)
        ]
        kernels = " and ".join(built) + " kernels" if built else "XLA only"
        where = f"cpu ({cpu_model() or 'unknown model'}, {os.cpu_count()} cores; {kernels})"
    recipes = recipe_names(sys.argv[1:])
    recipe = f" ({', '.join(recipes)})" if recipes else ""
    return (
        f"{app_name}{recipe}: {type(model).__name__}, {rundir.num_params(solver.params):,} "
        "parameters; "
        f"{solver.num_train} train / {len(data['y_val'])} val images; "
        f"{solver.num_epochs} epochs x {solver.iterations_per_epoch} iterations of "
        f"{solver.batch_size}; {where} x {dev['mesh_devices']}{procs}; writing to {workdir}"
    )


def run_training(solver: Any, logger: RunLogger, config: Mapping[str, Any]) -> float:
    """``solver.train()`` (with ``--debug_nans`` switched on for it, and back after);
    returns its wall-clock seconds. The logger's metrics are flushed even on a failure."""
    session_start = time.perf_counter()
    logger.start(solver)
    debug_nans = jax.config.jax_debug_nans
    if config.get("debug_nans"):
        jax.config.update("jax_debug_nans", True)
    try:
        with errors.stop_on_signals(solver.request_stop):
            solver.train()
    finally:
        jax.config.update("jax_debug_nans", debug_nans)
        logger.flush(solver)
    return time.perf_counter() - session_start


def save_best(
    writer: RunWriter, solver: Any, model: Any, test_acc: float | None, data: Mapping[str, Any]
) -> None:
    """checkpoints/best.npz: the parameters with the best validation accuracy and, where the
    data say how images were prepared (``mean_image``, ``label_names``), what using them
    needs (:func:`jcnn.classifier.classifier_record`: load it with ``load_classifier``)."""
    tree = {"params": solver.params, "state": solver.state}
    meta = {
        "best_epoch": solver.best_epoch,
        "best_val_acc": solver.best_val_acc,
        "test_acc": test_acc,
        "model": rundir.model_config(model),
        "jax_version": jax.__version__,
    }
    record = _classifier_record(solver, model, data)
    if record is not None:
        tree["mean_image"] = np.asarray(data["mean_image"], np.float32)
        meta["classifier"] = record
    writer.save_checkpoint("checkpoints/best.npz", tree, meta)


def _classifier_record(solver: Any, model: Any, data: Mapping[str, Any]) -> dict | None:
    """The run's :func:`jcnn.classifier.classifier_record` (None: the data do not say how
    their images were prepared)."""
    from jcnn.classifier import classifier_record

    mean, names = data.get("mean_image"), data.get("label_names")
    if mean is None or names is None:
        return None
    return classifier_record(
        model, class_names=names, mean_image=mean, test_time_flip=solver.test_time_flip,
        test_time_translate=solver.test_time_translate,
    )  # fmt: skip


def save_preprocessing(writer: RunWriter, solver: Any, model: Any, data: Mapping[str, Any]) -> None:
    """``preprocessing.npz``, before training: the mean image and the classifier record, so
    that a run still training can be used with its best parameters so far
    (:func:`jcnn.classifier.load_classifier`)."""
    from jcnn.classifier import PREPROCESSING

    record = _classifier_record(solver, model, data)
    if record is not None:
        mean = np.asarray(data["mean_image"], np.float32)
        writer.save_checkpoint(str(PREPROCESSING), {"mean_image": mean}, {"classifier": record})


def accuracy_on_test(solver: Any, data: Mapping[str, Any], *, augment: bool = True) -> float | None:
    """The best parameters' accuracy on the test split (None without one); ``augment=False``
    without the run's test-time flips and shifts."""
    X_test = data.get("X_test")
    if X_test is None or not len(X_test):
        return None
    return solver.check_accuracy(X_test, data["y_test"], augment=augment)


def finish_run(
    solver: Any,
    model: Any,
    data: Mapping[str, Any],
    writer: RunWriter,
    logger: RunLogger,
    *,
    app_name: str,
    config: Mapping[str, Any],
    plots: bool,
    start_iteration: int,
    clock: Mapping[str, float],
) -> dict[str, Any]:
    """After training: the test accuracy, best.npz, the final plots, summary.json and the
    closing line; returns the summary. ``clock``: the run's start (``perf_counter``), the
    seconds spent loading the data and in :func:`run_training`."""
    from jcnn.parallel import is_primary

    test_acc = accuracy_on_test(solver, data)
    augmented = solver.test_time_flip or solver.test_time_translate
    plain_acc = accuracy_on_test(solver, data, augment=False) if augmented else None
    save_best(writer, solver, model, test_acc, data)
    if plots:
        rundir.write_plots(writer, solver)
    timings = {
        "wall_s": time.perf_counter() - clock["start"],
        "data_s": clock["data_s"],
        "train_s": max(clock["train_s"] - logger.outside_training_s, 1e-9),
        "outside_training_s": logger.outside_training_s,
    }
    summary = rundir.make_summary(
        solver, app_name=app_name, model=model, config=config, test_acc=test_acc,
        timings=timings, start_iteration=start_iteration,
    )  # fmt: skip
    if augmented:
        summary["test_acc_without_tta"] = plain_acc
    summary = files.to_json_values(summary)  # plain JSON values, exactly what the file holds
    writer.write_json("summary.json", summary)
    test = "n/a" if test_acc is None else f"{test_acc:f}"
    if plain_acc is not None:
        test += f" ({plain_acc:f} without test-time augmentation)"
    chosen = (
        f"best val_acc: {solver.best_val_acc:f} (epoch {solver.best_epoch}); test acc of the "
        "best parameters"
        if len(solver.y_val)
        else f"no validation split: the final parameters (epoch {solver.best_epoch}); test acc"
    )
    _printer(is_primary())(
        f"{chosen}: {test}; {summary['images_per_s']} training images/s; "
        f"wall time {summary['wall_time_s']:.1f} s; files in {writer.workdir}",
        flush=True,
    )
    return summary


def train_and_evaluate(
    config: Mapping[str, Any],
    model: Any,
    writer: RunWriter,
    *,
    app_name: str,
    data: Mapping[str, Any] | None = None,
    mesh: Any = None,
    solver_options: SolverOptions | None = None,
) -> dict[str, Any]:
    """Load the data (unless given), train ``model`` with the Solver (resuming from the
    workdir's newest checkpoint if it holds one), evaluate the best parameters on the test
    split, write every file of the run; returns the summary.

    Training is data-parallel over ``mesh`` (default: :func:`make_run_mesh`); every process
    gathers only its rows of each global batch, only process 0 prints and writes."""
    from jcnn.parallel import is_primary

    if mesh is None:
        mesh = make_run_mesh(config)
    say = _printer(is_primary())
    t_start = time.perf_counter()
    plots = rundir.have_matplotlib()
    if not plots:
        say("matplotlib is not installed: no plots (pip install 'jcnn[plots]')", flush=True)
    if data is None:
        data = load_data(config)
    data_s = time.perf_counter() - t_start

    logger = RunLogger(writer, config, plots=plots)
    progress = Progress(
        int(config["batch_size"]), lambda: logger.outside_training_s, enabled=is_primary()
    )
    solver = make_solver(config, model, data, writer, logger, mesh, progress, solver_options)
    start_iteration = solver.iteration
    if solver.resumed_from is not None:
        if solver.iteration >= solver.num_iterations and writer.path("summary.json").is_file():
            say(f"{app_name}: the run in {writer.workdir} is complete; see summary.json")
            return json.loads(writer.path("summary.json").read_text())
        # The lines the checkpoint covers, exactly once; later ones are appended as usual.
        lines = rundir.history_records(solver, int(config["print_every"]))
        writer.write_text("metrics.jsonl", rundir.jsonl_lines(lines))
    writer.write_json(
        "config.json",
        rundir.start_record(
            app_name=app_name, config=config, model=model, data=data,
            resumed_from=solver.resumed_from, mesh=mesh,
        ),
    )  # fmt: skip
    save_preprocessing(writer, solver, model, data)
    say(describe_run(app_name, model, solver, data, mesh, writer.workdir), flush=True)
    progress.start(solver)
    train_wall = run_training(solver, logger, config)

    return finish_run(
        solver, model, data, writer, logger, app_name=app_name, config=config, plots=plots,
        start_iteration=start_iteration,
        clock={"start": t_start, "data_s": data_s, "train_s": train_wall},
    )  # fmt: skip


def mismatch_message(workdir: Path, config: Mapping[str, Any], error: Exception) -> str:
    """The line for a checkpoint the Solver refused (CheckpointMismatchError); other data
    than the run was trained on gets its own, naming ``--allow_data_change``."""
    from jcnn.checkpoint import describe_differences

    others = dict(getattr(error, "differences", {}))
    data = others.pop("data.fingerprint", None)
    if data is None:
        return f"--workdir={workdir}: {error}; or pass --overwrite"
    short = [str(v).removeprefix("sha256:")[:12] for v in data]
    also = f"; also {describe_differences(others)}" if others else ""
    return (
        f"--workdir={workdir}: the training/validation data differ from the data the run was "
        f"trained on (data fingerprint sha256 {short[0]}... in the checkpoint, {short[1]}... "
        f"now; --data_dir={config.get('data_dir')}{also}): resume with the same data, pass "
        "--allow_data_change to continue on these, or --overwrite to start over"
    )


def prepare_workdir(
    config: dict[str, Any], fv: flags.FlagValues, names: Sequence[str], app_name: str
) -> RunWriter:
    """The run's writer: ``--workdir`` (or a new default one, recorded in ``config``)
    locked for this run (:mod:`experiments.lock`; released by ``writer.close()`` or when
    the process ends), cleared with ``--overwrite``, else checked for a run to resume; then
    flags.cfg. With several processes, the others wait here until process 0 is done with it."""
    primary = jax.process_index() == 0
    if config["workdir"]:
        workdir = Path(config["workdir"])
    else:  # a new folder no other run can share
        make = rundir.create_workdir if primary else rundir.default_workdir
        workdir = make(app_name)
    config["workdir"] = str(workdir)
    writer = RunWriter(workdir)
    if writer.enabled:  # before the workdir is read or cleared
        writer.lock = WorkdirLock(workdir).acquire()
    try:
        if config["overwrite"]:
            writer.clear()
        elif writer.enabled and writer.holds_run():  # process 0 checks (and tidies) the workdir
            resume_from = check_resumable(writer, config)
            if resume_from is not None:
                print(f"{app_name}: resuming the run in {workdir} from {resume_from}", flush=True)
        writer.write_text("flags.cfg", flagfile_text(fv, names))
        if jax.process_count() > 1:  # the others read the workdir only once process 0 is done
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("jcnn: workdir ready")
    except BaseException:
        writer.close()
        raise
    return writer


def main(
    argv: Sequence[str],
    *,
    app_name: str,
    names: Sequence[str],
    make_model: Callable[[Mapping[str, Any]], Any],
    fv: flags.FlagValues = flags.FLAGS,
    solver_options: SolverOptions | None = None,
) -> dict[str, Any]:
    """The body of an app's ``main``: checks that need more than the flag validators, then
    :func:`train_and_evaluate`. Every problem found before training stops with one line; so
    does a non-finite loss (details in the workdir's nonfinite.json).

    A ``--workdir`` that holds a run resumes it (after checking its flags), unless
    ``--overwrite`` starts over."""
    import jcnn.cpu

    jcnn.cpu.tune()  # a training program: huge pages for the heap (jcnn.cpu)
    with errors.failures_in_one_line():
        return _main(
            argv, app_name=app_name, names=names, make_model=make_model, fv=fv,
            solver_options=solver_options,
        )  # fmt: skip


def _disk_full(writer: RunWriter, e: OSError) -> UsageFailure:
    """The line for a full disk while the run writes its files: where, and what is kept."""
    from jcnn.checkpoint import latest_run_checkpoint

    try:
        found = latest_run_checkpoint(writer.path("checkpoints"))
    except Exception:  # noqa: BLE001 - only for the advice; the failure is the full disk
        found = None
    kept = (
        f"the last good checkpoint, {found[0]}, is kept: free some space and run the same "
        "command again to resume from it"
        if found is not None
        else "no checkpoint was written yet: free some space and run the same command again "
        "to start over"
    )
    where = f" ({e.filename})" if e.filename else ""
    return UsageFailure(
        f"the disk is full: could not write the run's files in {writer.workdir}{where}; {kept}"
    )


def _main(
    argv: Sequence[str],
    *,
    app_name: str,
    names: Sequence[str],
    make_model: Callable[[Mapping[str, Any]], Any],
    fv: flags.FlagValues,
    solver_options: SolverOptions | None = None,
) -> dict[str, Any]:
    from jcnn.solver import CheckpointMismatchError, NonFiniteLossError, TrainingStopped

    if len(argv) > 1:
        raise UsageFailure(
            f"unexpected argument(s) {argv[1:]!r}: flags are written --name=value (in a "
            "flagfile too, one per line)"
        )
    config = config_from_flags(fv, names)
    start_processes(config)  # before anything touches a device
    try:
        model = make_model({**config, **data_shape(config)})
    except ValueError as e:
        raise UsageFailure(f"invalid model flags: {e}") from None
    mesh = make_run_mesh(config)  # a batch that does not split stops here, before the data
    if jax.process_index() == 0:  # the one that writes
        check_paths(config)  # a file in the way or a read-only workdir stops here
    writer = prepare_workdir(config, fv, names, app_name)
    try:
        return train_and_evaluate(
            config, model, writer, app_name=app_name, mesh=mesh, solver_options=solver_options
        )
    except CheckpointMismatchError as e:
        raise UsageFailure(mismatch_message(writer.workdir, config, e)) from None
    except TrainingStopped as e:
        saved = f"saved {e.checkpoint}" if e.checkpoint is not None else "nothing saved"
        raise errors.stopped(
            f"stopped ({e.reason}) after iteration {e.iteration}; {saved}: the same command "
            f"resumes from there (--workdir={writer.workdir})",
            e.reason,
        ) from None
    except NonFiniteLossError as e:
        kept = e.report.get("last_good_checkpoint")
        rerun = (
            f"Running the same command again resumes from {kept} and meets the same step"
            if kept
            else "No checkpoint was written before it, so running the same command again "
            "starts over and meets the same step"
        )
        raise UsageFailure(
            f"{e}. {rerun}: start over (--overwrite, or another --workdir) with, e.g., a lower "
            "--learning_rate"
        ) from e
    except OSError as e:
        if e.errno not in errors.DISK_FULL or errors.debug():
            raise
        raise _disk_full(writer, e) from e
    except jax.errors.JaxRuntimeError as e:  # a collective whose peer process is gone
        if jax.process_count() == 1 or not errors.is_peer_loss(e) or errors.debug():
            raise
        errors.exit_peer_lost(
            str(e), process=jax.process_index(), processes=jax.process_count(),
            kept=_newest_checkpoint(config),
        )  # fmt: skip
        raise
    finally:
        writer.close()  # the workdir's lock
