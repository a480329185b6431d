"""The run loop of the training apps: flags in, a trained model and its files out.

The apps (:mod:`experiments.vgg_cifar`, :mod:`experiments.three_layer_cifar`,
:mod:`experiments.airbench_cifar`) only name their recipe class (its settings are their
flags, its ``build_model`` their model); the rest lives in one module per job::

    experiments.config        the settings every recipe is made of, each declared once
    experiments.recipes       the apps' recipe classes and the named runs (VGG_SEED, ...)
    experiments.train_flags   the flags derived from a recipe's settings, config_from_flags
    experiments.rundata       the data (CIFAR-10 or an image folder) and the paths' checks
    experiments.rundir        the workdir's files: RunWriter, metrics lines, plots, summary
    experiments.trained       what a run keeps for using its network (best.npz)
    experiments.resume        which checkpoint a rerun resumes from
    experiments.processes     several processes: starting them, losing one

and this module runs them::

    recipe = recipe_from_flags(fv, VGGRecipe)       # typed, frozen, checked
    model = recipe.build_model()                    # checked before any data is loaded
    summary = train_and_evaluate(recipe, model, RunWriter(workdir), app_name='vgg_cifar')

Bad flags stop the program with one line naming the flag, before data is loaded (the
settings' checks as flag validators, then the model's own checks, then
:func:`experiments.rundata.check_paths`); every other failure a user can fix ends the same
way, ``FATAL <cause>: <what to do>`` and exit status 1 (:mod:`experiments.errors`, which
lists them); any other exception is a bug and keeps its traceback. Rerunning the same
command resumes the run (:mod:`experiments.resume`), ``--overwrite`` starts over; process 0
locks the workdir (:mod:`experiments.lock`) until the run ends.

Scaling out: training is data-parallel over ``--num_devices`` devices per process (default:
all local ones); ``--batch_size`` is the global batch, split evenly over them. Several hosts:
one process per host with the same flags plus ``--coordinator_address=host0:port
--num_processes=N --process_id=i`` (:mod:`experiments.processes`); every process loads the
dataset and gathers only its rows of each global batch, only process 0 prints and writes,
and the workdir must be on a filesystem they share. ``--compute_dtype=bfloat16`` runs the
network in bfloat16 (parameters, optimiser state and the loss stay float32).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
from absl import flags

from experiments import config as settings
from experiments import errors, rundir
from experiments.errors import UsageFailure
from experiments.lock import WorkdirLock
from experiments.processes import start_processes, stop_on_peer_loss
from experiments.progress import Progress
from experiments.recipes import Recipe
from experiments.resume import check_resumable
from experiments.rundata import check_paths, data_shape, load_data
from experiments.rundir import RunLogger, RunWriter
from experiments.train_flags import flagfile_text, recipe_from_flags
from experiments.trained import save_best, save_preprocessing
from jcnn import files

# An app's own Solver arguments: (recipe, model, data) -> keyword arguments.
SolverOptions = Callable[[Any, Any, Mapping[str, Any]], dict[str, Any]]


def build_model(recipe_class: type[Recipe], config: Mapping[str, Any]) -> Any:
    """The model of a run's recorded flags (``config``, e.g. summary.json's ``flags``; its
    ``input_dim`` and ``num_classes`` if it has them, else CIFAR-10's)."""
    recipe = settings.from_record(recipe_class, config)
    return recipe.build_model(
        tuple(config.get("input_dim", (3, 32, 32))), int(config.get("num_classes", 10))
    )


def make_augment(recipe: settings.Augment) -> Callable | None:
    """The cs231n apps' optional augmentation: crops and flips (and cutout), or None."""
    if not recipe.augment:
        return None
    from jcnn.augment import random_crop_flip

    if recipe.cutout:
        return functools.partial(random_crop_flip, pad=recipe.augment_pad, cutout=recipe.cutout)
    return functools.partial(random_crop_flip, pad=recipe.augment_pad)


def solver_kwargs(recipe: Recipe) -> dict[str, Any]:
    """The Solver's keyword arguments for a recipe (those of the groups it has)."""
    kwargs: dict[str, Any] = dict(
        checkpoint_every=recipe.checkpoint_every,
        checkpoint_every_s=60.0 * recipe.checkpoint_minutes or None,
        keep_checkpoints=recipe.keep_checkpoints,
        num_train_samples=recipe.num_train_samples,
        num_val_samples=recipe.num_val_samples,
        print_every=recipe.print_every,
        compute_dtype=recipe.compute_dtype,
        test_time_flip=recipe.test_time_flip,
        check_data=not recipe.allow_data_change,
        verbose=True,
    )
    if isinstance(recipe, settings.Schedule):
        kwargs.update(batch_size=recipe.batch_size, num_epochs=recipe.num_epochs, seed=recipe.seed)
    if isinstance(recipe, settings.Cs231nOptimiser):
        kwargs.update(
            update_rule=recipe.update_rule, optim_config={"learning_rate": recipe.learning_rate},
            lr_decay=recipe.lr_decay, lr_schedule=recipe.lr_schedule,
            warmup_epochs=recipe.warmup_epochs,
        )  # fmt: skip
    if isinstance(recipe, settings.Augment):
        kwargs["augment"] = make_augment(recipe)
    return kwargs


