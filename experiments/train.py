"""The run loop of the training apps: flags in, a trained model and its files out.

The apps (:mod:`experiments.vgg_cifar`, :mod:`experiments.three_layer_cifar`,
:mod:`experiments.airbench_cifar`) only name their recipe class (its settings are their
flags, its ``build_model`` their model); the rest lives in one module per job::

    experiments.settings      a setting declared once: its default, checks, resume rule
    experiments.config        the groups of settings every recipe is made of
    experiments.recipes       the apps' recipe classes and the named runs (VGG_SEED, ...)
    experiments.train_flags   the flags derived from a recipe's settings, config_from_flags
    experiments.rundata       the data (CIFAR-10 or an image folder) and the paths' checks
    experiments.rundir        the workdir's files: RunWriter, metrics lines, plots, summary
    experiments.report        the header line; test accuracy, summary.json, the closing line
    experiments.trained       what a run keeps for using its network (best.npz)
    experiments.resume        which checkpoint a rerun resumes from
    experiments.processes     several processes: starting them, losing one

and this module runs them::

    recipe = recipe_from_flags(fv, VGGRecipe)       # typed, frozen, checked
    model = recipe.build_model()                    # checked before any data is loaded
    summary = fit(recipe)                           # train, write the run's files

Bad flags stop the program with one line naming the flag, before data is loaded (the
settings' checks as flag validators, then the model's own checks, then
:func:`experiments.rundata.check_paths`); every other failure a user can fix ends the same
way, ``FATAL <cause>: <what to do>`` and exit status 1 (:mod:`experiments.errors`, which
lists them); any other exception is a bug and keeps its traceback. Rerunning the same
command resumes the run (:mod:`experiments.resume`), ``--overwrite`` starts over.

Scaling out: training is data-parallel over ``--num_devices`` devices per process (default:
all local ones); ``--batch_size`` is the global batch, split evenly over them. Several hosts:
one process per host with the same flags plus ``--coordinator_address=host0:port
--num_processes=N --process_id=i`` (:mod:`experiments.processes`); every process loads the
dataset and gathers only its rows of each global batch, only process 0 prints and writes,
and the workdir must be on a filesystem they share.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
from absl import flags

from experiments import errors, rundata, rundir, settings
from experiments.config import Augment, Cs231nOptimiser, Schedule
from experiments.errors import UsageFailure
from experiments.lock import WorkdirLock
from experiments.processes import check_same_flags, start_processes, stop_on_peer_loss
from experiments.progress import Progress
from experiments.recipes import Recipe
from experiments.report import describe_run, finish_run, printer
from experiments.resume import check_resumable
from experiments.rundata import check_paths, data_shape, load_data
from experiments.rundir import RunLogger, RunWriter
from experiments.train_flags import recipe_from_flags
from experiments.trained import repair_best, save_preprocessing


def build_model(recipe_class: type[Recipe], config: Mapping[str, Any]) -> Any:
    """The model of a run's recorded flags (``config``, e.g. summary.json's ``flags``; its
    ``input_dim`` and ``num_classes`` if it has them, else CIFAR-10's)."""
    recipe = settings.from_record(recipe_class, config)
    return recipe.build_model(
        tuple(config.get("input_dim", (3, 32, 32))), int(config.get("num_classes", 10))
    )


def make_augment(recipe: Augment) -> Callable | None:
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
    if isinstance(recipe, Schedule):
        kwargs.update(
            batch_size=recipe.batch_size, micro_batches=recipe.micro_batches,
            num_epochs=recipe.num_epochs, seed=recipe.seed,
        )  # fmt: skip
    if isinstance(recipe, Cs231nOptimiser):
        kwargs.update(
            update_rule=recipe.update_rule, optim_config={"learning_rate": recipe.learning_rate},
            lr_decay=recipe.lr_decay, lr_schedule=recipe.lr_schedule,
            warmup_epochs=recipe.warmup_epochs,
        )  # fmt: skip
    if isinstance(recipe, Augment):
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


