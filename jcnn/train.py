"""Training as small pure pieces: a :class:`TrainState` pytree, a jitted train step, an eval step.

(The eval step, :func:`predict` and :func:`test_time_scores` are :mod:`jcnn.prediction`'s,
re-exported here beside the train step they pair with.)

Everything the :class:`~jcnn.solver.Solver` does per update is here, as functions a notebook
can use directly (ten lines, the Solver's speed)::

    import jax, numpy as np
    from jcnn.models import ThreeLayerConvNet
    from jcnn.optim import make_optimizer
    from jcnn.train import create_train_state, make_eval_step, make_train_step, predict

    model = ThreeLayerConvNet(input_dim=(3, 32, 32), num_filters=16, hidden_dim=64)
    optimizer, _ = make_optimizer('adam', {'learning_rate': 1e-3})
    state = create_train_state(model, optimizer, key=jax.random.key(0))
    train_step, eval_step = make_train_step(model, optimizer), make_eval_step(model)
    for t in range(200):
        idx = np.random.default_rng(t).choice(len(X_train), 50)
        state, metrics = train_step(state, (X_train[idx], y_train[idx]))
    val_acc = np.mean(predict(eval_step, state, X_val) == y_val)

One update, ``train_step(state, (X, y)) -> (state, metrics)``: the step's key is
``fold_in(state.key, state.step)`` (dropout uses it; augmentation uses
``fold_in(key, AUGMENT_FOLD)``, so the two never share random numbers); the loss and its
gradient come from ``jax.value_and_grad(model.loss)`` (through the hand-written VJPs of
:mod:`jcnn.layers`), the optimiser's update is applied, and ``step`` grows by one.
``metrics`` is ``{'loss': loss, 'finite': isfinite(loss)}`` (device scalars: read them back
when you need them, not after every step). The input ``state`` is donated: its buffers are
reused for the new one, so keep no other reference to it (copy what you want to keep, e.g.
the best parameters, with :func:`copy_tree`).

With a ``mesh`` (:func:`jcnn.parallel.make_mesh`) both steps are data parallel: the
minibatch is split over the mesh's devices on axis 0, the state is replicated, and XLA turns
the batch reductions into all-reduces (loss, gradients and batchnorm statistics are those
of the global batch). ``compute_dtype='bfloat16'`` runs the network in bfloat16 while
parameters, optimiser state, batchnorm statistics, gradients and the loss stay float32
(:func:`jcnn.precision.mixed_precision_loss`).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any, Protocol, cast

import jax
import jax.numpy as jnp
import optax

from jcnn import _validate as check
from jcnn import parallel, precision, selection
from jcnn.prediction import (  # re-exported: the eval step pairs with the train step
    EvalStep,
    counted,
    make_eval_step,
    predict,
    test_time_scores,
)

__all__ = [
    "AUGMENT_FOLD",
    "EvalStep",
    "Lookahead",
    "TrainState",
    "copy_tree",
    "create_train_state",
    "make_eval_step",
    "make_train_step",
    "micro_batch_gradients",
    "predict",
    "test_time_scores",
]

# fold_in data of the augmentation key: far from the small ints models fold in for dropout.
AUGMENT_FOLD = 0x61756720

# augment(key, X) -> X, or augment(key, X, *, step) -> X (it also gets the update count).
Augment = Callable[..., jax.Array]


class TrainStep(Protocol):
    """What :func:`make_train_step` returns."""

    def __call__(
        self, state: TrainState, batch: tuple[Any, Any]
    ) -> tuple[TrainState, dict[str, jax.Array]]: ...

    def traces(self) -> int:
        """How often the step was traced (compiled).

        Returns:
          The number of traces so far (0 before the first call).
        """
        ...


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TrainState:
    """Everything one update reads and writes, as one pytree.

    Attributes:
      params: the model's parameters (nested dicts of arrays, from ``model.init``).
      model_state: its mutable state (batchnorm running statistics; ``{}`` without).
      opt_state: the optax optimiser's state.
      step: int32 scalar, the number of updates done.
      key: the run's base key; update ``t`` uses ``jax.random.fold_in(key, t)``.
      slow: with :class:`Lookahead`, its slow copy ``{'params', 'model_state'}``; else None.
      proxy: with data selection (:mod:`jcnn.selection`), the proxy network's own
        :class:`TrainState`; else None.
    """

    params: Any
    model_state: Any
    opt_state: Any
    step: jax.Array
    key: jax.Array
    slow: Any = None
    proxy: Any = None

    def replace(self, **changes: Any) -> TrainState:
        """A copy with the given fields replaced.

        Args:
          **changes: field name → new value (``params``, ``model_state``, ``opt_state``,
            ``step``, ``key``, ``slow``, ``proxy``).

        Returns:
          A new :class:`TrainState`; the fields not named are the same objects.

        Raises:
          TypeError: a name that is not a field (:func:`dataclasses.replace`).
        """
        return dataclasses.replace(self, **changes)


def copy_tree(tree: Any) -> Any:
    """Fresh device buffers for every leaf (so that donating ``tree`` later leaves the copy
    intact).

    Args:
      tree: a pytree of arrays (device or host) or scalars.

    Returns:
      A pytree of the same structure whose leaves are new :class:`jax.Array` copies (same
      shapes and dtypes).
    """
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    on_device = [i for i, a in enumerate(leaves) if isinstance(a, jax.Array)]
    arrays = [leaves[i] for i in on_device]
    try:
        copied = _copies(arrays)
    except ValueError:  # arrays committed to different devices: one program cannot take them
        copied = [jnp.array(a) for a in arrays]
    copies = dict(zip(on_device, copied, strict=True))
    return jax.tree_util.tree_unflatten(
        treedef, [copies[i] if i in copies else jnp.array(a) for i, a in enumerate(leaves)]
    )


def _init(model: Any, key: jax.Array) -> tuple[Any, Any]:
    """``model.init(key)`` as one compiled program (not one small program per layer shape)
    when the model can be hashed as a static argument (jcnn's frozen dataclasses can)."""
    try:
        hash(model)
    except TypeError:  # e.g. a user's mutable dataclass
        return model.init(key)
    return _initialised(model, key)


_initialised = jax.jit(lambda model, key: model.init(key), static_argnums=0)

# One compiled copy of a whole tree's device arrays, not one small program per leaf shape.
_copies = jax.jit(lambda leaves: [jnp.copy(a) for a in leaves])


def create_train_state(
    model: Any,
    optimizer: optax.GradientTransformation,
    *,
    key: jax.Array,
    params: Any = None,
    model_state: Any = None,
    step: int = 0,
    lookahead: Lookahead | None = None,
    proxy: TrainState | None = None,
) -> TrainState:
    """A fresh :class:`TrainState`.

    ``key`` is split in two: the first half initialises the model (unless ``params`` are
    given), the second becomes ``state.key`` (the per-update keys).

    Args:
      model: a :mod:`jcnn.models` model (``init``, ``loss``, ``apply``).
      optimizer: an optax transformation (e.g. from :func:`jcnn.optim.make_optimizer`).
      key: a ``jax.random.key``.
      params: start from these parameters instead of ``model.init``'s (copied).
      model_state: the model state that goes with ``params`` (copied; None: ``{}``).
      step: the update count to start at.
      lookahead: start its slow copy at the initial parameters and state.
      proxy: the proxy network's state for data selection (itself a ``create_train_state``
        of the proxy model and its optimiser), kept in the ``proxy`` field.

    Returns:
      The state, with ``optimizer.init(params)`` as its optimiser state.

    Raises:
      ValueError: ``model_state`` without ``params``, or ``params`` without the batchnorm
        statistics of a model that has batchnorm.
    """
    init_key, step_key = jax.random.split(key)
    if params is None:
        if model_state is not None:
            raise ValueError("model_state given without params: pass both or neither")
        params, model_state = _init(model, init_key)
    else:
        if model_state is None and getattr(model, "batchnorm_layers", tuple)():
            raise ValueError(
                "params given without model_state, but the model has batchnorm: pass the "
                "state (running statistics) that goes with them"
            )
        params, model_state = copy_tree(params), copy_tree(model_state or {})
    if not jax.tree_util.tree_leaves(params):
        raise ValueError("params has no arrays")
    return TrainState(
        params=params,
        model_state=model_state,
        opt_state=optimizer.init(params),
        step=jnp.asarray(step, jnp.int32),
        key=step_key,
        slow=None
        if lookahead is None
        else copy_tree({"params": params, "model_state": model_state}),
        proxy=proxy,
    )


@dataclasses.dataclass(frozen=True)
class Lookahead:
    """Lookahead with an exponential moving average of the weights (airbench's version).

    Every ``every`` updates (and after the last one) the slow copy ``(θ̄, s̄)`` of the
    parameters θ *and* the model state s (batchnorm statistics) moves towards the trained
    ones, and training continues from it:
    ``θ̄ ← θ̄ + (1 − α(t))·(θ − θ̄)``, ``θ ← θ̄`` (likewise s), where ``α(t)`` is the weight
    kept on the slow copy after ``t`` updates: airbench uses
    ``α(t) = 0.95^5 · (t/T)³``, so early updates simply copy the trained weights and later
    ones average over the last few dozen updates. After update ``num_iterations`` (T)
    training ends on the slow copy: averaged as usual first when T is a multiple of
    ``every``, else taken as it stands (``α = 1``: the updates since the last average are
    dropped), as airbench does.

    Attributes:
      every: updates between two averaging steps.
      num_iterations: T, updates in the whole run.
      decay: ``α(t)`` as a function of the update count (a JAX scalar); None: airbench's.
    """

    every: int
    num_iterations: int
    decay: Any = None

    def __post_init__(self):
        if int(self.every) < 1 or int(self.num_iterations) < 1:
            raise ValueError(
                f"Lookahead needs every >= 1 and num_iterations >= 1, got every={self.every}, "
                f"num_iterations={self.num_iterations}"
            )

    def alpha(self, t: jax.Array) -> jax.Array:
        """α(t) (class docs), a float32 scalar."""
        if self.decay is not None:
            return jnp.asarray(self.decay(t), jnp.float32)
        frac = jnp.asarray(t, jnp.float32) / self.num_iterations
        return jnp.float32(0.95**5) * frac**3

    def __call__(self, state: TrainState) -> TrainState:
        """The state after an update (``state.step`` updates done), averaged when due."""
        t = state.step
        on_schedule = t % self.every == 0
        last = t >= self.num_iterations
        due = on_schedule | last
        alpha = jnp.where(on_schedule, self.alpha(t), 1.0)
        fast = {"params": state.params, "model_state": state.model_state}

        def mix(slow, new):
            avg = slow + (1.0 - alpha).astype(slow.dtype) * (new - slow)
            return jnp.where(due, avg, slow)

        slow = jax.tree_util.tree_map(mix, state.slow, fast)
        fast = jax.tree_util.tree_map(lambda a, b: jnp.where(due, a, b), slow, fast)
        return state.replace(params=fast["params"], model_state=fast["model_state"], slow=slow)


def _takes_step(augment: Augment) -> bool:
    try:
        return "step" in inspect.signature(augment).parameters
    except (TypeError, ValueError):
        return False


def _augmented(augment: Augment, key: jax.Array, X: jax.Array, step: jax.Array) -> jax.Array:
    akey = jax.random.fold_in(key, AUGMENT_FOLD)
    out = augment(akey, X, step=step) if _takes_step(augment) else augment(akey, X)
    if jnp.shape(out) != X.shape:
        raise ValueError(
            f"augment must keep the minibatch's shape {X.shape}, returned {jnp.shape(out)}"
        )
    return out


def micro_batch_gradients(
    loss_fn: Callable[..., tuple[jax.Array, Any]],
    params: Any,
    model_state: Any,
    X: jax.Array,
    y: jax.Array,
    *,
    key: jax.Array,
    micro_batches: int = 1,
) -> tuple[tuple[jax.Array, Any], Any]:
    """``jax.value_and_grad(loss_fn, has_aux=True)(params, model_state, X, y, key=key)``,
    computed in ``micro_batches`` = m parts of the minibatch one after the other.

    Part j holds rows j, j + m, j + 2m, ... (so that with a batch split over devices on axis
    0, each device keeps its own rows); a ``lax.scan`` runs the parts, so only one part's
    activations are live at a time. With L_j the mean loss of part j (each of B/m rows),
    the result is L = (1/m) Σ_j L_j and ∇L = (1/m) Σ_j ∇L_j: the mean loss of the minibatch
    and its gradient, except that layers computing batch statistics (batchnorm) see each
    part's. The model state (running statistics) is threaded through the parts in order.
    Part j's key is ``fold_in(key, j)``; with m = 1 it is ``key`` itself, and the result
    is exactly ``value_and_grad``'s.

    Args:
        loss_fn: ``loss_fn(params, model_state, X, y, key=key) -> (loss, model_state)``.
        params: its parameters.
        model_state: its model state (running statistics).
        X: the whole minibatch's inputs.
        y: its labels.
        key: its key (part j gets ``fold_in(key, j)``).
        micro_batches: m, a divisor of the minibatch size.

    Returns:
        ``((loss, model_state), grads)``.

    Raises:
        ValueError: the minibatch size is not a multiple of ``micro_batches``.
    """
    value_and_grad = jax.value_and_grad(loss_fn, has_aux=True)
    if micro_batches == 1:
        return value_and_grad(params, model_state, X, y, key=key)
    m, n = micro_batches, X.shape[0]
    if n % m:
        raise ValueError(f"micro_batches={m} must divide the minibatch of {n} images")

    def parts(a: jax.Array) -> jax.Array:
        return jnp.swapaxes(a.reshape(n // m, m, *a.shape[1:]), 0, 1)

    def one_part(carry, part):
        state, grad_sum, loss_sum = carry
        j, Xj, yj = part
        (loss, state), grads = value_and_grad(params, state, Xj, yj, key=jax.random.fold_in(key, j))
        grad_sum = jax.tree_util.tree_map(jnp.add, grad_sum, grads)
        return (state, grad_sum, loss_sum + loss), None

    Xs, ys = parts(X), parts(y)
    loss_type = jax.eval_shape(lambda: value_and_grad(params, model_state, Xs[0], ys[0], key=key))
    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    start = (model_state, zeros, jnp.zeros((), loss_type[0][0].dtype))
    (state, grad_sum, loss_sum), _ = jax.lax.scan(one_part, start, (jnp.arange(m), Xs, ys))
    grads = jax.tree_util.tree_map(lambda g: g / m, grad_sum)
    return (loss_sum / m, state), grads


def make_train_step(
    model: Any,
    optimizer: optax.GradientTransformation,
    *,
    augment: Augment | None = None,
    compute_dtype: Any = None,
    mesh: jax.sharding.Mesh | None = None,
    lookahead: Lookahead | None = None,
    micro_batches: int = 1,
    select: selection.Selection | None = None,
) -> TrainStep:
    """One jitted training update, ``step(state, (X, y)) -> (state, metrics)`` (module docs).

    Args:
      model: a :mod:`jcnn.models` model; ``model.loss(params, state, X, y, key=key)`` is
        differentiated.
      optimizer: the optax transformation ``state.opt_state`` belongs to.
      augment: ``augment(key, X) -> X`` (same shape) applied to each minibatch inside the
        step, e.g. :func:`jcnn.augment.random_crop_flip`; one with a ``step`` keyword also
        gets the update count (e.g. :func:`jcnn.augment.alternating_flip_crop`).
      compute_dtype: None/``'float32'``, or ``'bfloat16'`` for mixed precision.
      mesh: a 1-D mesh (:func:`jcnn.parallel.make_mesh`) to train data-parallel over.
      lookahead: average the weights after the update (:class:`Lookahead`); the state must
        have been created with it.
      micro_batches: m > 1 computes the gradient in m equal parts of the minibatch, one
        after the other (:func:`micro_batch_gradients`), so that only one part's activations
        are held at a time; the update is the same rule on the mean gradient, but
        batchnorm's statistics are each part's (and its running statistics are updated after
        each part). The minibatch size must be a multiple of m (of ``select.keep`` with
        selection).
      select: train each update on the rows a proxy network finds hardest
        (:mod:`jcnn.selection`); the state must hold the proxy's (``create_train_state(...,
        proxy=...)``).

    Returns:
      The jitted step; the state argument is donated. ``step.traces()`` says how often it
      was traced (once per run when every batch has the same shape and dtype).

    Raises:
      ValueError: ``compute_dtype`` is not a floating dtype, ``micro_batches`` not a
        positive int, or ``select.keep`` not divisible by the mesh's devices (here); when
        the step is traced, ``augment`` returns a different shape than the minibatch's, the
        minibatch is not a multiple of ``micro_batches``, or (with ``select``) the state
        has no proxy or the minibatch fewer rows than ``select.keep``.
    """
    loss_fn = precision.mixed_precision_loss(model, compute_dtype)  # model.loss if None
    micro_batches = check.positive_int("micro_batches", micro_batches)
    if mesh is not None and select is not None:  # the kept rows are split over the devices
        parallel.check_batch_divisible(select.keep, mesh, "select.keep")

    def train_step(state: TrainState, batch: tuple[Any, Any]):
        X, y = batch
        key = jax.random.fold_in(state.key, state.step)
        if augment is not None:
            X = _augmented(augment, key, X, state.step)
        proxy = state.proxy
        if select is not None:
            if proxy is None:
                raise ValueError("select needs a state with a proxy: create_train_state(proxy=...)")
            X, y, proxy = selection.select_rows(
                select, proxy, X, y, key=key, step=state.step, compute_dtype=compute_dtype
            )
            if mesh is not None:  # the kept rows split over the devices again
                X, y = jax.lax.with_sharding_constraint((X, y), parallel.batch_sharding(mesh))
        (loss, model_state), grads = micro_batch_gradients(
            loss_fn, state.params, state.model_state, X, y, key=key, micro_batches=micro_batches
        )
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        new_state = TrainState(
            params=optax.apply_updates(state.params, updates),
            model_state=model_state,
            opt_state=opt_state,
            step=state.step + 1,
            key=state.key,
            slow=state.slow,
            proxy=proxy,
        )
        if lookahead is not None:
            new_state = lookahead(new_state)
        return new_state, {"loss": loss, "finite": jnp.isfinite(loss)}

    traces = [0]
    if mesh is None:
        step = jax.jit(counted(train_step, traces), donate_argnums=0)
    else:
        rep, batch = parallel.replicated_sharding(mesh), parallel.batch_sharding(mesh)
        step = jax.jit(
            counted(train_step, traces), donate_argnums=0, in_shardings=(rep, (batch, batch)),
            out_shardings=rep,
        )  # fmt: skip
    step.traces = lambda: traces[0]  # type: ignore[attr-defined]
    return cast(TrainStep, step)
