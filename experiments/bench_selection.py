"""What data selection saves per update: an airbench recipe's training step with and without
``--select_keep``, side by side in one process.

    python -m experiments.bench_selection --flagfile=experiments/configs/airbench96_muon.cfg \\
        --keeps=0,1000

Takes the airbench app's flags (a recipe's flagfile) and, for each of ``--keeps`` (0: every
row of the minibatch), builds the recipe's train step (its optimiser, augmentation,
lookahead, compute dtype and micro-batches, the proxy with ``select_keep``) on random images
of its input shape, makes one untimed update (compilation), then times ``--steps`` updates
per round, the settings taking turns for ``--rounds`` rounds. The proxy trains on one update
in ``--select_proxy_every``, so the mean over the updates is its cost. Prints the mean and
the spread of seconds per update for each, and the CPU.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from absl import flags

from experiments import airbench_cifar, errors, train_flags

FLAGS = flags.FLAGS


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
    airbench_cifar.define_flags(fv)
    flags.DEFINE_list("keeps", ["0", "1000"], "Values of --select_keep to time (0: none).",
                      flag_values=fv)  # fmt: skip
    flags.DEFINE_integer("rounds", 3, "Rounds; each times every value.", lower_bound=1,
                         flag_values=fv)  # fmt: skip
    flags.DEFINE_integer("steps", 4, "Timed updates per value and round.", lower_bound=1,
                         flag_values=fv)  # fmt: skip


def _step_and_state(recipe: Any, data: dict[str, np.ndarray]) -> tuple[Any, Any]:
    import jax

    from jcnn.selection import proxy_state
    from jcnn.train import create_train_state, make_train_step

    model = recipe.build_model()
    p = recipe.training_pieces(model, data)
    key = jax.random.key(recipe.seed)
    state = create_train_state(
        model, p["optimizer"], key=key, params=p["params"], model_state=p["state"],
        lookahead=p["lookahead"], proxy=proxy_state(p["selection"], key),
    )  # fmt: skip
    step = make_train_step(
        model, p["optimizer"], augment=p["augment"], compute_dtype=recipe.compute_dtype,
        lookahead=p["lookahead"], micro_batches=recipe.micro_batches, select=p["selection"],
    )  # fmt: skip
    return step, state


def measure(recipe: Any, keeps: Sequence[int], rounds: int, steps: int) -> dict[int, list[float]]:
    """``{keep: seconds of each timed update}`` (module docs)."""
    import jax

    batch = recipe.batch_size
    rng = np.random.default_rng(0)
    shape = recipe.build_model().input_shape
    data = {
        "X_train": rng.normal(size=((steps + 1) * batch, *shape)).astype(np.float32),
        "y_train": rng.integers(0, 10, (steps + 1) * batch),
    }
    runs = {}
    for keep in keeps:
        step, state = _step_and_state(dataclasses.replace(recipe, select_keep=keep), data)
        state, metrics = step(state, (data["X_train"][:batch], data["y_train"][:batch]))
        jax.block_until_ready(metrics)
        runs[keep] = [step, state, []]
    for _ in range(rounds):
        for keep in keeps:
            step, state, times = runs[keep]
            for i in range(1, steps + 1):
                rows = slice(i * batch, (i + 1) * batch)
                start = time.perf_counter()
                state, metrics = step(state, (data["X_train"][rows], data["y_train"][rows]))
                jax.block_until_ready(metrics)
                times.append(time.perf_counter() - start)
            runs[keep][1] = state
    return {keep: runs[keep][2] for keep in keeps}


def main(argv: Sequence[str]) -> None:
    from experiments.benchmark.machine import cpu_model

    if len(argv) > 1:
        raise errors.UsageFailure(f"unexpected argument(s) {argv[1:]!r}")
    try:
        keeps = [int(k) for k in FLAGS.keeps]
        recipe = train_flags.recipe_from_flags(FLAGS, airbench_cifar.RECIPE_CLASS)
        for keep in keeps:
            dataclasses.replace(recipe, select_keep=keep)  # each value checked
    except ValueError as e:
        raise errors.UsageFailure(f"invalid flags: {e}") from None
    times = measure(recipe, keeps, FLAGS.rounds, FLAGS.steps)
    print(f"{cpu_model()}; batch {recipe.batch_size}, {recipe.compute_dtype or 'float32'}")
    for keep, t in times.items():
        print(
            f"--select_keep={keep}: {statistics.mean(t):.3f} s/update mean "
            f"(median {statistics.median(t):.3f}, {min(t):.3f}-{max(t):.3f}, n={len(t)})"
        )


if __name__ == "__main__":
    define_flags()
    errors.run_app(main)