def make_solver(
    recipe: Recipe,
    model: Any,
    data: Mapping[str, Any],
    writer: RunWriter,
    logger: RunLogger,
    mesh: Any,
    progress: Progress | None = None,
) -> Any:
    """The run's Solver, resumed from the workdir's newest checkpoint if it holds one:
    :func:`solver_kwargs`, then the recipe's own ``training_pieces`` over them."""
    from jcnn._validate import MemoryLimitError
    from jcnn.checkpoint import CheckpointMismatchError
    from jcnn.parallel import is_primary
    from jcnn.solver import Solver
    from jcnn.solver_checkpoints import ProcessesDifferError

    kwargs = {**solver_kwargs(recipe), "verbose": is_primary()}
    try:
        kwargs.update(recipe.training_pieces(model, data))
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
    except (CheckpointMismatchError, MemoryLimitError):
        raise  # main names the workdir, or what does not fit
    except ProcessesDifferError as e:  # not a flag: what differs is named
        raise UsageFailure(str(e)) from e
    except ValueError as e:  # a setting the flag checks let through; the message names it
        raise UsageFailure(f"invalid training flags: {settings.as_flags(e, type(recipe))}") from e


def run_training(solver: Any, logger: RunLogger, config: Mapping[str, Any]) -> dict[str, float]:
    """``solver.train()`` (with ``--debug_nans`` switched on for it, and back after);
    returns this session's seconds of training and outside it (accuracy checks, checkpoints,
    plots), read from the run's clock. The logger's metrics are flushed even on a failure."""
    run = solver.run
    training0, outside0 = run.training_s(), run.outside_s
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
    return {"train_s": run.training_s() - training0, "outside_training_s": run.outside_s - outside0}


def train_and_evaluate(
    recipe: Recipe,
    model: Any,
    writer: RunWriter,
    *,
    data: Mapping[str, Any] | None = None,
    mesh: Any = None,
    tune_memory: bool = False,
) -> dict[str, Any]:
    """Load the data (unless given; then :func:`jcnn.cpu.tune` if ``tune_memory``), train
    ``model`` with the Solver (resuming from the workdir's newest checkpoint if it holds
    one), evaluate the best parameters on the test split, write every file of the run;
    returns the summary. Training is data-parallel over ``mesh`` (default:
    :func:`make_run_mesh`); every process gathers only its rows of each global batch, only
    process 0 prints and writes."""
    from jcnn.parallel import is_primary

    config = settings.flag_values(recipe)  # the run's flags, as its files record them
    app_name = recipe.APP_NAME
    if mesh is None:
        mesh = make_run_mesh(config)
    say = printer(is_primary())
    t_start = time.perf_counter()
    plots = bool(config["plots"]) and rundir.have_matplotlib()
    if config["plots"] and not plots:
        say("matplotlib is not installed: no plots (pip install 'jcnn[plots]')", flush=True)
    if data is None:
        data = load_data(config)
    if tune_memory:
        import jcnn.cpu

        jcnn.cpu.tune()  # after the data: see fit
    data_s = time.perf_counter() - t_start

    logger = RunLogger(writer, config, plots=plots)
    progress = Progress(recipe.batch_size, enabled=is_primary())
    solver = make_solver(recipe, model, data, writer, logger, mesh, progress)
    start_iteration = solver.iteration
    if solver.resumed_from is not None:
        summary = _summary_of(writer, solver.iteration)
        if solver.iteration >= solver.num_iterations and summary is not None:
            repaired = repair_best(writer, solver, model, summary, data)  # "" if intact
            say(f"{app_name}: the run in {writer.workdir} is complete; see summary.json{repaired}")
            return summary
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
    session = run_training(solver, logger, config)

    return finish_run(
        solver, model, data, writer, app_name=app_name, config=config, plots=plots,
        start_iteration=start_iteration, timings={"start": t_start, "data_s": data_s, **session},
    )  # fmt: skip


def _summary_of(writer: RunWriter, iteration: int) -> dict[str, Any] | None:
    """The workdir's summary.json if it is the summary of the run at ``iteration`` (None: no
    summary, or one left by an earlier end of a run extended since, or an unreadable one:
    the results are then written again)."""
    try:
        summary = json.loads(writer.path("summary.json").read_text())
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) and summary.get("iterations") == iteration else None


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


