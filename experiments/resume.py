"""The resume policy: which checkpoint a rerun in the same workdir continues from, and which
flags may differ when it does.

Running the same command again (same ``--workdir``) resumes from the newest complete
checkpoint whose checksums hold (a corrupt one is set aside with a warning and the one before
it used) and ends exactly as an uninterrupted run would. A checkpoint made with other flags
(those that shape the model or the training; :data:`RESUME_MAY_DIFFER` lists the others)
stops the app with one line naming them (:func:`check_resumable`). ``--overwrite`` starts
over instead.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from experiments.errors import UsageFailure
from experiments.rundir import RunWriter
from jcnn.files import to_json_values

# Flags that may change when a run resumes: where things are, how often it reports and
# checkpoints, how long it runs (more epochs extend it). Every other flag must match.
RESUME_MAY_DIFFER = (
    "workdir", "overwrite", "data_dir", "num_test", "num_epochs", "print_every",
    "plot_every_epoch", "keep_checkpoints", "checkpoint_every", "debug_nans",
    "num_devices", "coordinator_address", "num_processes", "process_id", "coordinator_timeout",
)  # fmt: skip
# Flags added after runs were made: a checkpoint without them was made with these values.
ADDED_FLAG_DEFAULTS = {
    "lr_schedule": "exponential", "warmup_epochs": 0.0, "test_time_flip": False,
    "label_smoothing": 0.0, "cutout": 0,
}  # fmt: skip


def _flag_text(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return json.dumps(value) if value is None or isinstance(value, bool) else str(value)


def check_resumable(writer: RunWriter, config: Mapping[str, Any]) -> Path | None:
    """The checkpoint a rerun in ``writer``'s workdir resumes from (None: none, start over).

    Stops the app with one line if the checkpoint was made with other flags (naming them),
    or if the workdir holds a finished run without any checkpoint."""
    from jcnn.checkpoint import CHECKPOINT_PATTERNS, config_differences, latest_checkpoint

    workdir = writer.workdir
    found = latest_checkpoint(writer.path("checkpoints"), CHECKPOINT_PATTERNS)
    if found is None:
        if writer.path("summary.json").exists():
            raise UsageFailure(
                f"--workdir={workdir} holds a finished run and no checkpoint to resume from; "
                "choose another --workdir or pass --overwrite"
            )
        print(f"{workdir} holds no complete checkpoint: starting the run over", flush=True)
        writer.clear()
        return None
    path, meta = found
    saved = meta.get("run_config")
    if not isinstance(saved, Mapping):
        raise UsageFailure(
            f"--workdir={workdir}: checkpoint {path.name} records no flags, so it cannot be "
            "resumed safely; choose another --workdir or pass --overwrite"
        )
    differences = config_differences(
        saved, to_json_values(dict(config)), defaults=ADDED_FLAG_DEFAULTS, ignore=RESUME_MAY_DIFFER
    )
    if differences:
        listed = "; ".join(
            f"--{k}={_flag_text(a)} there, --{k}={_flag_text(b)} now"
            for k, (a, b) in sorted(differences.items())
        )
        raise UsageFailure(
            f"--workdir={workdir} holds a run made with other flags ({listed}): rerun it with "
            f"its flags (--flagfile={workdir / 'flags.cfg'}), or choose another --workdir, or "
            "pass --overwrite to start over"
        )
    return path
