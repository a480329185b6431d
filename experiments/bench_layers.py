"""Naive vs fast layers, as in the assignment's timing cells.

    python -m experiments.bench_layers [--repeats=20] [--json_out=PATH]

Times, jitted and after warm-up, the forward pass and the forward+backward pass of every
conv impl on x (100, 3, 31, 31), w (25, 3, 3, 3), stride 2, pad 1, and of every max-pool
impl on x (100, 3, 32, 32) with 2×2 windows, stride 2; reports medians and the speed-up
over naive.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
from absl import flags

import jcnn.cpu
import jcnn.layers as L
from experiments import errors

FLAGS = flags.DEFINE_integer("repeats", 20, "timed calls per measurement (median reported)")
JSON_OUT = flags.DEFINE_string("json_out", None, "also write the results as JSON here")


def _median_seconds(fn, *args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))  # compile and warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _time_layer(layer, args, repeats: int) -> tuple[float, float]:
    forward = jax.jit(layer)
    dout = jnp.ones_like(forward(*args))
    dout = jax.random.normal(jax.random.PRNGKey(1), dout.shape, dout.dtype)
    # value_and_grad over every input: the forward pass and the whole backward pass run.
    argnums = tuple(range(len(args)))
    backward = jax.jit(jax.value_and_grad(lambda *a: jnp.sum(layer(*a) * dout), argnums=argnums))
    return (
        _median_seconds(forward, *args, repeats=repeats),
        _median_seconds(backward, *args, repeats=repeats),
    )


def run(repeats: int) -> list[dict]:
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    x = jax.random.normal(keys[0], (100, 3, 31, 31), jnp.float32)
    w = jax.random.normal(keys[1], (25, 3, 3, 3), jnp.float32)
    b = jax.random.normal(keys[2], (25,), jnp.float32)
    xp = jax.random.normal(keys[0], (100, 3, 32, 32), jnp.float32)
    rows = []
    for impl in ("naive", "im2col", "xla"):
        fwd, both = _time_layer(
            lambda x, w, b, impl=impl: L.conv2d(x, w, b, stride=2, pad=1, impl=impl),
            (x, w, b),
            repeats,
        )
        rows.append({"layer": "conv2d", "impl": impl, "forward_s": fwd, "forward_backward_s": both})
    for impl in ("naive", "fast"):
        fwd, both = _time_layer(lambda x, impl=impl: L.max_pool2d(x, impl=impl), (xp,), repeats)
        rows.append(
            {"layer": "max_pool2d", "impl": impl, "forward_s": fwd, "forward_backward_s": both}
        )
    for row in rows:
        naive = next(r for r in rows if r["layer"] == row["layer"] and r["impl"] == "naive")
        row["forward_speedup"] = naive["forward_s"] / row["forward_s"]
        row["forward_backward_speedup"] = naive["forward_backward_s"] / row["forward_backward_s"]
    return rows


def format_table(rows: list[dict]) -> str:
    lines = [
        "| layer | impl | forward (ms) | speed-up | forward+backward (ms) | speed-up |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['layer']} | {r['impl']} | {1e3 * r['forward_s']:.2f} | "
            f"{r['forward_speedup']:.1f}x | {1e3 * r['forward_backward_s']:.2f} | "
            f"{r['forward_backward_speedup']:.1f}x |"
        )
    return "\n".join(lines)


def main(argv):
    del argv
    jcnn.cpu.tune()
    rows = run(FLAGS.value)
    print(
        f"jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} cores, "
        f"{platform.processor() or platform.machine()}; median of {FLAGS.value} calls"
    )
    print(
        "conv: x (100, 3, 31, 31), w (25, 3, 3, 3), stride 2, pad 1; "
        "pool: x (100, 3, 32, 32), 2x2, stride 2"
    )
    print(format_table(rows))
    if JSON_OUT.value:
        with open(JSON_OUT.value, "w") as f:
            json.dump({"jax": jax.__version__, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    errors.run_app(main)
