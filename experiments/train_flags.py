"""The training apps' flags, derived from their recipe's settings (:mod:`experiments.settings`).

:func:`define_recipe_flags` defines one flag per setting of a recipe class, with the
recipe's value as its default, the setting's help text, and its checks as absl validators
(a setting's own next to its flag, a check over several settings as a multi-flag
validator): bad flags stop the program with one line naming the flag while the command line
and flagfiles are parsed, before any data is loaded. An app therefore has exactly the flags
its recipe has. :func:`config_from_flags` turns the parsed flags into the run's config (a
plain dict, as recorded in config.json and every checkpoint), and :func:`recipe_from_flags`
into the typed recipe.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from absl import flags

from experiments import settings
from experiments.command_line import plain_text

# ------------------------------------------------------------------------------- parsers


class IntListParser(flags.ListParser):
    """Comma-separated positive integers: ``64,64,128`` -> ``[64, 64, 128]``."""

    def parse(self, argument: Any) -> list[int]:
        items = super().parse(argument)
        out = []
        for item in items:
            try:
                value = int(item)
            except (TypeError, ValueError):
                raise ValueError(f"{item!r} is not an integer") from None
            if value <= 0:
                raise ValueError(f"entries must be positive integers, got {value}")
            out.append(value)
        return out

    def flag_type(self) -> str:
        return "list of positive integers"


class FiniteFloatParser(flags.FloatParser):
    """A finite float (within the setting's bounds): ``nan``, ``inf`` and numbers too large
    for a float (``1e400``) are refused while parsing, so the message shows what was typed."""

    def convert(self, argument: Any) -> float:
        value = super().convert(argument)
        if not math.isfinite(value):
            typed = str(argument).strip().lower().lstrip("+-")
            large = not math.isnan(value) and typed not in ("inf", "infinity")
            extra = " (too large for a float)" if large else ""
            raise ValueError(f"must be a finite number{extra}, got {argument}")
        return value


class WeightScaleParser(flags.ArgumentParser):
    """A positive float (std of the Gaussian init) or ``he`` (std ``sqrt(2 / fan_in)``)."""

    def parse(self, argument: Any) -> float | str:
        if isinstance(argument, str) and argument.strip().lower() == "he":
            return "he"
        try:
            value = float(argument)
        except (TypeError, ValueError):
            raise ValueError(f"must be a positive float or 'he', got {argument!r}") from None
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"must be a positive float or 'he', got {argument!r}")
        return value

    def flag_type(self) -> str:
        return "positive float or 'he'"


def _validator(name: str, opt: settings.Option) -> Callable[[Any], bool]:
    def validate(value: Any) -> bool:
        try:
            settings.check_value(name, opt, value)
        except ValueError as e:
            raise flags.ValidationError(str(e)) from None
        return True

    return validate


def _group_validator(check: Callable[[Mapping[str, Any]], None]) -> Callable[[Any], bool]:
    def validate(values: Mapping[str, Any]) -> bool:
        try:
            check(values)
        except ValueError as e:
            raise flags.ValidationError(str(e)) from None
        return True

    return validate


def _define(fv: flags.FlagValues, name: str, opt: settings.Option, default: Any) -> None:
    """One flag for setting ``name`` (its parser chosen by the setting's kind)."""
    if isinstance(default, tuple):
        default = list(default)
    kw: dict[str, Any] = {"flag_values": fv}
    if opt.kind == "bool":
        flags.DEFINE_bool(name, default, opt.help, **kw)
    elif opt.kind == "enum":
        flags.DEFINE_enum(name, default, list(opt.choices), opt.help, **kw)
    elif opt.kind == "str":
        flags.DEFINE_string(name, default, opt.help, **kw)
    elif opt.kind == "int":
        flags.DEFINE_integer(
            name, default, opt.help, lower_bound=opt.lower, upper_bound=opt.upper, **kw
        )
    elif opt.kind == "float":
        flags.DEFINE(
            FiniteFloatParser(opt.lower, opt.upper), name, default, opt.help,
            serializer=flags.ArgumentSerializer(), **kw,
        )  # fmt: skip
    elif opt.kind == "int_list":
        flags.DEFINE(
            IntListParser(), name, default, opt.help, serializer=flags.CsvListSerializer(","),
            **kw,
        )  # fmt: skip
    elif opt.kind == "weight_scale":
        flags.DEFINE(
            WeightScaleParser(), name, default, opt.help,
            serializer=flags.ArgumentSerializer(), **kw,
        )  # fmt: skip
    else:  # pragma: no cover - a setting declared with an unknown kind
        raise TypeError(f"setting {name}: unknown kind {opt.kind!r}")


def define_recipe_flags(fv: flags.FlagValues, recipe: settings.Settings) -> None:
    """Define (on ``fv``) one flag per setting of ``recipe``'s class, defaulting to
    ``recipe``'s values, with every check of the settings as a validator."""
    recipe_class = type(recipe)
    for name, opt in settings.options(recipe_class).items():
        _define(fv, name, opt, getattr(recipe, name))
        if opt.check is not None or opt.kind == "int_list" or opt.choices:
            flags.register_validator(name, _validator(name, opt), flag_values=fv)
    for names, check in settings.group_checks(recipe_class):
        flags.register_multi_flags_validator(list(names), _group_validator(check), flag_values=fv)
    model_checked = getattr(recipe_class, "MODEL_CHECKED", ())
    if model_checked:
        flags.register_multi_flags_validator(
            list(model_checked), _group_validator(recipe_class.check_model_settings),
            flag_values=fv,
        )  # fmt: skip


def config_from_flags(fv: flags.FlagValues, names: Iterable[str]) -> dict[str, Any]:
    """``{name: value}`` for the given flags (lists copied, so the dict is the run's own)."""
    return {n: (list(fv[n].value) if isinstance(fv[n].value, list) else fv[n].value) for n in names}


def recipe_from_flags(fv: flags.FlagValues, recipe_class: type) -> Any:
    """The typed recipe the parsed flags describe (its checks run again: ValueError)."""
    return recipe_class(**config_from_flags(fv, settings.names(recipe_class)))


def recipe_help(fv: flags.FlagValues, recipe_class: type) -> str:
    """The app's flags for ``--help``, in the groups of its recipe (each group's docstring
    as its heading, the app's own settings last), with their defaults."""
    lines = ["flags: (--flagfile=FILE reads them from FILE; --helpfull lists absl's own too)"]
    for title, names in settings.groups(recipe_class):
        lines += ["", plain_text(title)]
        for name in names:
            flag = fv[name]
            prefix = "[no]" if flag.boolean else ""
            if flag.boolean:
                value = "true" if flag.value else "false"
            else:
                value = flag.serialize().partition("=")[2]
            shown = plain_text(flag.help) + (f" (default: {value})" if value else "")
            indent = " " * 6
            body = textwrap.fill(shown, 88, initial_indent=indent, subsequent_indent=indent)
            lines += [f"  --{prefix}{name}", body]
    return "\n".join(lines)
