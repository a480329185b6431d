"""The resume policy: which checkpoint a rerun in the same workdir continues from, and which
flags may differ when it does.

Running the same command again (same ``--workdir``) resumes from the newest complete
checkpoint whose checksums hold (a corrupt one is set aside with a warning and the one
before it used) and ends exactly as an uninterrupted run would. A checkpoint made with other
flags (those that shape the model or the training: every setting of the recipe not declared
``may_change_on_resume``, :mod:`experiments.settings`) stops the app with one line naming them
(:func:`check_resumable`); so does a ``--num_epochs`` below what the run has done, and
training data other than the run's (the Solver's data fingerprint; ``--allow_data_change``
accepts it). A workdir holding checkpoint files but no good one (all moved aside as
``*.corrupt``) stops with one line listing them: nothing the user might salvage is deleted
unless they pass ``--overwrite``, which starts over.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from experiments import settings
from experiments.errors import UsageFailure
from experiments.rundir import RunWriter
from jcnn.files import to_json_values


def _flag_text(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return json.dumps(value) if value is None or isinstance(value, bool) else str(value)


def _listed(writer: RunWriter, paths: list[Path], limit: int = 6) -> str:
    """``'metrics.jsonl, checkpoints/step_00000006.npz.corrupt, ... and 3 more'``."""
    names = ["metrics.jsonl"] if writer.path("metrics.jsonl").exists() else []
    names += [str(p.relative_to(writer.workdir)) for p in paths]
    more = len(names) - limit
    return ", ".join(names[:limit]) + (f" and {more} more" if more > 0 else "")


def check_num_epochs(
    workdir: Path, path: Path, meta: Mapping[str, Any], config: Mapping[str, Any]
) -> None:
    """Stop with one line if ``--num_epochs`` is below what the checkpoint has done (equal:
    a finished run, fine; more: the run is extended)."""
    done, per_epoch = meta.get("iteration"), meta.get("iterations_per_epoch")
    if not isinstance(done, int) or not isinstance(per_epoch, int) or per_epoch < 1:
        return
    num_epochs = int(config["num_epochs"])
    if num_epochs * per_epoch < done:
        needed = -(-done // per_epoch)
        raise UsageFailure(
            f"--num_epochs={num_epochs} is below what the run in --workdir={workdir} has "
            f"already done ({done} iterations, epoch {meta.get('epoch')}, checkpoint "
            f"{path.name}): pass --num_epochs={needed} or more to resume it, or --overwrite "
            "to start over"
        )


def check_resumable(writer: RunWriter, recipe: Any) -> Path | None:
    """The checkpoint a rerun in ``writer``'s workdir resumes from (None: none, start over).

    Stops the app with one line if the checkpoint was made with other flags (naming them),
    if ``--num_epochs`` is below what it has done, if the workdir holds a finished run
    without any checkpoint, or checkpoint files but no good one (nothing is deleted then:
    ``--overwrite`` is the user's choice). A workdir killed before its first checkpoint is
    cleared and the run starts over."""
    from jcnn.checkpoint import config_differences, latest_run_checkpoint

    workdir = writer.workdir
    found = latest_run_checkpoint(writer.path("checkpoints"))
    if found is None:
        if writer.path("summary.json").exists():
            raise UsageFailure(
                f"--workdir={workdir} holds a finished run and no checkpoint to resume from; "
                "choose another --workdir or pass --overwrite"
            )
        salvage = writer.checkpoint_files((".json", ".corrupt"))
        if salvage:  # never delete what might be salvaged: the user decides
            raise UsageFailure(
                f"--workdir={workdir} holds a run but no good checkpoint to resume from; "
                f"found {_listed(writer, salvage)} (corrupt checkpoints are moved aside as "
                "*.corrupt and kept): to start over, deleting them, pass --overwrite, or "
                "choose another --workdir"
            )
        # Killed before its first checkpoint: nothing to salvage, the rerun redoes it all.
        print(f"{workdir} holds no checkpoint yet: starting the run over", flush=True)
        writer.clear()
        return None
    path, meta = found
    saved = meta.get("run_config")
    if not isinstance(saved, Mapping):
        raise UsageFailure(
            f"--workdir={workdir}: checkpoint {path.name} records no flags, so it cannot be "
            "resumed safely; choose another --workdir or pass --overwrite"
        )
    config = settings.flag_values(recipe)
    recipe_class = type(recipe)
    saved = {k: v for k, v in saved.items() if k in config}  # flags the app no longer has
    differences = config_differences(
        saved, to_json_values(config), defaults=settings.before_added(recipe_class),
        ignore=settings.may_change_on_resume(recipe_class),
    )  # fmt: skip
    if differences:
        listed = "; ".join(
            f"--{k}={_flag_text(a)} there, --{k}={_flag_text(b)} now"
            for k, (a, b) in sorted(differences.items())
        )
        flagfile = workdir / "flags.cfg"
        its_flags = (
            f"its flags (--flagfile={flagfile})"
            if flagfile.is_file()
            else "the flags listed there (its flags.cfg is gone)"
        )
        raise UsageFailure(
            f"--workdir={workdir} holds a run made with other flags ({listed}): rerun it with "
            f"{its_flags}, or choose another --workdir, or pass --overwrite to start over"
        )
    check_num_epochs(workdir, path, meta, config)
    return path
