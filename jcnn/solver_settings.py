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
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from jcnn import _validate as check
from jcnn import checkpoint as ckpt
from jcnn import optim, precision, selection
from jcnn.sampling import SAMPLINGS

__all__ = ["ARGUMENTS", "SAMPLINGS", "SettingField", "SolverSettings"]


def _optional(checker: Callable[[str, Any], Any]) -> Callable[[str, Any], Any]:
    """``checker``, letting None through."""
    return lambda name, value: None if value is None else checker(name, value)


def _json_or_none(name: str, value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ValueError(f"{name} must be a dict or None, got {type(value).__name__}")
    try:
        return ckpt.to_plain_json(dict(value))
    except TypeError as e:
        raise ValueError(f"{name} must be JSON-able: {e}") from None


def _function_or_none(name: str, value: Any) -> Callable | None:
    if value is not None and not callable(value):
        raise ValueError(f"{name} must be a function (key, X) -> X or None, got {value!r}")
    return value


def _sampling(name: str, value: Any) -> str:
    if value not in SAMPLINGS:
        raise ValueError(f"{name} must be one of {SAMPLINGS}, got {value!r}")
    return value


def _optimizer(name: str, value: Any) -> Any:
    if value is not None and not (hasattr(value, "init") and hasattr(value, "update")):
        raise ValueError(f"{name} must be an optax transformation, got {value!r}")
    return value


def _schedule(name: str, value: Any) -> Callable[[Any], Any] | None:
    if value is not None and not callable(value):
        raise ValueError(f"{name} must be a function of the update count, got {value!r}")
    return value


def _as_given(name: str, value: Any) -> Any:
    return value


def _selection(name: str, value: Any) -> Any:
    if value is not None and not isinstance(value, selection.Selection):
        raise ValueError(f"{name} must be a jcnn.selection.Selection or None, got {value!r}")
    return value


# Each Solver keyword argument's own check (argument name, value) -> the setting's value; the
# checks between arguments are in SolverSettings.checked.
_CHECKS: dict[str, Callable[[str, Any], Any]] = {
    "update_rule": _as_given,  # checked with optim_config
    "optim_config": _as_given,
    "lr_decay": lambda n, v: check.finite_float(n, v, minimum=0.0, strict=True),
    "lr_schedule": _as_given,  # checked with lr_decay
    "warmup_epochs": lambda n, v: check.finite_float(n, v, minimum=0.0),
    "batch_size": check.positive_int,
    "micro_batches": check.positive_int,
    "num_epochs": check.positive_int,
    "num_train_samples": _optional(check.positive_int),
    "num_val_samples": _optional(check.positive_int),
    "print_every": check.positive_int,
    "verbose": lambda n, v: bool(v),
    "checkpoint_dir": _optional(check.folder),
    "checkpoint_every": _optional(check.positive_int),
    "checkpoint_every_s": _optional(
        lambda n, v: check.finite_float(n, v, minimum=0.0, strict=True)
    ),
    "keep_checkpoints": check.nonnegative_int,
    "resume": _as_given,  # checked with checkpoint_dir
    "run_config": _json_or_none,
    "seed": check.seed,
    "augment": _function_or_none,
    "compute_dtype": lambda n, v: precision.resolve_compute_dtype(v),
    "test_time_flip": _as_given,  # checked with test_time_translate
    "test_time_translate": _as_given,
    "check_data": lambda n, v: bool(v),
    "optimizer": _optimizer,
    "schedule": _schedule,
    "sampling": _sampling,
    "select_best": check.true_or_false,
    "lookahead": _as_given,
    "selection": _selection,
}

ARGUMENTS = tuple(_CHECKS)  # the Solver's keyword arguments that are settings

# The Solver's argument names whose settings field is named otherwise.
_FIELD_OF = {"optimizer": "custom_optimizer", "schedule": "custom_schedule"}


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
    selection: Any  # a jcnn.selection.Selection (None: every row trains)

    @classmethod
    def checked(cls, **arguments: Any) -> SolverSettings:
        """The settings the Solver's keyword arguments say (every one of them, by the
        Solver's names: ``optimizer`` and ``schedule`` become ``custom_optimizer`` and
        ``custom_schedule``), each checked on its own, then against the others.

        Raises:
            ValueError: naming the first argument that is not what it must be.
            TypeError: an argument the Solver does not take, or one missing.
        """
        if set(arguments) != set(_CHECKS):
            unknown, missing = set(arguments) - set(_CHECKS), set(_CHECKS) - set(arguments)
            raise TypeError(f"unknown settings {sorted(unknown)}, missing {sorted(missing)}")
        v = {_FIELD_OF.get(k, k): _CHECKS[k](k, value) for k, value in arguments.items()}
        optim.check_schedule(v["lr_schedule"], v["lr_decay"])
        if v["resume"] is True and v["checkpoint_dir"] is None:
            raise ValueError("resume=True needs a checkpoint_dir to resume from")
        v["test_time_flip"], v["test_time_translate"] = check.test_time_augmentation(
            v["test_time_flip"], v["test_time_translate"]
        )
        rows = "batch_size" if v["selection"] is None else "selection.keep"
        batch = v["batch_size"] if v["selection"] is None else v["selection"].keep
        if batch > v["batch_size"]:
            raise ValueError(f"selection.keep={batch} must be at most batch_size={v['batch_size']}")
        if batch % v["micro_batches"]:
            raise ValueError(f"micro_batches={v['micro_batches']} must divide {rows}={batch}")
        v["optim_config"] = optim.resolve_optim_config(v["update_rule"], v["optim_config"])
        return cls(**v)

    def warmup_iterations(self, iterations_per_epoch: int) -> int:
        """The number of updates ``warmup_epochs`` makes at ``iterations_per_epoch``, rounded.

        Args:
            iterations_per_epoch: the run's updates per epoch.

        Returns:
            ``round(warmup_epochs * iterations_per_epoch)``.
        """
        return round(self.warmup_epochs * iterations_per_epoch)

    def optimizer(
        self, iterations_per_epoch: int, num_iterations: int
    ) -> tuple[Any, Callable[[Any], Any]]:
        """The run's optax transformation and its learning-rate schedule: cs231n's update
        rule and schedule (:func:`jcnn.optim.make_optimizer`, :func:`jcnn.optim.make_schedule`),
        or the ``custom_optimizer`` and ``custom_schedule`` (NaN when none was given).

        Args:
            iterations_per_epoch: the run's updates per epoch (the per-epoch decay, warm-up).
            num_iterations: the run's updates in all (the cosine schedule's length).

        Returns:
            ``(optimizer, schedule)``: an optax transformation and ``t -> learning rate``.
        """
        if self.custom_optimizer is not None:
            given = self.custom_schedule
            return self.custom_optimizer, given if given is not None else (lambda t: float("nan"))
        schedule = optim.make_schedule(
            self.optim_config["learning_rate"],
            lr_schedule=self.lr_schedule,
            lr_decay=self.lr_decay,
            iterations_per_epoch=iterations_per_epoch,
            num_iterations=num_iterations,
            warmup_iterations=self.warmup_iterations(iterations_per_epoch),
        )
        optimizer, _ = optim.make_optimizer(self.update_rule, self.optim_config, schedule)
        return optimizer, schedule
