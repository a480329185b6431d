"""The machinery of typed recipes: a setting declared once, beside its default, its help
text, its checks and its resume rule; a recipe built from settings checks itself.

A setting is a dataclass field made with :func:`option`; a group of settings is a frozen
dataclass deriving from :class:`Settings`, whose checks over several settings are its
``CHECKS``; a recipe class inherits the groups it uses (:mod:`experiments.config` holds
the groups, :mod:`experiments.recipes` the recipes)::

    recipe = VGGRecipe(learning_rate=1e-3)     # every check runs here: ValueError if bad
    recipe.learning_rate                        # typed, frozen
    dataclasses.replace(recipe, num_epochs=2)   # a variation
    flag_values(recipe)                         # {'num_filters': [64, ...], ...}: the run's flags
    flagfile_text(recipe)                       # the flagfile that reruns it

Checks: a setting's own (``choices``, ``lower``/``upper`` bounds, a ``check`` predicate) and
a group's over several settings, run when a recipe is built and, as absl validators, while
the command line is parsed (:func:`experiments.train_flags.define_recipe_flags`). Resume
rules: a setting made with ``may_change_on_resume=True`` may differ when a run resumes
(where files go, how often it reports, which code computes the same function); every other
must match the checkpoint's; ``before_added`` is the value a checkpoint made before the
setting existed stands for (:mod:`experiments.resume` reads both).

Importing this module imports no JAX.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any, ClassVar

import numpy as np

_NOT_ADDED = object()


@dataclasses.dataclass(frozen=True)
class Option:
    """What a setting is, beside its default (the field's)."""

    help: str
    kind: str  # bool, int, float, str, enum, int_list, weight_scale
    choices: tuple[str, ...] = ()
    lower: float | None = None
    upper: float | None = None
    check: Callable[[Any], bool] | None = None  # False: "must be <requirement>"
    requirement: str = ""
    allow_empty: bool = False  # int_list: may be empty
    may_change_on_resume: bool = False
    before_added: Any = _NOT_ADDED
    in_flagfile: bool = True  # False: where a run executes, not what it computes

    @property
    def added_later(self) -> bool:
        return self.before_added is not _NOT_ADDED


def option(default: Any, help: str, *, kind: str | None = None, **details: Any) -> Any:
    """A setting: a dataclass field with ``default`` and its :class:`Option` (``kind`` is
    inferred from the default unless it is None; ``details`` are Option's other fields)."""
    if kind is None:
        kind = {bool: "bool", int: "int", float: "float", str: "str", tuple: "int_list"}[
            type(default)
        ]
    if details.get("choices"):
        kind = "enum"
    return dataclasses.field(default=default, metadata={"option": Option(help, kind, **details)})


def options(recipe_or_class: Any) -> dict[str, Option]:
    """``{name: Option}`` of a recipe (class or value), in field order."""
    return {f.name: f.metadata["option"] for f in dataclasses.fields(recipe_or_class)}


def group_checks(
    recipe_class: type,
) -> Iterator[tuple[tuple[str, ...], Callable[[Mapping[str, Any]], None]]]:
    """The checks over several settings that the recipe's groups declare (``CHECKS``)."""
    seen: set[int] = set()
    for klass in reversed(recipe_class.__mro__):
        for names, fn in vars(klass).get("CHECKS", ()):
            if id(fn) not in seen:
                seen.add(id(fn))
                yield names, fn


def check_value(name: str, opt: Option, value: Any) -> None:
    """Raise ValueError (``must be ..., got ...``) unless ``value`` suits setting ``name``."""
    if value is None:
        return  # None: "not set", wherever a setting allows it (its default is None)
    if opt.kind == "int_list":
        if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value):
            raise ValueError(f"must be a list of positive integers, got {list(value)!r}")
        if not value and not opt.allow_empty:
            raise ValueError(f"must be a non-empty list, got {list(value)!r}")
    if opt.kind == "float" and not (
        isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    ):
        raise ValueError(f"must be a finite number, got {value!r}")
    if opt.choices and value not in opt.choices:
        raise ValueError(f"must be one of {', '.join(opt.choices)}, got {value!r}")
    if opt.lower is not None and not value >= opt.lower:
        raise ValueError(f"must be >= {opt.lower}, got {value!r}")
    if opt.upper is not None and not value <= opt.upper:
        raise ValueError(f"must be <= {opt.upper}, got {value!r}")
    if opt.check is not None and not opt.check(value):
        raise ValueError(f"must be {opt.requirement}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class Settings:
    """The base of every group and recipe: lists become tuples, every check runs."""

    CHECKS: ClassVar[tuple[tuple[tuple[str, ...], Callable[[Mapping[str, Any]], None]], ...]] = ()

    def __post_init__(self) -> None:
        for name, opt in options(self).items():
            value = getattr(self, name)
            if isinstance(value, list):
                value = tuple(value)
                object.__setattr__(self, name, value)
            try:
                check_value(name, opt, value)
            except ValueError as e:
                raise ValueError(f"{name}: {e}") from None
        values = vars(self)
        for _, fn in group_checks(type(self)):
            fn(values)


def groups(recipe_class: type) -> list[tuple[str, list[str]]]:
    """``[(title, setting names)]``: the settings of a recipe class by the group (base
    class) that declares them, the groups in the recipe's order and its own settings last;
    a title is the first paragraph of the group's docstring, on one line."""
    out = []
    for klass in [*recipe_class.__mro__[1:], recipe_class]:
        own = [n for n in vars(klass).get("__annotations__", {}) if n in options(klass)]
        if own and klass is not Settings:
            doc = (klass.__doc__ or klass.__name__).strip().split("\n\n")[0]
            out.append((" ".join(doc.split()), own))
    return out


def flag_values(recipe: Settings) -> dict[str, Any]:
    """``{name: value}`` with lists for tuples: the run's flags as they are recorded (in
    config.json, summary.json and every checkpoint)."""
    return {
        name: list(v) if isinstance(v, tuple) else v
        for name in options(recipe)
        for v in [getattr(recipe, name)]
    }


def flagfile_text(recipe: Settings) -> str:
    """The recipe as a flagfile (one ``--name=value`` per line; unset settings and those of
    where a run executes, not what it computes, left out): its run's ``flags.cfg``."""
    lines = []
    for name, opt in options(recipe).items():
        value = getattr(recipe, name)
        if not opt.in_flagfile or value is None:
            continue
        if isinstance(value, bool):
            lines.append(f"--{name}" if value else f"--no{name}")
        elif isinstance(value, tuple):
            lines.append(f"--{name}={','.join(str(v) for v in value)}")
        else:
            lines.append(f"--{name}={value}")
    return "\n".join(lines) + "\n"


def may_change_on_resume(recipe_class: type) -> tuple[str, ...]:
    return tuple(n for n, o in options(recipe_class).items() if o.may_change_on_resume)


def before_added(recipe_class: type) -> dict[str, Any]:
    return {n: o.before_added for n, o in options(recipe_class).items() if o.added_later}


def as_flags(message: Any, recipe_class: type) -> str:
    """``message`` with each ``name=`` of a setting of ``recipe_class`` written as its flag,
    ``--name=``: the library names its arguments (``batch_size=64 is larger than ...``),
    an app's line names what the user typed."""
    listed = "|".join(re.escape(n) for n in sorted(names(recipe_class), key=len, reverse=True))
    return re.sub(rf"(?<![-\w])({listed})=", r"--\1=", str(message))


def names(recipe_class: type) -> tuple[str, ...]:
    """The settings (and flags) of a recipe class, in field order."""
    return tuple(options(recipe_class))


def from_record(recipe_class: type, record: Mapping[str, Any]) -> Any:
    """The recipe a run's recorded flags describe (config.json's, summary.json's, a
    checkpoint's): a setting the record lacks takes the value a run made before it existed
    stood for (``before_added``, else the class default); recorded flags the recipe class
    does not have (any more) are left out."""
    kwargs = {}
    for name, opt in options(recipe_class).items():
        if name in record:
            kwargs[name] = record[name]
        elif opt.added_later:
            kwargs[name] = opt.before_added
    return recipe_class(**kwargs)


# ---------------------------------------------------------- checks the settings share


def finite_positive(v: float) -> bool:
    return math.isfinite(v) and v > 0


def finite_nonnegative(v: float) -> bool:
    return math.isfinite(v) and v >= 0


def positive_in_float32(v: float) -> bool:
    """Finite and > 0, and still so as a float32 (1e39 would be inf, 1e-50 zero)."""
    with np.errstate(over="ignore", under="ignore"):
        as32 = np.float32(v)
    return finite_positive(v) and bool(np.isfinite(as32)) and as32 > 0


def probability(v: float) -> bool:
    return 0.0 <= v < 1.0


def weight_scale_ok(v: Any) -> bool:
    return v == "he" or (
        isinstance(v, (int, float)) and not isinstance(v, bool) and finite_positive(v)
    )


def onednn_available(value: str) -> bool:
    """``onednn`` only where oneDNN's kernels can run (imports jcnn, so JAX, for it)."""
    if value == "onednn":
        from jcnn.layers import conv_onednn

        why = conv_onednn.unavailable()
        if why is not None:
            raise ValueError(f"onednn cannot run: {why}; use auto or xla")
    return True
