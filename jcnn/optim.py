"""Optimisers and learning-rate schedules from the cs231n names, as optax objects.

The one place where ``update_rule`` / ``optim_config`` (cs231n's names and defaults) and
``lr_decay`` / ``lr_schedule`` / warm-up become optax objects; :class:`jcnn.solver.Solver`
and the experiment apps build theirs here, and so can a notebook::

    schedule = make_schedule(1e-3, lr_decay=0.95, iterations_per_epoch=490, num_iterations=4900)
    optimizer, config = make_optimizer('adam', {'learning_rate': 1e-3}, schedule)

``update_rule`` → optax transformation, with the assignment's defaults passed explicitly
because optax's own differ: ``sgd`` → ``optax.sgd(lr)``; ``sgd_momentum`` →
``optax.sgd(lr, momentum=0.9)``; ``rmsprop`` → ``optax.rmsprop(lr, decay=0.99, eps=1e-8,
eps_in_sqrt=False)`` (eps added outside the square root); ``adam`` → ``optax.adam(lr,
b1=0.9, b2=0.999, eps=1e-8)``. ``optim_config`` keys as in cs231n: ``learning_rate``,
``momentum``, ``decay_rate``, ``beta1``, ``beta2``, ``epsilon``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np
import optax

__all__ = [
    "FLOAT32_MAX",
    "LR_SCHEDULES",
    "UPDATE_RULES",
    "airbench_muon",
    "airbench_sgd",
    "check_schedule",
    "freeze_after",
    "group_labels",
    "make_optimizer",
    "make_schedule",
    "resolve_optim_config",
    "sgd_nesterov",
    "warmup_linear_decay",
]

UPDATE_RULES = ("sgd", "sgd_momentum", "rmsprop", "adam")
LR_SCHEDULES = ("exponential", "cosine")

# The largest magnitude a config value may have: float32 parameters' updates multiply by it,
# and a larger one becomes inf there.
FLOAT32_MAX = float(np.finfo(np.float32).max)

# cs231n's per-rule defaults (optim.py), in its config key names.
_DEFAULTS: dict[str, dict[str, float]] = {
    "sgd": {"learning_rate": 1e-2},
    "sgd_momentum": {"learning_rate": 1e-2, "momentum": 0.9},
    "rmsprop": {"learning_rate": 1e-2, "decay_rate": 0.99, "epsilon": 1e-8},
    "adam": {"learning_rate": 1e-3, "beta1": 0.9, "beta2": 0.999, "epsilon": 1e-8},
}


def make_optimizer(
    update_rule: str,
    optim_config: Mapping[str, Any] | None = None,
    schedule: float | optax.Schedule | None = None,
) -> tuple[optax.GradientTransformation, dict[str, float]]:
    """The optax transformation for a cs231n ``update_rule`` and the full config it used.

    Args:
      update_rule: ``'sgd'``, ``'sgd_momentum'``, ``'rmsprop'`` or ``'adam'``.
      optim_config: cs231n's keys (module docs); missing ones take the rule's defaults.
      schedule: the learning rate, a float or an optax schedule of the update count (e.g.
        from :func:`make_schedule`); None: ``optim_config['learning_rate']``, constant.

    Returns:
      ``(optimizer, config)``: the transformation and ``optim_config`` with every default
      filled in.

    Raises:
      ValueError: an unknown rule, or a key or value :func:`resolve_optim_config` refuses.
    """
    if update_rule not in UPDATE_RULES:
        raise ValueError(f"update_rule must be one of {UPDATE_RULES}, got {update_rule!r}")
    config = resolve_optim_config(update_rule, optim_config)
    if schedule is None:
        schedule = config["learning_rate"]
    if update_rule == "sgd":
        tx = optax.sgd(schedule)
    elif update_rule == "sgd_momentum":
        tx = optax.sgd(schedule, momentum=config["momentum"])
    elif update_rule == "rmsprop":
        tx = optax.rmsprop(
            schedule, decay=config["decay_rate"], eps=config["epsilon"], eps_in_sqrt=False
        )
    else:
        tx = optax.adam(schedule, b1=config["beta1"], b2=config["beta2"], eps=config["epsilon"])
    return tx, config


def check_schedule(lr_schedule: str, lr_decay: float) -> None:
    """ValueError unless ``lr_schedule`` is known and ``lr_decay`` fits it.

    Args:
      lr_schedule: ``'exponential'`` or ``'cosine'`` (:data:`LR_SCHEDULES`).
      lr_decay: the per-epoch decay factor.

    Returns:
      None: the pair is valid.

    Raises:
      ValueError: ``lr_schedule`` is not in :data:`LR_SCHEDULES`, or it is ``'cosine'`` and
        ``lr_decay != 1.0``.
    """
    if lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {lr_schedule!r}")
    if lr_schedule == "cosine" and lr_decay != 1.0:
        raise ValueError(
            f"lr_decay={lr_decay} applies to lr_schedule='exponential' only; "
            "lr_schedule='cosine' anneals to 0 by itself (pass lr_decay=1.0)"
        )


def make_schedule(
    learning_rate: float,
    *,
    lr_schedule: str = "exponential",
    lr_decay: float = 1.0,
    iterations_per_epoch: int,
    num_iterations: int,
    warmup_iterations: int = 0,
) -> optax.Schedule:
    """The learning rate of update ``t`` (0-based), an optax schedule.

    ``'exponential'``: ``lr · lr_decay ** (t // iterations_per_epoch)`` (cs231n's per-epoch
    decay). ``'cosine'``: ``lr · (1 + cos(π · min(t', T') / T')) / 2`` with ``t' = t - W``,
    ``T' = num_iterations - W``: from ``lr`` down to 0 at ``t = num_iterations``
    (``lr_decay`` must be 1). ``W = warmup_iterations > 0`` first ramps linearly:
    ``lr · (t + 1) / W`` for ``t < W`` (the first update already moves; update ``W - 1``
    uses ``lr``).

    Examples:
      >>> f = make_schedule(0.1, lr_schedule='cosine', iterations_per_epoch=10,
      ...                   num_iterations=100, warmup_iterations=10)
      >>> [round(float(f(t)), 4) for t in (0, 9, 10, 55, 99)]
      [0.01, 0.1, 0.1, 0.05, 0.0]

    Args:
      learning_rate: the base rate ``lr``.
      lr_schedule: ``'exponential'`` (default) or ``'cosine'``.
      lr_decay: the per-epoch factor of ``'exponential'`` (default 1.0: constant); must be
        1.0 with ``'cosine'``.
      iterations_per_epoch: updates per epoch (the staircase step of ``'exponential'``).
      num_iterations: updates in the whole run (where ``'cosine'`` reaches 0).
      warmup_iterations: ``W``, the updates of the linear ramp (default 0: none).

    Returns:
      An optax schedule: a function of the update count ``t`` (an int or a scalar integer
      array) giving the learning rate as a scalar JAX array.

    Raises:
      ValueError: :func:`check_schedule` refuses ``lr_schedule``/``lr_decay``, or
        ``warmup_iterations`` is negative or not shorter than ``num_iterations``.
    """
    check_schedule(lr_schedule, lr_decay)
    warmup = int(warmup_iterations)
    if warmup < 0 or warmup >= max(num_iterations, 1):
        raise ValueError(
            f"the warm-up must be shorter than the run: {warmup} warm-up iterations "
            f"of {num_iterations}"
        )
    lr = float(learning_rate)
    if lr_schedule == "exponential":
        decayed = optax.exponential_decay(
            init_value=lr, transition_steps=int(iterations_per_epoch), decay_rate=lr_decay,
            staircase=True,
        )  # fmt: skip
    else:
        span = num_iterations - warmup

        def decayed(t):
            done = jnp.clip((jnp.asarray(t, jnp.float32) - warmup) / span, 0.0, 1.0)
            return 0.5 * lr * (1.0 + jnp.cos(jnp.pi * done))

    if not warmup:
        return decayed

    def schedule(t):
        ramp = lr * (jnp.asarray(t, jnp.float32) + 1.0) / warmup
        return jnp.where(t < warmup, ramp, decayed(t))

    return schedule


def resolve_optim_config(update_rule: str, optim_config: Mapping[str, Any] | None) -> dict:
    """cs231n defaults for ``update_rule`` overridden by ``optim_config``.

    Every value must be a finite float that stays finite in float32 (``|v| <=``
    :data:`FLOAT32_MAX`, about 3.4e38: float32 parameters' updates are computed with it).

    Args:
      update_rule: ``'sgd'``, ``'sgd_momentum'``, ``'rmsprop'`` or ``'adam'``.
      optim_config: cs231n's keys (module docs) to override, or None for all defaults.

    Returns:
      A new ``dict`` of every key the rule uses to a Python ``float``: the defaults with
      ``optim_config``'s values in place.

    Raises:

      ValueError: an unknown ``update_rule``; ``optim_config`` not a mapping or with keys the
        rule does not use; a value (named by its key) that is not a float, not finite, beyond
        float32's range, or out of its range (``learning_rate > 0``; ``momentum``,
        ``decay_rate``, ``beta1``, ``beta2`` in [0, 1); ``epsilon >= 0``).
    """
    if update_rule not in UPDATE_RULES:
        raise ValueError(f"update_rule must be one of {UPDATE_RULES}, got {update_rule!r}")
    if optim_config is None:
        optim_config = {}
    if not isinstance(optim_config, Mapping):
        raise ValueError(f"optim_config must be a dict, got {type(optim_config).__name__}")
    config = dict(_DEFAULTS[update_rule])
    unknown = sorted(set(optim_config) - set(config))
    if unknown:
        raise ValueError(
            f"optim_config has keys {unknown} that update_rule={update_rule!r} does not use "
            f"(it takes {sorted(config)})"
        )
    for k, v in optim_config.items():
        try:
            v = float(v)
        except (TypeError, ValueError):
            raise ValueError(f"optim_config[{k!r}] must be a float, got {v!r}") from None
        if not math.isfinite(v):
            raise ValueError(f"optim_config[{k!r}] must be finite, got {v!r}")
        if abs(v) > FLOAT32_MAX:
            raise ValueError(
                f"optim_config[{k!r}] must be finite in float32 (|value| <= "
                f"{FLOAT32_MAX:.7g}), got {v!r}"
            )
        config[k] = v
    if config["learning_rate"] <= 0:
        raise ValueError(
            f"optim_config['learning_rate'] must be > 0, got {config['learning_rate']}"
        )
    for k in ("momentum", "decay_rate", "beta1", "beta2"):
        if k in config and not 0.0 <= config[k] < 1.0:
            raise ValueError(f"optim_config[{k!r}] must be in [0, 1), got {config[k]}")
    if "epsilon" in config and config["epsilon"] < 0:
        raise ValueError(f"optim_config['epsilon'] must be >= 0, got {config['epsilon']}")
    return config


# The airbench recipes' pieces, defined in jcnn.optim_airbench.
from jcnn.optim_airbench import (  # noqa: E402
    airbench_muon,
    airbench_sgd,
    freeze_after,
    group_labels,
    sgd_nesterov,
    warmup_linear_decay,
)