def make_run_mesh(config: Mapping[str, Any]) -> Any:
    """The run's device mesh (``--num_devices`` per process); too many devices, or a batch
    size that does not split evenly over them, stops the app with one line."""
    from jcnn.parallel import make_mesh

    try:
        return make_mesh(config.get("num_devices"), batch_size=config["batch_size"])
    except ValueError as e:
        raise UsageFailure(f"--num_devices / --batch_size: {e}") from None


def _printer(primary: bool) -> Callable[..., None]:
    """``print`` on the process that reports (process 0), a no-op elsewhere."""
    return print if primary else (lambda *args, **kwargs: None)


def make_solver(
    recipe: Recipe,
    model: Any,
    data: Mapping[str, Any],
    writer: RunWriter,
    logger: RunLogger,
    mesh: Any,
    progress: Progress | None = None,
    solver_options: SolverOptions | None = None,
) -> Any:
    """The run's Solver, resumed from the workdir's newest checkpoint if it holds one.
    ``solver_options(recipe, model, data)`` gives the app's own Solver arguments (they
    override :func:`solver_kwargs`' ones)."""
    from jcnn.checkpoint import CheckpointMismatchError
    from jcnn.parallel import is_primary
    from jcnn.solver import Solver

    kwargs = {**solver_kwargs(recipe), "verbose": is_primary()}
    try:
        if solver_options is not None:
            kwargs.update(solver_options(recipe, model, data))
        return Solver(
            model,
            data,
            checkpoint_dir=writer.solver_checkpoint_dir,
            on_epoch_end=[logger],
            on_progress=[] if progress is None else [progress],
            resume="auto",
            run_config=settings.flag_values(recipe),
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
    recipe: Recipe,
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

    config = settings.flag_values(recipe)  # the run's flags, as its files record them
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
    progress = Progress(recipe.batch_size, lambda: logger.outside_training_s, enabled=is_primary())
    solver = make_solver(recipe, model, data, writer, logger, mesh, progress, solver_options)
    start_iteration = solver.iteration
    if solver.resumed_from is not None:
        if solver.iteration >= solver.num_iterations and writer.path("summary.json").is_file():
            say(f"{app_name}: the run in {writer.workdir} is complete; see summary.json")
            return json.loads(writer.path("summary.json").read_text())
        # The lines the checkpoint covers, exactly once; later ones are appended as usual.
        lines = rundir.history_records(solver, recipe.print_every)
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


def prepare_workdir(recipe: Recipe, fv: flags.FlagValues, app_name: str) -> RunWriter:
    """The run's writer: ``--workdir`` (or a new default one: ``writer.workdir``) locked
    for this run (:mod:`experiments.lock`; released by ``writer.close()`` or when the
    process ends), cleared with ``--overwrite``, else checked for a run to resume; then
    flags.cfg. With several processes, the others wait here until process 0 is done with it."""
    primary = jax.process_index() == 0
    if recipe.workdir:
        workdir = Path(recipe.workdir)
    else:  # a new folder no other run can share
        make = rundir.create_workdir if primary else rundir.default_workdir
        workdir = make(app_name)
    writer = RunWriter(workdir)
    if writer.enabled:  # before the workdir is read or cleared
        writer.lock = WorkdirLock(workdir).acquire()
    try:
        if recipe.overwrite:
            writer.clear()
        elif writer.enabled and writer.holds_run():  # process 0 checks (and tidies) the workdir
            resume_from = check_resumable(writer, dataclasses.replace(recipe, workdir=str(workdir)))
            if resume_from is not None:
                print(f"{app_name}: resuming the run in {workdir} from {resume_from}", flush=True)
        writer.write_text("flags.cfg", flagfile_text(fv, type(recipe)))
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
    recipe_class: type[Recipe],
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
            argv, app_name=app_name, recipe_class=recipe_class, fv=fv,
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
    recipe_class: type[Recipe],
    fv: flags.FlagValues,
    solver_options: SolverOptions | None = None,
) -> dict[str, Any]:
    from jcnn.solver import CheckpointMismatchError, NonFiniteLossError, TrainingStopped

    if len(argv) > 1:
        raise UsageFailure(
            f"unexpected argument(s) {argv[1:]!r}: flags are written --name=value (in a "
            "flagfile too, one per line)"
        )
    try:
        recipe = recipe_from_flags(fv, recipe_class)
    except ValueError as e:  # the flag validators ran the same checks: fv was not parsed
        raise UsageFailure(f"invalid flags: {e}") from None
    config = settings.flag_values(recipe)
    start_processes(config)  # before anything touches a device
    try:
        model = recipe.build_model(**data_shape(config))
    except ValueError as e:
        raise UsageFailure(f"invalid model flags: {e}") from None
    mesh = make_run_mesh(config)  # a batch that does not split stops here, before the data
    if jax.process_index() == 0:  # the one that writes
        check_paths(config)  # a file in the way or a read-only workdir stops here
    writer = prepare_workdir(recipe, fv, app_name)
    recipe = dataclasses.replace(recipe, workdir=str(writer.workdir))
    config = settings.flag_values(recipe)
    try:
        return train_and_evaluate(
            recipe, model, writer, app_name=app_name, mesh=mesh, solver_options=solver_options
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
        stop_on_peer_loss(e, config)
        raise
    finally:
        writer.close()  # the workdir's lock
