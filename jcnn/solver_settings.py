"""The :class:`~jcnn.solver.Solver`'s settings: its keyword arguments, checked once.

:meth:`SolverSettings.checked` turns the Solver's keyword arguments into a frozen
:class:`SolverSettings` (each bad value a ValueError naming the argument and what was
expected; ``optim_config`` completed with the update rule's defaults, ``run_config`` made
plain JSON, ``compute_dtype`` resolved). The Solver keeps cs231n's attribute names for them
(``solver.batch_size``, ``solver.optim_config``, ...) as views of ``solver.settings``; the
settings that shape the run are part of a checkpoint's identity
(:func:`jcnn.solver_checkpoints.identity`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from jcnn import _validate as check
from jcnn import checkpoint as ckpt
from jcnn import optim, precision

__all__ = ["SAMPLINGS", "SettingField", "SolverSettings"]

SAMPLINGS = ("replacement", "epoch")


def _optional_positive_int(name: str, value: Any) -> int | None:
    return None if value is None else check.positive_int(name, value)


class SettingField:
    """A read-only attribute that is a view of the same field of its owner's ``settings``
    (a :class:`SolverSettings`): how the Solver keeps cs231n's names (``solver.batch_size``)."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        return self if obj is None else getattr(obj.settings, self.name)


@dataclasses.dataclass(frozen=True)
class SolverSettings:
    """The Solver's settings (see :class:`~jcnn.solver.Solver` for each)."""

    update_rule: str
    optim_config: dict[str, Any]
    lr_decay: float
    lr_schedule: str
    warmup_epochs: float
    batch_size: int
    micro_batches: int
    num_epochs: int
    num_train_samples: int | None
    num_val_samples: int | None
    print_every: int
    verbose: bool
    checkpoint_dir: Path | None
    checkpoint_every: int | None
    checkpoint_every_s: float | None
    keep_checkpoints: int
    resume: bool | str
    run_config: dict[str, Any] | None
    seed: int
    augment: Callable | None
    compute_dtype: Any
    test_time_flip: bool
    test_time_translate: int
    check_data: bool
    custom_optimizer: Any  # an optax transformation instead of update_rule (None: none)
    custom_schedule: Callable[[Any], Any] | None
    sampling: str
    select_best: bool
    lookahead: Any

    @classmethod
    def checked(
        cls,
        *,
        update_rule: str,
        optim_config: Mapping[str, Any] | None,
        lr_decay: float,
        lr_schedule: str,
        warmup_epochs: float,
        batch_size: int,
        micro_batches: int,
        num_epochs: int,
        num_train_samples: int | None,
        num_val_samples: int | None,
        print_every: int,
        verbose: bool,
        checkpoint_dir: str | os.PathLike | None,
        checkpoint_every: int | None,
        checkpoint_every_s: float | None,
        keep_checkpoints: int,
        resume: bool | str,
        run_config: Mapping[str, Any] | None,
        seed: int,
        augment: Callable | None,
        compute_dtype: Any,
        test_time_flip: bool,
        test_time_translate: int,
        check_data: bool,
        optimizer: Any,
        schedule: Callable[[Any], Any] | None,
        sampling: str,
        select_best: bool,
        lookahead: Any,
    ) -> SolverSettings:
        """The settings the Solver's keyword arguments say, each checked.

        Raises:
            ValueError: naming the first argument that is not what it must be.
        """
        decay = check.finite_float("lr_decay", lr_decay, minimum=0.0, strict=True)
        optim.check_schedule(lr_schedule, decay)
        folder = None if checkpoint_dir is None else Path(checkpoint_dir)
        if resume is True and folder is None:
            raise ValueError("resume=True needs a checkpoint_dir to resume from")
        if run_config is not None and not isinstance(run_config, Mapping):
            raise ValueError(f"run_config must be a dict or None, got {type(run_config).__name__}")
        try:
            recorded = None if run_config is None else ckpt.to_plain_json(dict(run_config))
        except TypeError as e:
            raise ValueError(f"run_config must be JSON-able: {e}") from None
        if augment is not None and not callable(augment):
            raise ValueError(f"augment must be a function (key, X) -> X or None, got {augment!r}")
        if select_best not in (True, False):
            raise ValueError(f"select_best must be True or False, got {select_best!r}")
        if sampling not in SAMPLINGS:
            raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
        if optimizer is not None:
            if not hasattr(optimizer, "init") or not hasattr(optimizer, "update"):
                raise ValueError(f"optimizer must be an optax transformation, got {optimizer!r}")
            if schedule is not None and not callable(schedule):
                raise ValueError(
                    f"schedule must be a function of the update count, got {schedule!r}"
                )
        flip, translate = check.test_time_augmentation(test_time_flip, test_time_translate)
        size = check.positive_int("batch_size", batch_size)
        parts = check.positive_int("micro_batches", micro_batches)
        if size % parts:
            raise ValueError(f"micro_batches={parts} must divide batch_size={size}")
        return cls(
            update_rule=update_rule,
            optim_config=optim.resolve_optim_config(update_rule, optim_config),
            lr_decay=decay,
            lr_schedule=lr_schedule,
            warmup_epochs=check.finite_float("warmup_epochs", warmup_epochs, minimum=0.0),
            batch_size=size,
            micro_batches=parts,
            num_epochs=check.positive_int("num_epochs", num_epochs),
            num_train_samples=_optional_positive_int("num_train_samples", num_train_samples),
            num_val_samples=_optional_positive_int("num_val_samples", num_val_samples),
            print_every=check.positive_int("print_every", print_every),
            verbose=bool(verbose),
            checkpoint_dir=folder,
            checkpoint_every=_optional_positive_int("checkpoint_every", checkpoint_every),
            checkpoint_every_s=None
            if checkpoint_every_s is None
            else check.finite_float(
                "checkpoint_every_s", checkpoint_every_s, minimum=0.0, strict=True
            ),
            keep_checkpoints=check.nonnegative_int("keep_checkpoints", keep_checkpoints),
            resume=resume,
            run_config=recorded,
            seed=check.seed("seed", seed),
            augment=augment,
            compute_dtype=precision.resolve_compute_dtype(compute_dtype),
            test_time_flip=flip,
            test_time_translate=translate,
            check_data=bool(check_data),
            custom_optimizer=optimizer,
            custom_schedule=schedule,
            sampling=sampling,
            select_best=bool(select_best),
            lookahead=lookahead,
        )
