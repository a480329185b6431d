"""The benchmark's report: per (model, batch, impl) summaries, per-round throughput ratios,
the markdown tables and the header describing the machine."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from experiments.benchmark.options import JAX_IMPLS, RATIO_PAIRS


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def summarise(records: Sequence[dict]) -> tuple[list[dict], list[dict]]:
    """Per (model, batch, impl) summaries and per-round throughput ratios from worker records."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["model"], r["batch_size"], r["impl"]), []).append(r)
    summaries = []
    for (model, bs, impl), rs in groups.items():
        ok = [r for r in rs if r.get("ok")]
        steps = [t for r in ok for t in r["step_s"]]
        median = _median(steps)
        summaries.append(
            {
                "model": model,
                "batch_size": bs,
                "impl": impl,
                "rounds_ok": len(ok),
                "rounds_failed": len(rs) - len(ok),
                "steps": len(steps),
                "min_s": min(steps) if steps else None,
                "median_s": median,
                "img_per_s": bs / median if median else None,
                "round_median_s": [r["median_s"] for r in ok],
                "compile_s": _median([r["first_call_s"] for r in ok]),
                "others_cpu_frac_max": max(
                    (r["others_cpu_frac"] for r in ok if r.get("others_cpu_frac") is not None),
                    default=None,
                ),
                "loss_finite": all(r.get("loss_finite") for r in ok) if ok else None,
                "first_loss": ok[0]["first_loss"] if ok else None,
                "errors": [r["error"] for r in rs if not r.get("ok")],
            }
        )
    ratios = []
    for model, bs in dict.fromkeys((m, b) for m, b, _ in groups):
        for a, b in RATIO_PAIRS:
            by_round = {}
            for r in records:
                if r["model"] == model and r["batch_size"] == bs and r.get("ok"):
                    by_round.setdefault(r["round"], {})[r["impl"]] = r["median_s"]
            per_round = [
                v[b] / v[a] for _, v in sorted(by_round.items()) if a in v and b in v and v[a] > 0
            ]
            if (model, bs, a) not in groups or (model, bs, b) not in groups:
                continue
            ratios.append(
                {
                    "model": model,
                    "batch_size": bs,
                    "pair": f"{a}/{b}",
                    "median": _median(per_round),
                    "min": min(per_round) if per_round else None,
                    "max": max(per_round) if per_round else None,
                    "per_round": per_round,
                }
            )
    return summaries, ratios


def _fmt(value, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def format_tables(summaries: Sequence[dict], ratios: Sequence[dict]) -> str:
    lines = [
        "| model | batch | impl | min s/step | median s/step | img/s | compile s | rounds |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s in summaries:
        rounds = str(s["rounds_ok"]) + (
            f" ({s['rounds_failed']} failed)" * bool(s["rounds_failed"])
        )
        lines.append(
            f"| {s['model']} | {s['batch_size']} | {s['impl']} | {_fmt(s['min_s'], '.4f')} "
            f"| {_fmt(s['median_s'], '.4f')} | {_fmt(s['img_per_s'], ',.0f')} "
            f"| {_fmt(s['compile_s'], '.2f')} | {rounds} |"
        )
    if ratios:
        lines += [
            "",
            "Throughput ratios (> 1: the first is faster), median of per-round ratios (range):",
            "",
            "| model | batch | ratio | median | range | rounds |",
            "| --- | ---: | --- | ---: | --- | ---: |",
        ]
        for r in ratios:
            span = f"{r['min']:.2f}–{r['max']:.2f}" if r["min"] is not None else "—"
            lines.append(
                f"| {r['model']} | {r['batch_size']} | {r['pair']} | {_fmt(r['median'], '.2f')} "
                f"| {span} | {len(r['per_round'])} |"
            )
    return "\n".join(lines)


def platforms(records: Sequence[dict]) -> dict:
    """One platform description per impl, from the first worker of that impl that succeeded."""
    out = {}
    for r in records:
        if r.get("ok") and r["impl"] not in out:
            p = dict(r["platform"])
            p.pop("model_kwargs", None)
            out[r["impl"]] = p
    return out


def format_header(meta: dict) -> str:
    m = meta["machine"]
    v = m["versions"]
    parts = [
        f"CPU: {m['cpu_model']} ({m['cpu_count']} logical cores, {m['cpu_affinity']} usable; "
        f"{' '.join(m['cpu_flags']) or 'no AVX flags seen'})",
        f"jax {v['jax']}, jaxlib {v['jaxlib']}, optax {v['optax']}, torch {v['torch']}",
    ]
    for impl, p in meta["platforms"].items():
        if impl in JAX_IMPLS:
            parts.append(
                f"{impl}: backend {p['backend']}, devices {p['devices']}, "
                f"XLA_FLAGS={p['XLA_FLAGS']!r}, huge pages: {p.get('jcnn_hugepages')}, "
                f"compiled kernels: {p.get('jcnn_native')}, oneDNN convolutions: "
                f"{p.get('jcnn_onednn')}"
            )
        else:
            parts.append(
                f"{impl}: device {p['device']}"
                + (f" ({p['device_name']})" if p.get("device_name") else "")
                + f", {p['num_threads']} threads"
            )
    for model, cfg in meta["models"].items():
        shown = ", ".join(f"{k}={v}" for k, v in cfg.items())
        parts.append(
            f"{model}: {shown}; batch sizes {meta['batch_sizes'][model]}; "
            f"optimiser {meta['optimizers'][model]}, learning rate {meta['learning_rate']}"
        )
    q = meta["quiet"]
    parts.append(
        f"load (1 min) before timing: {q['load_start']} -> {q['load_end']} after "
        f"{q['waited_s']:.0f}s (threshold {q['threshold']}, quiet: {q['quiet']}); "
        f"max CPU share used by other processes while timing: {meta['others_cpu_frac_max']}"
    )
    step = {
        "hvp": "a Hessian-vector product of the loss in the parameters (jvp of grad)",
        "jvp": "a directional derivative of the loss in the parameters (forward mode, jvp)",
    }.get(meta.get("step"), "forward + backward + optimiser update")
    parts.append(
        "float32 (the *_bf16 impls: the network in bfloat16, parameters and optimiser float32), "
        f"one step = {step}; {meta['rounds']} rounds x "
        f"{meta['repeats']} timed steps (+{meta['warmup']} warm-up) per worker"
    )
    pages = meta.get("huge_pages", "jcnn")
    parts.append(
        {
            "jcnn": "heap on huge pages (jcnn.cpu.tune()) in jcnn's workers only, as jcnn's "
            "training apps run; --huge_pages=all gives PyTorch's workers the same",
            "all": "heap on huge pages (jcnn.cpu.tune()) in every worker, PyTorch's included",
            "none": "no worker's heap on huge pages (jcnn.cpu.tune() not called)",
        }[pages]
    )
    return "\n".join(f"- {p}" for p in parts)
