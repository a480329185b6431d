"""A training run's state: everything about it that changes as it trains, in one place.

:class:`RunState` holds the :class:`~jcnn.train.TrainState` (parameters, model state,
optimiser state, step, key), the best parameters so far, the counters, the histories, the
host generator (minibatch draws, accuracy samples) and the run's one clock: the seconds
spent in :meth:`~jcnn.solver.Solver.train` (before a resume too), and the part of them spent
outside the updates (accuracy checks, checkpoints, epoch-end hooks), so that the training
time every report gives is one number, ``training_s()``. A checkpoint is this state as a
unit: its arrays (:meth:`RunState.checkpoint_tree`) and its JSON part
(:meth:`RunState.progress`), and :meth:`RunState.restored` gives the state back from them;
the :class:`~jcnn.solver.Solver` keeps its cs231n attribute names (``loss_history``,
``best_params``, ...) as views of it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jcnn.train import TrainState, copy_tree

__all__ = ["RUN_FIELDS", "RunField", "RunState"]


def _float(v: Any) -> float:
    """A number read back from a sidecar: JSON has no NaN, so a NaN (e.g. the val accuracy
    of a run without a validation split) was written as null."""
    return float("nan") if v is None else float(v)


@dataclasses.dataclass
class RunState:
    """What a training run has done so far.

    Attributes:
        train_state: the :class:`~jcnn.train.TrainState` the next update starts from.
        host_rng: the host generator (minibatches drawn with replacement, accuracy samples).
        epoch: epochs done; iteration: updates done.
        best_val_acc, best_epoch, best_params, best_state: the best accuracy check so far
            and its parameters (None before the first).
        loss_history: one loss per update; train_acc_history, val_acc_history,
            lr_history: one entry per accuracy check; eval_history: one dict per check.
        elapsed_s: seconds in :meth:`~jcnn.solver.Solver.train`, every part of
            the run; outside_s: the part of them spent outside the updates (accuracy checks,
            checkpoints, epoch-end hooks). Both are brought up to date by :meth:`tick` while
            the clock runs (:meth:`clock_running`).
    """

    train_state: TrainState
    host_rng: np.random.Generator
    epoch: int = 0
    iteration: int = 0
    best_val_acc: float = 0.0
    best_epoch: int | None = None
    best_params: Any = None
    best_state: Any = None
    loss_history: list[float] = dataclasses.field(default_factory=list)
    train_acc_history: list[float] = dataclasses.field(default_factory=list)
    val_acc_history: list[float] = dataclasses.field(default_factory=list)
    lr_history: list[float] = dataclasses.field(default_factory=list)
    eval_history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    elapsed_s: float = 0.0
    outside_s: float = 0.0
    _clock_origin: float | None = dataclasses.field(
        default=None, init=False, repr=False, compare=False
    )

    # ------------------------------------------------------------------------- clock

    @contextlib.contextmanager
    def clock_running(self) -> Iterator[None]:
        """Count the time inside the block into ``elapsed_s`` (from where it stands)."""
        self._clock_origin = time.perf_counter() - self.elapsed_s
        try:
            yield
        finally:
            self.tick()
            self._clock_origin = None

    @contextlib.contextmanager
    def outside_updates(self) -> Iterator[None]:
        """Count the time inside the block as outside the updates (``outside_s``)."""
        entered = time.perf_counter()
        try:
            yield
        finally:
            self.outside_s += time.perf_counter() - entered

    def tick(self) -> float:
        """``elapsed_s``, brought up to now if the clock is running; returns it."""
        if self._clock_origin is not None:
            self.elapsed_s = time.perf_counter() - self._clock_origin
        return self.elapsed_s

    def training_s(self) -> float:
        """Seconds spent on updates (before a resume too): ``elapsed_s - outside_s``, now."""
        return self.tick() - self.outside_s

    # ------------------------------------------------------------------- checkpoints

    def checkpoint_tree(self) -> dict[str, Any]:
        """The arrays a checkpoint holds: ``{'params', 'state', 'opt_state', 'best_params',
        'best_state', 'rng': {'dropout_key'}}`` (and ``'slow'`` with lookahead, ``'proxy'``
        with data selection); best = current before the first accuracy check."""
        ts, best = self.train_state, self.best_params is not None
        return {
            "params": ts.params,
            "state": ts.model_state,
            "opt_state": ts.opt_state,
            "best_params": self.best_params if best else ts.params,
            "best_state": self.best_state if best else ts.model_state,
            "rng": {"dropout_key": jax.random.key_data(ts.key)},
            **({} if ts.slow is None else {"slow": ts.slow}),
            **({} if ts.proxy is None else {"proxy": _proxy_tree(ts.proxy)}),
        }

    def progress(self) -> dict[str, Any]:
        """The JSON part of a checkpoint: counters, histories, best accuracy, the host
        generator's state and the clock."""
        return {
            "epoch": self.epoch, "iteration": self.iteration,
            "loss_history": self.loss_history, "train_acc_history": self.train_acc_history,
            "val_acc_history": self.val_acc_history, "lr_history": self.lr_history,
            "eval_history": self.eval_history, "best_val_acc": self.best_val_acc,
            "best_epoch": self.best_epoch, "has_best": self.best_params is not None,
            "host_rng": self.host_rng.bit_generator.state, "elapsed_s": self.tick(),
            "outside_s": self.outside_s,
        }  # fmt: skip

    def restored(self, tree: Mapping[str, Any], meta: Mapping[str, Any]) -> RunState:
        """The state a checkpoint holds (``tree``: its arrays, loaded in the structure of
        :meth:`checkpoint_tree`; ``meta``: its :meth:`progress`), with this state's key
        implementation and a generator of this state's kind."""
        iteration = int(meta["iteration"])
        key = jax.random.wrap_key_data(
            jnp.asarray(tree["rng"]["dropout_key"]),
            impl=jax.random.key_impl(self.train_state.key),
        )
        params, model_state, opt_state, slow = copy_tree(
            (tree["params"], tree["state"], tree["opt_state"], tree.get("slow"))
        )
        proxy = None if "proxy" not in tree else _proxy_state(tree["proxy"], key)
        rng = np.random.default_rng()
        rng.bit_generator.state = meta["host_rng"]
        best_params = best_state = None
        if meta["has_best"]:
            best_params, best_state = copy_tree((tree["best_params"], tree["best_state"]))
        history = {
            name: [_float(v) for v in meta[name]]
            for name in ("loss_history", "train_acc_history", "val_acc_history", "lr_history")
        }
        return RunState(
            train_state=TrainState(
                params,
                model_state,
                opt_state,
                jnp.asarray(iteration, jnp.int32),
                key,
                slow,
                proxy,
            ),
            host_rng=rng,
            epoch=int(meta["epoch"]),
            iteration=iteration,
            best_val_acc=_float(meta["best_val_acc"]),
            best_epoch=meta["best_epoch"],
            best_params=best_params,
            best_state=best_state,
            eval_history=[
                {k: _float(v) if k == "val_acc" else v for k, v in r.items()}
                for r in meta["eval_history"]
            ],
            elapsed_s=float(meta["elapsed_s"]),
            outside_s=float(meta.get("outside_s", 0.0)),  # older checkpoints lack it
            **history,
        )


