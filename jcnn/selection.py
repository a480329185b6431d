"""Data selection by a proxy network: each update trains on the rows a small net finds hardest.

airbench96_faster's idea: a proxy (the same architecture, much narrower) scores every
(augmented) row of the minibatch; the main net's update uses only the ``keep`` rows with the
highest proxy loss, and every ``train_every``-th update the proxy itself trains on them. The
main net then spends its arithmetic on the rows it is likely to learn most from, and the
proxy, at a fraction of the cost, keeps its notion of "hard" current.

In jcnn the proxy lives inside the run: its parameters, model state and optimiser state are
a :class:`jcnn.train.TrainState` of their own, held in the main state's ``proxy`` field, so
one jitted step (:func:`jcnn.train.make_train_step` with ``select=``) scores, selects and
updates both nets, and a checkpoint holds both (a resumed run ends as the uninterrupted one).

One update with selection, minibatch ``(X, y)`` of N rows (after augmentation):

- ``scores, s' = proxy.apply(θ_p, s_p, X, train=True)`` (batch statistics, as in training);
- ``ℓ_i`` = the proxy's label-smoothed cross-entropy of row i (the model's ``label_smoothing``);
- ``K`` = the ``keep`` rows of largest ``ℓ_i`` (``jax.lax.top_k``; ties: the lower index);
- the main net's update is the usual one on the minibatch ``(X[K], y[K])``: its loss is the
  mean over the ``keep`` rows (tune its learning rate for that minibatch size);
- on updates ``t`` with ``t mod train_every = 0``, the proxy's optimiser takes one step on
  the gradient of its own loss on ``(X[K], y[K])``; on the others it keeps its parameters
  and takes the scoring pass's running statistics ``s'``.

The proxy computes in the step's ``compute_dtype``, as the main net does. (airbench96_faster
backpropagates the proxy's loss on the kept rows through its scoring pass over all N; here
the proxy's training pass sees the kept rows only, so its batch statistics are theirs.)

Selection needs no derivative of the choice itself (``top_k``'s indices are constants to
the gradient), so nothing here differentiates through the selection.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import optax

from jcnn import _validate as check
from jcnn import precision

if TYPE_CHECKING:
    from jcnn.train import TrainState

__all__ = ["Selection", "per_example_losses", "proxy_state", "select_rows"]

# fold_in data of the proxy's key (its dropout): apart from the main net's and augmentation's.
PROXY_FOLD = 0x70726F78


@dataclasses.dataclass(frozen=True)
class Selection:
    """How an update chooses its rows (module docs).

    Attributes:
      model: the proxy, a :mod:`jcnn.models` model taking the main net's inputs (e.g. an
        :class:`~jcnn.models.AirbenchNet` with narrow ``widths``).
      optimizer: the proxy's optax transformation (its schedule counts the proxy's own
        updates: one per ``train_every`` main updates).
      keep: rows of each minibatch the main net trains on (``1 <= keep <=`` the minibatch).
      train_every: the proxy trains on updates ``t`` with ``t mod train_every == 0``.
      params: where the :class:`~jcnn.solver.Solver` starts the proxy (e.g.
        ``AirbenchNet.init_with_data``'s); None: ``model.init``'s.
      model_state: the model state that goes with ``params``.

    Raises:
      ValueError: ``keep`` or ``train_every`` not a positive int, naming it.
    """

    model: Any
    optimizer: optax.GradientTransformation
    keep: int
    train_every: int = 4
    params: Any = dataclasses.field(default=None, compare=False, repr=False)
    model_state: Any = dataclasses.field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        check.positive_int("keep", self.keep)
        check.positive_int("train_every", self.train_every)

    def identity(self) -> dict[str, Any]:
        """What a checkpoint of a run with this selection must share with it (plain JSON):
        the proxy's class and configuration, ``keep`` and ``train_every``."""
        model = self.model
        is_instance = dataclasses.is_dataclass(model) and not isinstance(model, type)
        config = dataclasses.asdict(model) if is_instance else {}
        return {
            "proxy": {"class": type(model).__name__, **config},
            "keep": self.keep,
            "train_every": self.train_every,
        }


def proxy_state(selection: Selection | None, key: jax.Array) -> TrainState | None:
    """The proxy's fresh :class:`~jcnn.train.TrainState` (None without a selection).

    Args:
      selection: the selection, or None.
      key: the run's key; the proxy's is ``fold_in(key, PROXY_FOLD)`` (its ``model.init``
        when ``selection.params`` is None).

    Returns:
      ``create_train_state(selection.model, selection.optimizer, ...)`` from
      ``selection.params``/``model_state`` where given.
    """
    from jcnn.train import create_train_state  # (jcnn.train imports this module)

    if selection is None:
        return None
    return create_train_state(
        selection.model, selection.optimizer, key=jax.random.fold_in(key, PROXY_FOLD),
        params=selection.params, model_state=selection.model_state,
    )  # fmt: skip


def per_example_losses(model: Any, scores: jax.Array, y: jax.Array) -> jax.Array:
    """Each row's softmax cross-entropy with the model's label smoothing ε (no mean):
    ``ℓ_i = −(1 − ε)·log p_i[y_i] − (ε / C)·Σ_c log p_i[c]``, ``p_i = softmax(scores_i)``.

    Args:
      model: the model whose ``label_smoothing`` applies (0 where it has none).
      scores: class scores ``(N, C)``.
      y: integer labels ``(N,)``.

    Returns:
      ``(N,)`` losses in float32 at least.
    """
    log_p = jax.nn.log_softmax(scores.astype(jnp.promote_types(scores.dtype, jnp.float32)))
    true = jnp.take_along_axis(log_p, y[:, None].astype(jnp.int32), axis=1)[:, 0]
    eps = float(getattr(model, "label_smoothing", 0.0) or 0.0)
    return -(1.0 - eps) * true - eps * jnp.mean(log_p, axis=1)


def select_rows(
    selection: Selection,
    proxy: TrainState,
    X: jax.Array,
    y: jax.Array,
    *,
    key: jax.Array,
    step: jax.Array,
    compute_dtype: Any = None,
) -> tuple[jax.Array, jax.Array, TrainState]:
    """The ``keep`` hardest rows of ``(X, y)`` for the proxy, and the proxy after this
    update (module docs). Called inside the jitted train step.

    Args:
      selection: the proxy and its settings.
      proxy: the proxy's state (``state.proxy`` of the main :class:`~jcnn.train.TrainState`).
      X: the (augmented) minibatch ``(N, ...)``.
      y: its labels ``(N,)``.
      key: the update's key (the proxy's dropout uses ``fold_in(key, PROXY_FOLD)``).
      step: the main net's update count ``t``.
      compute_dtype: the proxy computes in it as the main net does (``'bfloat16'``: its
        scores and loss in float32, :mod:`jcnn.precision`); None: in its parameters' dtype.

    Returns:
      ``(X[K], y[K], proxy)``: the kept rows, hardest first, and the new proxy state.

    Raises:
      ValueError: ``keep`` is larger than the minibatch (when traced).
    """
    from jcnn.train import micro_batch_gradients  # (jcnn.train imports this module)

    n, keep = X.shape[0], selection.keep
    if keep > n:
        raise ValueError(f"keep={keep} must be at most the minibatch of {n} images")
    model, pkey = selection.model, jax.random.fold_in(key, PROXY_FOLD)
    loss_fn = precision.mixed_precision_loss(model, compute_dtype)  # model.loss if None
    scores, scored_state = model.apply(
        precision.predict_params(proxy.params, compute_dtype), proxy.model_state, X,
        train=True, key=pkey,
    )  # fmt: skip
    scored_state = jax.tree.map(
        lambda new, old: new.astype(old.dtype), scored_state, proxy.model_state
    )
    losses = per_example_losses(model, scores, y)
    _, kept = jax.lax.top_k(losses, keep)
    X_kept, y_kept = X[kept], y[kept]

    def train(proxy: TrainState) -> TrainState:
        (_, model_state), grads = micro_batch_gradients(
            loss_fn, proxy.params, proxy.model_state, X_kept, y_kept, key=pkey
        )
        updates, opt_state = selection.optimizer.update(grads, proxy.opt_state, proxy.params)
        return proxy.replace(
            params=optax.apply_updates(proxy.params, updates),
            model_state=model_state,
            opt_state=opt_state,
            step=proxy.step + 1,
        )

    def score_only(proxy: TrainState) -> TrainState:
        return proxy.replace(model_state=scored_state)

    proxy = jax.lax.cond(step % selection.train_every == 0, train, score_only, proxy)
    return X_kept, y_kept, proxy