def with_workdir(recipe: Recipe) -> Recipe:
    """``recipe`` with its ``workdir`` set: its own, or a new default folder no other run can
    share (``runs/<app>-<timestamp>``, made by process 0)."""
    if recipe.workdir:
        return recipe
    make = rundir.create_workdir if jax.process_index() == 0 else rundir.default_workdir
    return dataclasses.replace(recipe, workdir=str(make(recipe.APP_NAME)))


def prepare_workdir(recipe: Recipe) -> RunWriter:
    """The run's writer for ``recipe.workdir`` (set: :func:`with_workdir`), locked for this
    run (:mod:`experiments.lock`; released by ``writer.close()`` or when the process ends),
    cleared with ``--overwrite``, else checked for a run to resume; then flags.cfg. With
    several processes, the others wait here until process 0 is done with it."""
    workdir = Path(recipe.workdir or "")
    writer = RunWriter(workdir)
    if writer.enabled:  # before the workdir is read or cleared
        writer.lock = WorkdirLock(workdir).acquire()
    try:
        if recipe.overwrite:
            writer.clear()
        elif writer.enabled and writer.holds_run():  # process 0 checks (and tidies) the workdir
            resume_from = check_resumable(writer, recipe)
            if resume_from is not None:
                say = f"{recipe.APP_NAME}: resuming the run in {workdir} from {resume_from}"
                print(say, flush=True)
        writer.write_text("flags.cfg", settings.flagfile_text(recipe))
        if jax.process_count() > 1:  # the others read the workdir only once process 0 is done
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("jcnn: workdir ready")
    except BaseException:
        writer.close()
        raise
    return writer


def _data_shape(recipe: Recipe, data: Mapping[str, Any] | None) -> dict[str, Any]:
    """The model's ``input_dim`` and ``num_classes``: the data's if given (its
    ``label_names``, else CIFAR-10's 10 classes), else what the recipe's data will be."""
    if data is None:
        return data_shape(settings.flag_values(recipe))
    names = data.get("label_names")
    return {
        "input_dim": tuple(data["X_train"].shape[1:]),
        "num_classes": 10 if names is None else len(names),
    }


def fit(
    recipe: Recipe,
    data: Mapping[str, Any] | None = None,
    *,
    mesh: Any = None,
    tune_memory: bool = False,
) -> dict:
    """Train ``recipe`` and write its run's files: the one function every training app runs.

    ``recipe.workdir`` (default: a new ``runs/<app>-<timestamp>``) receives flags.cfg,
    config.json, metrics.jsonl, the plots, checkpoints, best.npz and summary.json; if it
    holds a run with the same settings, that run resumes from its newest checkpoint
    (``overwrite=True`` starts over). From a notebook::

        from experiments import recipes, train
        recipe = dataclasses.replace(recipes.AIRBENCH94, num_epochs=2, workdir="runs/a")
        summary = train.fit(recipe)  # CIFAR-10 from recipe.data_dir; or fit(recipe, data)

    Args:
        recipe: the run's settings (:mod:`experiments.recipes`).
        data: the split arrays (``X_train``, ``y_train``, ``X_val``, ``y_val``, optionally
            ``X_test``, ``y_test``; float32 NCHW, as :func:`jcnn.data.get_cifar10_data`
            gives them, with its ``mean_image`` and ``label_names`` if the run is to be
            usable as a classifier); default: loaded as the recipe's data settings say.
        mesh: the devices to train on, data-parallel (default: ``recipe.num_devices``).
        tune_memory: once the data is loaded, back the rest of this process's heap with
            huge pages (:func:`jcnn.cpu.tune`, for good), as the apps do: faster steps on the
            CPU. The data stays outside that heap, so that the steps' buffers do not
            fragment it around long-lived arrays (its resident size would grow by a buffer's
            size every few steps).

    Returns:
        The run's summary (what summary.json holds): accuracies, timings, the flags.

    Raises:
        ValueError: the model does not fit the data (e.g. too many pooling stages).
        experiments.errors.UsageFailure: data that cannot be loaded, a workdir that cannot
            be written, a checkpoint made with other settings (one line naming them), a
            batch that does not split over the devices.
        jcnn.solver.TrainingStopped, jcnn.solver.NonFiniteLossError: as the Solver's.
    """
    model = recipe.build_model(**_data_shape(recipe, data))  # before any folder is made
    recipe = with_workdir(recipe)
    config = settings.flag_values(recipe)
    mesh = make_run_mesh(config) if mesh is None else mesh  # before the data
    if jax.process_index() == 0:  # the one that writes
        check_paths(config)  # a file in the way or a read-only workdir stops here
    writer = prepare_workdir(recipe)
    try:
        return train_and_evaluate(
            recipe, model, writer, data=data, mesh=mesh, tune_memory=tune_memory
        )
    finally:
        writer.close()  # the workdir's lock


