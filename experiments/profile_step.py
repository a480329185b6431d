r"""Where the time of one jcnn training step goes: XLA's own per-operation trace.

    python -m experiments.profile_step --models=vgg            # VGG seed config, jcnn, batch 50
    python -m experiments.profile_step --models=three_layer --impls=reference --top=15

Builds the same step as :mod:`experiments.benchmark` (same flags for the model sizes, batch
size and seed; one model, one JAX impl), warms it up, traces ``--steps`` steps with
``jax.profiler`` and sums the time of every compiled HLO operation (fusions, convolutions,
copies/transposes, ...). Prints the operations grouped by kind and output shape, largest
first, with their share of the step's wall time.

Read the shares with care: tracing slows the step down (both medians are printed; shares
are of the untraced one), XLA runs some operations concurrently (so shares can add up to
more than the step) and some convolutions are recorded only in part (so they can add up to
less). The table is for finding the large, memory-bound passes (transposes, batchnorm
reductions, optimiser updates), not an exact budget.
"""

from __future__ import annotations

import collections
import gzip
import json
import re
import statistics
import tempfile
import time
from pathlib import Path

from absl import app, flags

from experiments import benchmark as B

flags.DEFINE_integer("steps", 10, "Traced steps (after the warm-up steps).")
flags.DEFINE_integer("top", 30, "Rows to print.")
FLAGS = flags.FLAGS

_DEFINITION = re.compile(r"^\s*(?:ROOT )?%(\S+) = (\S+?)(?:\{[^}]*\})? ([a-z-]+)\(", re.M)


def hlo_ops(hlo_text: str) -> dict[str, tuple[str, str]]:
    """HLO instruction name -> (kind, output shape): kind is the fusion's name without its
    number (``transpose_copy_fusion``) or the opcode (``convolution``, ``copy``)."""
    ops = {}
    for name, shape, opcode in _DEFINITION.findall(hlo_text):
        kind = re.sub(r"\.\d+$", "", name) if opcode == "fusion" else opcode
        ops[name] = (kind, shape)
    return ops


def op_times(trace_events: list[dict], ops: dict[str, tuple[str, str]], steps: int) -> list[dict]:
    """Per (kind, shape): total milliseconds per step and operations per step."""
    total: dict[tuple[str, str], float] = collections.Counter()
    count: dict[tuple[str, str], int] = collections.Counter()
    for event in trace_events:
        if event.get("ph") == "X" and event.get("name") in ops:
            key = ops[event["name"]]
            total[key] += event["dur"] / 1e3
            count[key] += 1
    rows = [
        {"kind": k, "shape": sh, "ms_per_step": t / steps, "ops_per_step": count[(k, sh)] / steps}
        for (k, sh), t in total.items()
    ]
    return sorted(rows, key=lambda r: -r["ms_per_step"])


def _read_trace(directory: Path) -> list[dict]:
    files = sorted(directory.rglob("*.trace.json.gz"))
    if not files:
        raise FileNotFoundError(f"jax.profiler wrote no *.trace.json.gz under {directory}")
    data = json.loads(gzip.decompress(files[-1].read_bytes()))
    return data["traceEvents"] if isinstance(data, dict) else data


def main(argv):
    del argv
    import jax

    B.apply_tiny()
    if not FLAGS["impls"].present:
        FLAGS.impls = ["jcnn"]
    if len(FLAGS.models) != 1 or len(FLAGS.impls) != 1 or len(FLAGS.batch_sizes) != 1:
        raise app.UsageError("profile_step takes exactly one of --models, --impls, --batch_sizes")
    model, impl, batch = FLAGS.models[0], FLAGS.impls[0], int(FLAGS.batch_sizes[0])
    if impl not in ("jcnn", "reference"):
        raise app.UsageError(f"--impls must be jcnn or reference, got {impl!r}")
    step, sync, _, _, _, hlo_text = B.make_jax_step(model, impl, batch)
    ops = hlo_ops(hlo_text())
    for _ in range(1 + FLAGS.warmup):
        sync(step())
    walls, traced = [], []
    for _ in range(FLAGS.steps):
        t0 = time.perf_counter()
        sync(step())
        walls.append(time.perf_counter() - t0)
    with tempfile.TemporaryDirectory() as tmp:
        with jax.profiler.trace(tmp, create_perfetto_trace=True):
            for _ in range(FLAGS.steps):
                t0 = time.perf_counter()
                sync(step())
                traced.append(time.perf_counter() - t0)
        rows = op_times(_read_trace(Path(tmp)), ops, FLAGS.steps)
    wall_ms, traced_ms = 1e3 * statistics.median(walls), 1e3 * statistics.median(traced)
    print(
        f"{model}, {impl}, batch {batch}: median step {wall_ms:.1f} ms, {traced_ms:.1f} ms "
        f"while traced ({FLAGS.steps} steps each); HLO operations, largest first (share: of "
        "the untraced step):"
    )
    print("| operation | output shape | ms/step | share of step | per step |")
    print("| --- | --- | ---: | ---: | ---: |")
    for r in rows[: FLAGS.top]:
        print(
            f"| {r['kind']} | {r['shape']} | {r['ms_per_step']:.2f} "
            f"| {100 * r['ms_per_step'] / wall_ms:.1f}% | {r['ops_per_step']:g} |"
        )
    by_kind = collections.Counter()
    for r in rows:
        by_kind[re.sub(r"_fusion$", "", r["kind"])] += r["ms_per_step"]
    print("By kind: " + ", ".join(f"{k} {v:.1f} ms" for k, v in by_kind.most_common(8)))
    if FLAGS.json_out:
        Path(FLAGS.json_out).write_text(
            json.dumps(
                {
                    "model": model,
                    "impl": impl,
                    "step_ms": wall_ms,
                    "traced_step_ms": traced_ms,
                    "ops": rows,
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    app.run(main)
