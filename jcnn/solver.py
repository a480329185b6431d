"""The cs231n ``Solver``: the assignment's interface as a thin facade over :mod:`jcnn.train`
(the jitted step), :mod:`jcnn.optim` (optimisers, schedules), :mod:`jcnn.checkpoint`
(checkpoints, resuming) and :mod:`jcnn.nonfinite` (catching a non-finite loss).

>>> solver = Solver(model, data, update_rule='adam', optim_config={'learning_rate': 1e-3},
...                 lr_decay=0.95, batch_size=100, num_epochs=10, print_every=100)  # doctest: +SKIP
>>> solver.train()                                                               # doctest: +SKIP
(Iteration 1 / 4900) loss: 2.302585
(Epoch 0 / 10) train acc: 0.103000; val_acc: 0.098000
>>> solver.check_accuracy(data['X_test'], data['y_test'])                        # doctest: +SKIP

As in cs231n: minibatches are drawn on the host with replacement
(``rng.choice(num_train, batch_size)``), always ``batch_size`` examples (one compile per run);
accuracy is checked after the first iteration (epoch 0) and after every epoch, and the
parameters with the best validation accuracy become ``params``/``state`` when ``train`` ends.
``seed`` seeds the host generator and the JAX key: same seed, same run, bit for bit (on CPU),
interrupted and resumed or not. Hooks instead of subclassing: ``on_iteration(solver,
iteration, loss)`` after every update (each step then waits for its loss),
``on_progress(solver, iteration)`` with every progress line (every ``print_every`` updates,
no extra wait) and ``on_epoch_end(solver, epoch)`` after each accuracy check and its
checkpoint.

With a ``checkpoint_dir`` every epoch end (and every ``checkpoint_every`` updates, and the
first update ending ``checkpoint_every_s`` seconds or more after the last save) writes a
checkpoint holding all the run needs to continue bit for bit, and ``resume='auto'`` restores
the newest good one when the Solver is built (:mod:`jcnn.solver_checkpoints`; what changes
as it trains is one :class:`~jcnn.run_state.RunState`, ``solver.run``). Losses are
checked when read back (no sync per step) and the parameters every ``print_every`` updates:
the first non-finite one raises
:class:`~jcnn.nonfinite.NonFiniteLossError` and writes ``nonfinite.json`` beside
``checkpoint_dir``. ``mesh`` trains data-parallel (``batch_size`` is the global batch; only
process 0 writes), ``compute_dtype='bfloat16'`` in mixed precision.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import optax

from jcnn import _validate as check
from jcnn.checkpoint import CheckpointMismatchError
from jcnn.nonfinite import NonFiniteLossError
from jcnn.run_state import RunField
from jcnn.selection import Selection
from jcnn.solver_settings import ARGUMENTS, SettingField, SolverSettings
from jcnn.train import Lookahead
from jcnn.training_run import DATA_KEYS, TrainingRun, TrainingStopped

check_epoch_batches = check.epoch_batches  # where the apps look for it

_HOOKS = ("on_iteration", "on_epoch_end", "on_progress")

__all__ = [
    "DATA_KEYS",
    "CheckpointMismatchError",
    "NonFiniteLossError",
    "Solver",
    "TrainingStopped",
    "check_epoch_batches",
]


class Solver(TrainingRun):
    """Train a :mod:`jcnn.models` model on ``data`` the cs231n way (see the module docs).

    ``data`` holds ``X_train, y_train, X_val, y_val`` (host arrays; images shaped like the
    model's ``input_dim``, integer labels in ``[0, num_classes)``); other keys are ignored.
    ``params``/``state`` start training from given values instead of ``model.init``.
    ``run_config`` (JSON-able, e.g. the command line's flags) is recorded in every
    checkpoint. ``check_data=False`` resumes a checkpoint made on other data (its data
    fingerprint differs). Every argument is checked when the Solver is built (ValueError
    naming it).

    For recipes beyond cs231n's (e.g. :mod:`experiments.airbench_cifar`): ``optimizer``, an
    optax transformation used instead of ``update_rule``/``optim_config``/``lr_*``
    (``schedule(t)`` then gives the learning rate recorded in ``lr_history``);
    ``sampling='epoch'``, a new permutation of the training set each epoch (the last partial
    batch left out, so it needs at least ``batch_size`` training images) instead of draws
    with replacement; ``select_best=False``, the final
    weights are the result (``data['X_val']`` may then be empty, and ``val_acc`` is NaN);
    ``lookahead`` (:class:`~jcnn.train.Lookahead`); ``test_time_translate``, test-time
    shifts (:func:`~jcnn.train.make_eval_step`); ``selection``, each update on the rows a
    proxy net finds hardest (:class:`~jcnn.selection.Selection`; the proxy's state is
    checkpointed with the run's). ``augment`` may take a ``step`` keyword.
    ``micro_batches`` = m computes each minibatch's gradient in m parts under one
    ``lax.scan`` (:func:`~jcnn.train.micro_batch_gradients`): the activations of one part
    in memory instead of the batch's, the same update but for batchnorm's statistics,
    which are each part's; it is not part of a checkpoint's identity (a run may resume with
    another m).

    Attributes: ``params``, ``state``, ``opt_state`` (views of ``train_state``, a
    :class:`~jcnn.train.TrainState`); ``epoch``, ``iteration`` (updates done);
    ``loss_history`` (one float per iteration), ``train_acc_history``, ``val_acc_history``,
    ``lr_history`` (the learning rate of the update before each accuracy check),
    ``eval_history`` (one dict per check); ``best_val_acc``, ``best_epoch``, ``best_params``,
    ``best_state``; ``iterations_per_epoch``, ``num_iterations``; ``trace_counts``;
    ``resumed_from`` (None, or ``{'path', 'iteration', 'epoch', 'elapsed_s'}``);
    ``last_checkpoint``; ``elapsed_s`` (seconds in :meth:`train`, over every session) and
    ``outside_s`` (the part of them outside the updates: the run's one clock).
    Everything of these that changes as the run trains is ``run``, a
    :class:`~jcnn.run_state.RunState`, saved and restored as a unit.
    """

    # Views of self.settings, under cs231n's names.
    update_rule = SettingField()
    optim_config = SettingField()
    lr_decay = SettingField()
    lr_schedule = SettingField()
    warmup_epochs = SettingField()
    batch_size = SettingField()
    micro_batches = SettingField()
    num_epochs = SettingField()
    num_train_samples = SettingField()
    num_val_samples = SettingField()
    print_every = SettingField()
    verbose = SettingField()
    checkpoint_dir = SettingField()
    checkpoint_every = SettingField()
    checkpoint_every_s = SettingField()
    keep_checkpoints = SettingField()
    resume = SettingField()
    run_config = SettingField()
    seed = SettingField()
    augment = SettingField()
    compute_dtype = SettingField()
    test_time_flip = SettingField()
    test_time_translate = SettingField()
    check_data = SettingField()
    custom_optimizer = SettingField()
    sampling = SettingField()
    select_best = SettingField()
    lookahead = SettingField()
    selection = SettingField()

    # Views of self.run, under cs231n's names.
    train_state = RunField()
    epoch = RunField()
    iteration = RunField()
    best_val_acc = RunField()
    best_epoch = RunField()
    best_params = RunField()
    best_state = RunField()
    loss_history = RunField()
    train_acc_history = RunField()
    val_acc_history = RunField()
    lr_history = RunField()
    eval_history = RunField()
    elapsed_s = RunField()
    outside_s = RunField()

    def __init__(
        self,
        model: Any,
        data: Mapping[str, Any],
        *,
        update_rule: str = "sgd",
        optim_config: Mapping[str, Any] | None = None,
        lr_decay: float = 1.0,
        lr_schedule: str = "exponential",
        warmup_epochs: float = 0.0,
        batch_size: int = 100,
        micro_batches: int = 1,
        num_epochs: int = 10,
        num_train_samples: int | None = 1000,
        num_val_samples: int | None = None,
        print_every: int = 10,
        verbose: bool = True,
        checkpoint_dir: str | os.PathLike | None = None,
        checkpoint_every: int | None = None,
        checkpoint_every_s: float | None = None,
        keep_checkpoints: int = 0,
        resume: bool | str = "auto",
        run_config: Mapping[str, Any] | None = None,
        seed: int = 0,
        params: Any = None,
        state: Any = None,
        on_iteration: Callable | Iterable[Callable] | None = None,
        on_epoch_end: Callable | Iterable[Callable] | None = None,
        on_progress: Callable | Iterable[Callable] | None = None,
        augment: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
        mesh: jax.sharding.Mesh | None = None,
        compute_dtype: Any = None,
        test_time_flip: bool = False,
        test_time_translate: int = 0,
        check_data: bool = True,
        optimizer: optax.GradientTransformation | None = None,
        schedule: Callable[[Any], Any] | None = None,
        sampling: str = "replacement",
        select_best: bool = True,
        lookahead: Lookahead | None = None,
        selection: Selection | None = None,
    ):
        given = locals()
        hooks = {name: check.callables(name, given[name]) for name in _HOOKS}
        settings = SolverSettings.checked(**{name: given[name] for name in ARGUMENTS})
        super().__init__(model, data, settings, params=params, state=state, mesh=mesh, **hooks)
