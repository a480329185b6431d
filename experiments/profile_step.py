r"""Where the time of one training step goes, two ways.

    python -m experiments.profile_step --models=vgg                # per layer call (default)
    python -m experiments.profile_step --models=vgg --by=op        # XLA's per-operation trace
    python -m experiments.profile_step --models=three_layer --impls=reference --by=op --top=15
    python -m experiments.profile_step --models=airbench --compute_dtype=bfloat16   # bf16 layers

Both build the same step as :mod:`experiments.benchmark`
(:func:`~experiments.benchmark.workers.make_jax_step`, with the same flags for the model
sizes, batch size and seed) and print its median time first.

``--by=layer`` records every layer call the model makes in one forward pass
(``L.conv_bn_relu``, ``L.max_pool2d``, ... with the real activations), then times each
distinct call on its own, forward + backward, on jcnn's hand-written layers and on
:mod:`jcnn.reference` (autodiff), interleaved, with a conv layer's convolution timed alone
beside it. Every float argument gets its gradient, the input included, so the first layer's
row holds a dx that the step never computes. ``--compute_dtype=bfloat16`` records and times
the calls of the network computed in bfloat16 (the ``jcnn_bf16`` step of the benchmark; the
reference's bfloat16 step is not timed, its layer calls are). The difference to the step is
what the table does not cover (the optimiser, the penalty, the layout changes at the model's
edges) and how XLA schedules the whole step differently from the parts. Every figure is a
plain wall-clock median, so on the CPU this is the budget to read.

``--by=op`` traces ``--steps`` steps with ``jax.profiler`` and sums the time of every compiled
HLO operation of one impl, grouped by kind and output shape. Read it with care: tracing slows
the step down, and on the CPU XLA runs a convolution asynchronously on its thread pool, so the
trace records only its launch while its work lands in whichever operations run beside it or
wait for it. The table lists the memory-bound passes, not a budget.
"""

from __future__ import annotations

import collections
import dataclasses
import gzip
import json
import re
import statistics
import tempfile
import time
from pathlib import Path

from absl import app, flags

from experiments import errors
from experiments.benchmark.options import apply_tiny, batch_sizes
from experiments.benchmark.workers import make_data, make_jax_model, make_jax_step

flags.DEFINE_enum("by", "layer", ["layer", "op"], "Per layer call, or per traced HLO operation.")
flags.DEFINE_integer("steps", 10, "Timed steps, and with --by=op traced steps.")
flags.DEFINE_integer("top", 30, "Rows to print (--by=op).")
flags.DEFINE_enum(
    "compute_dtype", "float32", ["float32", "bfloat16"],
    "--by=layer: the dtype the network computes in (parameters stay float32).",
)  # fmt: skip
FLAGS = flags.FLAGS

_DEFINITION = re.compile(r"^\s*(?:ROOT )?%(\S+) = (\S+?)(?:\{[^}]*\})? ([a-z-]+)\(", re.M)
_CUSTOM_CALL = re.compile(
    r"^\s*(?:ROOT )?%(\S+) = .*? custom-call\(.*?custom_call_target=\"([^\"]+)\"", re.M
)


def hlo_ops(hlo_text: str) -> dict[str, tuple[str, str]]:
    """HLO instruction name -> (kind, output shape): kind is the fusion's name without its
    number (``transpose_copy_fusion``), a custom call's target (``jcnn_conv_forward``) or
    the opcode (``convolution``, ``copy``)."""
    ops = {}
    targets = dict(_CUSTOM_CALL.findall(hlo_text))
    for name, shape, opcode in _DEFINITION.findall(hlo_text):
        kind = re.sub(r"\.\d+$", "", name) if opcode == "fusion" else opcode
        ops[name] = (targets.get(name, kind), shape)
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


@dataclasses.dataclass
class LayerCall:
    """One distinct call the model makes to its layer module, with the first concrete
    arguments seen and how many times per forward pass it happens."""

    name: str
    args: tuple
    kwargs: dict
    count: int = 1

    def describe(self) -> str:
        shapes = [
            "x".join(map(str, a.shape)) for a in self.args if hasattr(a, "shape") and a.ndim > 1
        ]
        shown = ("stride", "pad", "pool_height", "rate", "layout")
        static = {k: v for k, v in self.kwargs.items() if k in shown}
        extra = ", ".join(f"{k}={v}" for k, v in static.items())
        return f"{self.name}({', '.join(shapes)}{', ' + extra if extra else ''})"


def _signature(name: str, args: tuple, kwargs: dict) -> tuple:
    def sig(v):
        return (tuple(v.shape), str(v.dtype)) if hasattr(v, "shape") else repr(v)

    return name, tuple(sig(a) for a in args), tuple(sorted((k, sig(v)) for k, v in kwargs.items()))


