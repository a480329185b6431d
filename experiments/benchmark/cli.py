"""The benchmark's ``main``: as a worker, time one (model, batch, impl) and print its JSON
line; as the parent, run the rounds of workers and print (and write) the report."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from absl import app

from experiments.benchmark import machine, report, spawn
from experiments.benchmark.options import (
    FLAGS,
    IMPLS,
    MODELS,
    OPTIMIZERS,
    RENAMED,
    RESULT_PREFIX,
    TORCH_IMPLS,
    apply_tiny,
    batch_sizes,
    model_config,
    unsupported,
)
from experiments.benchmark.workers import run_worker


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def worker_main() -> int:
    if len(FLAGS.models) != 1 or len(FLAGS.impls) != 1:
        raise app.UsageError("--worker takes exactly one of --models, --impls, --batch_sizes")
    model = FLAGS.models[0]
    if model not in MODELS:
        raise app.UsageError(f"unknown model {model!r}; expected one of {MODELS}")
    sizes = batch_sizes(model)
    if len(sizes) != 1:
        raise app.UsageError("--worker takes exactly one of --models, --impls, --batch_sizes")
    record = run_worker(model, FLAGS.impls[0], sizes[0])
    print(RESULT_PREFIX + json.dumps(record), flush=True)
    return 0


def selected_impls(log=_stderr) -> tuple[list[str], list[str]]:
    """``--impls`` checked (an unknown name stops the app), then ``(impls, skipped)``: the
    torch ones are skipped when torch is not importable."""
    impls = [RENAMED.get(i, i) for i in FLAGS.impls]
    for old in set(FLAGS.impls) & set(RENAMED):
        log(f"--impls: {old!r} is now called {RENAMED[old]!r}; the old name will go")
    for i in impls:
        if i not in IMPLS:
            raise app.UsageError(f"unknown impl {i!r}; expected one of {IMPLS}")
    skipped = []
    if not machine.torch_available():
        skipped = [i for i in impls if i in TORCH_IMPLS]
        impls = [i for i in impls if i not in TORCH_IMPLS]
        if skipped:
            log(f"torch is not importable: skipping {skipped}")
    return impls, skipped


def run_rounds(
    models: Sequence[str],
    sizes: Mapping[str, Sequence[int]],
    impls: Sequence[str],
    log=_stderr,
) -> tuple[list[dict], dict, list[dict]]:
    """Every round's workers, one after another: ``(records, quiet, quiet_rounds)``, where
    ``quiet`` is the wait for a quiet machine before the first round; ``sizes`` holds each
    model's batch sizes."""
    quiet = machine.wait_for_quiet(FLAGS.quiet_load, FLAGS.quiet_max_wait, log=log)
    log(f"load {quiet['load_end']} (quiet: {quiet['quiet']}); timing {FLAGS.rounds} rounds")
    quiet_rounds = [quiet]
    records = []
    for rnd in range(1, FLAGS.rounds + 1):
        if rnd > 1 and FLAGS.quiet_each_round:
            quiet_rounds.append(
                machine.wait_for_quiet(FLAGS.quiet_load, FLAGS.quiet_max_wait, log=log)
            )
        for model in models:
            for bs in sizes[model]:
                for impl in spawn.impl_order(impls, rnd, FLAGS.order):
                    rec = spawn.spawn_worker(model, impl, bs, rnd, FLAGS.worker_timeout)
                    records.append(rec)
                    where = f"[round {rnd}/{FLAGS.rounds}] {model} bs={bs} {impl}"
                    if rec.get("ok"):
                        log(
                            f"{where}: median {rec['median_s']:.4f} s/step, first call "
                            f"{rec['first_call_s']:.2f}s, others' CPU {rec['others_cpu_frac']}"
                        )
                    else:
                        last = rec["error"].strip().splitlines()[-3:]
                        log(f"{where}: FAILED")
                        log("\n".join("    " + line for line in last))
    return records, quiet, quiet_rounds


def parent_main() -> int:
    log = _stderr
    models = list(FLAGS.models)
    for m in models:
        if m not in MODELS:
            raise app.UsageError(f"unknown model {m!r}; expected one of {MODELS}")
    impls, skipped = selected_impls(log)
    for m in models:
        reason = unsupported(m, impls)
        if reason:
            raise app.UsageError(reason)
    sizes = {m: batch_sizes(m) for m in models}
    records, quiet, quiet_rounds = run_rounds(models, sizes, impls, log)

    summaries, ratios = report.summarise(records)
    others = [r["others_cpu_frac"] for r in records if r.get("others_cpu_frac") is not None]
    meta = {
        "command": sys.argv,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine.machine_info(),
        "platforms": report.platforms(records),
        "quiet": quiet,
        "quiet_rounds": quiet_rounds,
        "others_cpu_frac_max": max(others, default=None),
        "models": {m: model_config(m) for m in models},
        "optimizers": {m: OPTIMIZERS[m] for m in models},
        "batch_sizes": sizes,
        "impls": impls,
        "skipped_impls": skipped,
        "step": FLAGS.step,
        "rounds": FLAGS.rounds,
        "repeats": FLAGS.repeats,
        "warmup": FLAGS.warmup,
        "order": FLAGS.order,
        "seed": FLAGS.seed,
        "learning_rate": FLAGS.learning_rate,
        "huge_pages": FLAGS.huge_pages,
    }
    print(report.format_header(meta))
    print()
    print(report.format_tables(summaries, ratios))
    sys.stdout.flush()
    if FLAGS.json_out:
        path = Path(FLAGS.json_out)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {"meta": meta, "summary": summaries, "ratios": ratios, "runs": records}
        path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
        log(f"wrote {path}")
    failed = [r for r in records if not r.get("ok")]
    return 1 if failed else 0


def main(argv: Sequence[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    apply_tiny()
    if FLAGS.repeats < 1 or FLAGS.rounds < 1 or FLAGS.warmup < 0:
        raise app.UsageError("--repeats and --rounds must be >= 1, --warmup >= 0")
    if FLAGS.worker:
        return worker_main()
    return parent_main()