def main(
    argv: Sequence[str], *, recipe_class: type[Recipe], fv: flags.FlagValues = flags.FLAGS
) -> dict[str, Any]:
    """The body of an app's ``main``: the recipe from the parsed flags, checks that need
    more than the flag validators, then :func:`fit`. Every problem a user can fix stops
    with one line; so does a non-finite loss (details in the workdir's nonfinite.json)."""
    with errors.failures_in_one_line():
        return _main(argv, recipe_class=recipe_class, fv=fv)


def _disk_full(workdir: Path, e: OSError) -> UsageFailure:
    """The line for a full disk while the run writes its files: where, and what is kept."""
    from jcnn.checkpoint import latest_run_checkpoint

    try:
        found = latest_run_checkpoint(workdir / "checkpoints")
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
        f"the disk is full: could not write the run's files in {workdir}{where}; {kept}"
    )


def _memory_message(e: Any) -> str:
    """The app's line for a :class:`jcnn._validate.MemoryLimitError`: a training step that
    does not fit is cut down by the batch (or its parts); a batch itself only by the batch;
    an accuracy check's (its chunks are fixed) only by a smaller network."""
    from jcnn._validate import BUILDING_BATCHES

    if e.during is None:
        return (
            f"the run does not fit in memory: {e}; lower --batch_size (or split each batch "
            "with --micro_batches)"
        )
    if e.during == BUILDING_BATCHES:
        return f"the run does not fit in memory when {e.during}: {e}; lower --batch_size"
    return (
        f"the run does not fit in memory when {e.during} for its accuracy checks: {e}; make "
        "the network smaller (fewer filters or hidden units)"
    )


def _main(argv: Sequence[str], *, recipe_class: type[Recipe], fv: flags.FlagValues) -> dict:
    from jcnn._validate import MemoryLimitError
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
    check_same_flags(config, recipe_class)
    shape = data_shape(config)
    try:
        recipe.build_model(**shape)
    except ValueError as e:
        named = settings.as_flags(e, recipe_class)
        raise UsageFailure(
            f"invalid model flags{rundata.for_images(config, shape)}: {named}"
        ) from None
    recipe = with_workdir(recipe)
    workdir = Path(recipe.workdir or "")
    try:
        return fit(recipe, tune_memory=True)  # a training program: huge pages (jcnn.cpu)
    except CheckpointMismatchError as e:
        raise UsageFailure(mismatch_message(workdir, config, e)) from None
    except TrainingStopped as e:
        saved = f"saved {e.checkpoint}" if e.checkpoint is not None else "nothing saved"
        raise errors.stopped(
            f"stopped ({e.reason}) after iteration {e.iteration}; {saved}: the same command "
            f"resumes from there (--workdir={workdir})",
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
        raise _disk_full(workdir, e) from e
    except MemoryLimitError as e:  # met while compiling a step
        raise UsageFailure(settings.as_flags(_memory_message(e), recipe_class)) from None
    except (jax.errors.JaxRuntimeError, ValueError) as e:  # a collective whose peer is gone
        stop_on_peer_loss(e, config)  # (a gather between processes fails with ValueError)
        raise