def record_layer_calls(net, params, state, X, y, key, compute_dtype=None) -> list[LayerCall]:
    """Run ``net.loss`` once (computed in ``compute_dtype``, None: as the model is), eagerly,
    with every public function of ``net.L`` wrapped to record its arguments; returns the
    distinct calls in order. Only the model's own calls are seen (a sandwich layer's inner
    calls are not), and the module is restored after."""
    from jcnn.precision import mixed_precision_loss

    module = net.L
    seen: dict[tuple, LayerCall] = {}
    originals = {name: getattr(module, name) for name in module.__all__}

    def recording(name, fn):
        def wrapper(*args, **kwargs):
            signature = _signature(name, args, kwargs)
            if signature in seen:
                seen[signature].count += 1
            else:
                seen[signature] = LayerCall(name, args, kwargs)
            return fn(*args, **kwargs)

        return wrapper

    try:
        for name, fn in originals.items():
            setattr(module, name, recording(name, fn))
        mixed_precision_loss(net, compute_dtype)(params, state, X, y, key=key)
    finally:
        for name, fn in originals.items():
            setattr(module, name, fn)
    return list(seen.values())


def _is_float(a) -> bool:
    import jax.numpy as jnp

    return hasattr(a, "dtype") and jnp.issubdtype(a.dtype, jnp.floating)


def forward_backward(fn, call: LayerCall):
    """``f(*float_args) -> (⟨out, ct⟩, grads)``, jitted: one forward and one backward pass of
    ``fn`` at ``call``'s arguments (the first output if ``fn`` returns several), with a fixed
    random cotangent ``ct``; non-float arguments (labels, keys) are held fixed."""
    import jax
    import jax.numpy as jnp

    positions = [i for i, a in enumerate(call.args) if _is_float(a)]

    def forward(*floats):
        args = list(call.args)
        for i, v in zip(positions, floats, strict=True):
            args[i] = v
        out = fn(*args, **call.kwargs)
        return out[0] if isinstance(out, tuple) else out

    floats = [call.args[i] for i in positions]
    out = jax.eval_shape(forward, *floats)
    ct = jax.random.normal(jax.random.PRNGKey(0), out.shape, out.dtype)

    def objective(*floats):
        return jnp.vdot(forward(*floats), ct)

    step = jax.jit(jax.value_and_grad(objective, argnums=tuple(range(len(floats)))))
    return step, floats


def _conv_part(call: LayerCall) -> LayerCall | None:
    """The convolution inside a conv sandwich layer, as a ``conv2d`` call."""
    if not call.name.startswith("conv_"):
        return None
    conv_kwargs = {k: v for k, v in call.kwargs.items() if k in ("stride", "pad", "impl", "layout")}
    return LayerCall("conv2d", tuple(call.args[:3]), conv_kwargs, call.count)


def _blocking(step, args):
    """``run()`` that calls ``step(*args)`` and waits for its outputs."""
    import jax

    return lambda: jax.block_until_ready(step(*args))


