"""The optimiser pieces of the airbench recipes (Jordan, 2024) as optax transformations:
its warm-up then linear-decay schedule, PyTorch's Nesterov SGD rule, a bias trained only at
the start, parameter groups, and the two whole optimisers, :func:`airbench_sgd`
(airbench94) and :func:`airbench_muon` (airbench94_muon: Muon on the 3×3 filters). Each is
also reachable as ``jcnn.optim.<name>``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

__all__ = [
    "airbench_muon",
    "airbench_sgd",
    "freeze_after",
    "group_labels",
    "sgd_nesterov",
    "warmup_linear_decay",
]


def warmup_linear_decay(
    num_iterations: int, *, warmup_fraction: float = 0.23, start: float = 0.2, end: float = 0.07
) -> optax.Schedule:
    """A multiplier that ramps linearly from ``start`` to 1 over the first
    ``W = int(warmup_fraction · num_iterations)`` updates, then falls linearly to ``end`` at
    update ``num_iterations`` (airbench's schedule; update ``t`` is 0-based).

    Examples:
      >>> f = warmup_linear_decay(100)
      >>> [round(float(f(t)), 4) for t in (0, 23, 100)]
      [0.2, 1.0, 0.07]

    Args:
      num_iterations: updates in the whole run, > 0.
      warmup_fraction: the share of the run spent ramping up, in [0, 1).
      start: the multiplier of the first update.
      end: the multiplier at ``num_iterations``.

    Returns:
      An optax schedule of the update count.

    Raises:
      ValueError: ``num_iterations`` not positive or ``warmup_fraction`` outside [0, 1).
    """
    total = int(num_iterations)
    if total <= 0:
        raise ValueError(f"num_iterations must be > 0, got {num_iterations!r}")
    if not 0.0 <= warmup_fraction < 1.0:
        raise ValueError(f"warmup_fraction must be in [0, 1), got {warmup_fraction!r}")
    warmup = int(total * warmup_fraction)

    def schedule(t):
        t = jnp.asarray(t, jnp.float32)
        up = start + (1.0 - start) * t / max(warmup, 1)
        down = 1.0 + (end - 1.0) * (t - warmup) / (total - warmup)
        return jnp.where(t < warmup, up, down)

    return schedule


def sgd_nesterov(
    learning_rate: float | optax.Schedule, momentum: float, weight_decay: float = 0.0
) -> optax.GradientTransformation:
    """SGD with Nesterov momentum as PyTorch's ``torch.optim.SGD(nesterov=True)`` computes it:
    the weight decay is added to the gradient before the momentum,
    ``g ← g + λ·p``, ``b ← μ·b + g``, ``p ← p − lr·(g + μ·b)``.

    Args:
      learning_rate: ``lr``, a float or an optax schedule of the update count.
      momentum: ``μ``.
      weight_decay: ``λ`` (0: none).

    Returns:
      The optax transformation.
    """
    parts = [optax.add_decayed_weights(weight_decay)] if weight_decay else []
    parts += [
        optax.trace(decay=momentum, nesterov=True),
        optax.scale_by_learning_rate(learning_rate),
    ]
    return optax.chain(*parts)


def freeze_after(
    inner: optax.GradientTransformation, num_iterations: int
) -> optax.GradientTransformation:
    """``inner``'s updates for the first ``num_iterations`` updates, zeros after (its state
    stops changing too): a parameter trained only at the start of a run.

    Args:
      inner: the transformation used while the parameters train.
      num_iterations: how many updates they train for (0: frozen from the start).

    Returns:
      The transformation; its state is ``(count, inner_state)``.
    """
    n = int(num_iterations)

    def init(params):
        return (jnp.zeros((), jnp.int32), inner.init(params))

    def update(updates, state, params=None):
        count, inner_state = state
        new_updates, new_inner = inner.update(updates, inner_state, params)
        live = count < n
        pick = lambda a, b: jnp.where(live, a, b)  # noqa: E731
        new_updates = jax.tree_util.tree_map(lambda u: pick(u, jnp.zeros_like(u)), new_updates)
        new_inner = jax.tree_util.tree_map(pick, new_inner, inner_state)
        return new_updates, (count + 1, new_inner)

    return optax.GradientTransformation(init, update)


def group_labels(params: Any, groups: Mapping[str, Any], default: str) -> Any:
    """A label per leaf of ``params`` for :func:`optax.multi_transform`: the first group whose
    test accepts the leaf's path (``'conv1_1/w'``), else ``default``.

    Args:
      params: the parameter pytree (nested dicts).
      groups: ``{label: test}`` where ``test(path: str) -> bool``, tried in order.
      default: the label of the leaves no test accepts.

    Returns:
      A pytree of strings shaped like ``params``.
    """

    def label(path, _):
        name = "/".join(str(getattr(k, "key", k)) for k in path)
        return next((g for g, test in groups.items() if test(name)), default)

    return jax.tree_util.tree_map_with_path(label, params)


def airbench_sgd(
    params: Any,
    *,
    num_iterations: int,
    iterations_per_epoch: int,
    batch_size: int,
    learning_rate: float = 11.5,
    momentum: float = 0.85,
    weight_decay: float = 0.0153,
    bias_scaler: float = 64.0,
    whiten_bias_epochs: float = 3.0,
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """airbench94's optimiser for :class:`jcnn.models.AirbenchNet` parameters, for a loss that
    is the batch *mean* (airbench sums over the batch; the rates below undo that).

    airbench states ``learning_rate`` and ``weight_decay`` per 1,024 examples and divides them
    by ``K = 1024·(1 + 1/(1 − μ))`` (the factor by which Nesterov momentum with constant
    gradients lengthens the steps). With B = ``batch_size`` and s(t) =
    :func:`warmup_linear_decay`, every group is :func:`sgd_nesterov` with:

    - the weights (3×3 convs, the head): ``lr = learning_rate·B/K · s(t)``,
      ``λ = weight_decay / learning_rate``;
    - the batchnorm shifts (``norm*``): ``bias_scaler`` × that ``lr``, ``λ/bias_scaler`` (the
      same decay per step);
    - the whitening bias: as the weights, for the first ``whiten_bias_epochs`` epochs only;
    - the whitening filters: frozen.

    Args:
      params: the model's parameters (only their names are read).
      num_iterations: updates in the whole run (the schedule's length).
      iterations_per_epoch: updates per epoch.
      batch_size: B.
      learning_rate: airbench's ``lr`` (per 1,024 examples).
      momentum: μ.
      weight_decay: airbench's ``weight_decay`` (per 1,024 examples).
      bias_scaler: the batchnorm shifts' learning-rate factor.
      whiten_bias_epochs: epochs the whitening bias trains for.

    Returns:
      ``(optimizer, schedule)``: the transformation and the weights' learning rate
      ``lr·s(t)`` as a schedule (for the learning-rate history).
    """
    lr = _per_batch_rate(learning_rate, momentum, batch_size)
    decay = weight_decay / learning_rate
    shape = warmup_linear_decay(num_iterations)
    schedule = lambda t: lr * shape(t)  # noqa: E731
    bias_schedule = lambda t: bias_scaler * lr * shape(t)  # noqa: E731
    weights = sgd_nesterov(schedule, momentum, decay)
    txs = {
        "weights": weights,
        "norm_shifts": sgd_nesterov(bias_schedule, momentum, decay / bias_scaler),
        "whiten_bias": freeze_after(weights, round(whiten_bias_epochs * iterations_per_epoch)),
        "frozen": optax.set_to_zero(),
    }
    return optax.multi_transform(txs, _airbench_labels(params)), schedule


def _per_batch_rate(learning_rate: float, momentum: float, batch_size: int) -> float:
    """airbench's rate per 1,024 examples as the rate of a batch-mean loss:
    ``learning_rate·B/K`` with ``K = 1024·(1 + 1/(1 − μ))``."""
    return learning_rate * batch_size / (1024.0 * (1.0 + 1.0 / (1.0 - momentum)))


def _airbench_labels(params: Any, *, filters: bool = False) -> Any:
    """:class:`jcnn.models.AirbenchNet`'s parameter groups: ``frozen`` (the whitening
    filters), ``whiten_bias``, ``norm_shifts``, ``filters`` (the 3×3 convs, when asked
    for) and ``weights`` (the rest)."""
    groups = {
        "frozen": lambda p: p == "whiten/w",
        "whiten_bias": lambda p: p == "whiten/b",
        "norm_shifts": lambda p: p.startswith("norm"),
    }
    if filters:
        groups["filters"] = lambda p: p.startswith("conv")
    return group_labels(params, groups, default="weights")


def airbench_muon(
    params: Any,
    *,
    num_iterations: int,
    iterations_per_epoch: int,
    batch_size: int,
    learning_rate: float = 6.5,
    momentum: float = 0.85,
    weight_decay: float = 0.0157,
    bias_scaler: float = 64.0,
    whiten_bias_epochs: float = 3.0,
    muon_learning_rate: float = 0.24,
    muon_momentum: float = 0.6,
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """airbench94_muon's optimiser for :class:`jcnn.models.AirbenchNet` parameters, for a
    loss that is the batch mean: :func:`jcnn.muon.muon` on the 3×3 conv filters,
    :func:`sgd_nesterov` on the rest, every rate falling linearly from its peak to 0 over
    the run, ``s(t) = 1 − t/T``, without warm-up.

    The SGD groups take :func:`airbench_sgd`'s units (``learning_rate`` and
    ``weight_decay`` per 1,024 examples, divided by ``K = 1024·(1 + 1/(1 − μ))``);
    airbench94_muon's rates for a summed loss (head 0.67 with a ``1/256`` head and
    unit-variance init, shifts 0.053, decay ``2·10⁻⁶`` per example) are the defaults here for
    :class:`~jcnn.models.AirbenchNet`'s ``1/9`` head and PyTorch init. With B =
    ``batch_size`` and ``lr = learning_rate·B/K``:

    - the 3×3 filters: Muon, ``muon_learning_rate · s(t)``, momentum ``muon_momentum``,
      weights renormalised each step, no weight decay;
    - the head: ``lr · s(t)``, decay ``λ = weight_decay / learning_rate``;
    - the batchnorm shifts: ``bias_scaler · lr · s(t)``, ``λ / bias_scaler``;
    - the whitening bias: as the shifts, but falling to 0 over its ``whiten_bias_epochs``,
      then frozen; the whitening filters: frozen.

    Args:
      params: the model's parameters (only their names are read).
      num_iterations: updates in the whole run ``T``.
      iterations_per_epoch: updates per epoch.
      batch_size: B.
      learning_rate: the head's rate in airbench's units.
      momentum: the SGD groups' Nesterov momentum μ.
      weight_decay: the SGD groups' decay in airbench's units.
      bias_scaler: the shifts' and whitening bias's factor on ``lr``.
      whiten_bias_epochs: epochs the whitening bias trains for.
      muon_learning_rate: the filters' Muon step at the start.
      muon_momentum: the filters' Nesterov momentum.

    Returns:
      ``(optimizer, schedule)``: the transformation and the filters' Muon rate as a schedule
      (for the learning-rate history).

    Raises:
      ValueError: ``num_iterations`` not positive, or a momentum outside [0, 1).
    """
    from jcnn.muon import muon

    for name, mu in (("momentum", momentum), ("muon_momentum", muon_momentum)):
        if not 0.0 <= mu < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {mu!r}")
    shape = warmup_linear_decay(num_iterations, warmup_fraction=0.0, start=1.0, end=0.0)
    whiten_iterations = max(round(whiten_bias_epochs * iterations_per_epoch), 0)
    whiten_shape = warmup_linear_decay(
        max(whiten_iterations, 1), warmup_fraction=0.0, start=1.0, end=0.0
    )
    lr = _per_batch_rate(learning_rate, momentum, batch_size)
    decay = weight_decay / learning_rate
    filters = lambda t: muon_learning_rate * shape(t)  # noqa: E731
    bias = lambda t: bias_scaler * lr * shape(t)  # noqa: E731
    whiten_bias = lambda t: bias_scaler * lr * whiten_shape(t)  # noqa: E731
    txs = {
        "filters": muon(filters, muon_momentum),
        "weights": sgd_nesterov(lambda t: lr * shape(t), momentum, decay),
        "norm_shifts": sgd_nesterov(bias, momentum, decay / bias_scaler),
        "whiten_bias": freeze_after(
            sgd_nesterov(whiten_bias, momentum, decay / bias_scaler), whiten_iterations
        ),
        "frozen": optax.set_to_zero(),
    }
    return optax.multi_transform(txs, _airbench_labels(params, filters=True)), filters