# The Solver's cs231n attributes that are views of its RunState.
RUN_FIELDS = tuple(
    f.name for f in dataclasses.fields(RunState) if f.name != "host_rng" and f.name[0] != "_"
)


class RunField:
    """An attribute that is a view of the same field of its owner's ``run`` (a
    :class:`RunState`): how the Solver keeps cs231n's names (``solver.loss_history``)."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        return self if obj is None else getattr(obj.run, self.name)

    def __set__(self, obj: Any, value: Any) -> None:
        setattr(obj.run, self.name, value)


def _proxy_tree(proxy: TrainState) -> dict[str, Any]:
    """A data-selection proxy's state as checkpoint arrays (its key as raw key data)."""
    return {
        "params": proxy.params, "state": proxy.model_state, "opt_state": proxy.opt_state,
        "step": proxy.step, "rng": {"key": jax.random.key_data(proxy.key)},
    }  # fmt: skip


def _proxy_state(tree: Mapping[str, Any], like: jax.Array) -> TrainState:
    """:func:`_proxy_tree`'s inverse (fresh buffers; the key of ``like``'s implementation)."""
    params, model_state, opt_state, step = copy_tree(
        (tree["params"], tree["state"], tree["opt_state"], tree["step"])
    )
    key = jax.random.wrap_key_data(jnp.asarray(tree["rng"]["key"]), impl=jax.random.key_impl(like))
    return TrainState(params, model_state, opt_state, jnp.asarray(step, jnp.int32), key)