def _median_ms(run, repeats: int, warmup: int = 1) -> float:
    """Median wall-clock milliseconds of ``run()`` (which must block until its work is done)
    over ``repeats`` calls, after ``warmup`` untimed ones."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def layer_times(calls: list[LayerCall], repeats: int, rounds: int = 3) -> list[dict]:
    """Forward + backward milliseconds of each call on jcnn and on the reference (the median
    of ``rounds`` interleaved medians of ``repeats`` runs), with a conv sandwich's convolution
    as an extra row right after it."""
    import jcnn.layers
    import jcnn.reference

    rows = []
    for call in calls:
        for part, label in ((call, call.describe()), (_conv_part(call), "  of which conv2d")):
            if part is None:
                continue
            runs = {
                impl: _blocking(*forward_backward(getattr(module, part.name), part))
                for impl, module in (("jcnn", jcnn.layers), ("reference", jcnn.reference))
            }
            samples = {impl: [] for impl in runs}
            for _ in range(rounds):
                for impl, run in runs.items():
                    samples[impl].append(_median_ms(run, repeats))
            rows.append(
                {
                    "call": label,
                    "per_step": part.count,
                    "jcnn_ms": statistics.median(samples["jcnn"]),
                    "reference_ms": statistics.median(samples["reference"]),
                    "in_total": part is call,
                    "convolution": part.name == "conv2d",
                }
            )
    return rows


def _profile_layers(model: str, batch: int) -> dict:
    import jax
    import jax.numpy as jnp

    bf16 = FLAGS.compute_dtype == "bfloat16"
    impls = {"jcnn": "jcnn_bf16"} if bf16 else {"jcnn": "jcnn", "reference": "reference"}
    step_ms = {name: _step_ms(*make_jax_step(model, i, batch)[:2]) for name, i in impls.items()}
    net, _ = make_jax_model(model, "jcnn")
    params, state = net.init(jax.random.PRNGKey(FLAGS.seed))
    x_np, y_np = make_data(model, batch, FLAGS.seed)
    calls = record_layer_calls(
        net, params, state, jnp.asarray(x_np), jnp.asarray(y_np), jax.random.PRNGKey(1),
        compute_dtype=FLAGS.compute_dtype if bf16 else None,
    )  # fmt: skip
    rows = layer_times(calls, FLAGS.steps)
    steps = ", ".join(f"{ms:.1f} ms on {name}" for name, ms in step_ms.items())
    print(
        f"{model}, batch {batch}, {FLAGS.compute_dtype}: median step {steps}; each layer call "
        "timed on its own, forward + backward (ms; x: calls per step):"
    )
    print("| layer call | x | jcnn | reference | reference ÷ jcnn |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(
            f"| {r['call']} | {r['per_step']} | {r['jcnn_ms']:.2f} | {r['reference_ms']:.2f} "
            f"| {r['reference_ms'] / r['jcnn_ms']:.2f} |"
        )

    def per_step_ms(impl: str, key: str) -> float:
        return sum(r[f"{impl}_ms"] * r["per_step"] for r in rows if r[key])

    totals = {impl: per_step_ms(impl, "in_total") for impl in ("jcnn", "reference")}
    convs = {impl: per_step_ms(impl, "convolution") for impl in ("jcnn", "reference")}
    for impl in ("jcnn", "reference"):
        rest = (
            f", the rest of the step {step_ms[impl] - totals[impl]:.1f} ms"
            if impl in step_ms
            else ""
        )
        print(
            f"{impl}: layer calls {totals[impl]:.1f} ms (of which convolutions "
            f"{convs[impl]:.1f} ms){rest}"
        )
    return {"step_ms": step_ms, "layers": rows, "layer_total_ms": totals, "conv_ms": convs}


def _step_ms(step, sync) -> float:
    """Median milliseconds of one training step (after the compiling call and the warm-up)."""
    return _median_ms(lambda: sync(step()), FLAGS.steps, warmup=1 + FLAGS.warmup)


def _profile_ops(model: str, impl: str, batch: int) -> dict:
    import jax

    step, sync, _, _, _, hlo_text = make_jax_step(model, impl, batch)
    ops = hlo_ops(hlo_text())
    wall_ms = _step_ms(step, sync)
    traced = []
    with tempfile.TemporaryDirectory() as tmp:
        with jax.profiler.trace(tmp, create_perfetto_trace=True):
            for _ in range(FLAGS.steps):
                t0 = time.perf_counter()
                sync(step())
                traced.append(time.perf_counter() - t0)
        rows = op_times(_read_trace(Path(tmp)), ops, FLAGS.steps)
    traced_ms = 1e3 * statistics.median(traced)
    print(
        f"{model}, {impl}, batch {batch}: median step {wall_ms:.1f} ms, {traced_ms:.1f} ms "
        f"while traced ({FLAGS.steps} steps each); HLO operations, largest first (share: of "
        "the untraced step; convolutions: their launches only, see --help):"
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
    return {"impl": impl, "step_ms": wall_ms, "traced_step_ms": traced_ms, "ops": rows}


def main(argv):
    del argv
    import jcnn.cpu

    jcnn.cpu.tune()
    apply_tiny()
    if len(FLAGS.models) != 1 or len(batch_sizes(FLAGS.models[0])) != 1:
        raise app.UsageError("profile_step takes exactly one of --models and --batch_sizes")
    model = FLAGS.models[0]
    batch = batch_sizes(model)[0]
    if FLAGS.by == "layer":
        if FLAGS["impls"].present:
            raise app.UsageError(
                "--by=layer times jcnn and jcnn.reference side by side; --impls is for --by=op"
            )
        result = _profile_layers(model, batch)
    else:
        impls = FLAGS.impls if FLAGS["impls"].present else ["jcnn"]
        if len(impls) != 1 or impls[0] not in ("jcnn", "reference"):
            raise app.UsageError(f"--by=op takes exactly one of --impls jcnn, reference: {impls}")
        if FLAGS.compute_dtype != "float32":
            raise app.UsageError("--compute_dtype is for --by=layer")
        result = _profile_ops(model, impls[0], batch)
    if FLAGS.json_out:
        Path(FLAGS.json_out).write_text(
            json.dumps({"model": model, "batch": batch, "by": FLAGS.by, **result}, indent=1)
        )


if __name__ == "__main__":
    errors.run_app(main)
