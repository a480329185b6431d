r"""Time one training step (forward + backward + Adam) of jcnn models against PyTorch eager.

    python -m experiments.benchmark                                  # both models, batch 50
    python -m experiments.benchmark --models=vgg --rounds=7 --repeats=30 --json_out=vgg.json
    python -m experiments.benchmark --tiny --repeats=2 --rounds=1    # smoke run, seconds

Implementations (``--impls``):

* ``jcnn``: the model on jcnn's hand-written layers (``layers='jcnn'``);
* ``reference``: the same model on the autodiff twins of :mod:`jcnn.reference`
  (``layers='reference'``), i.e. plain JAX + ``jax.grad``;
* ``torch``: the same network in PyTorch eager (:mod:`experiments.torch_models`), when torch is
  importable (``pip install torch``; it is not a jcnn dependency);
* ``torch_compile`` (not in the default list): the torch step with ``torch.compile`` on the loss;
* ``jcnn_xla`` (not in the default list): ``jcnn`` with its compiled CPU kernels turned off
  (``JCNN_NATIVE=0`` in that worker; see :mod:`jcnn.native`), so ``jcnn/jcnn_xla`` is what
  the kernels bring, measured side by side;
* ``solver`` (not in the default list): the jcnn model trained by :class:`jcnn.solver.Solver`
  for two epochs on ``--solver_num_train`` random CIFAR-sized images (minibatch sampling on
  the host, the jitted update, accuracy checks on 1,000 train and 1,000 val images at each
  epoch end; ``--solver_augment`` adds random crops and flips inside the step). Its "step" is
  the second epoch's training time (up to the accuracy check) over its iterations, so the
  ``solver/jcnn`` ratio says how close a real training loop comes to the bare step; the
  worker's JSON also has the whole epoch's time, accuracy check included (``epoch_s``).

The JAX step is written the way a user writes it in a notebook, with only the public model API:
one ``jax.jit`` function over ``jax.value_and_grad(model.loss, has_aux=True)`` and
``optax.adam``, with params / state / optimiser state / key donated. The torch step is
``zero_grad`` / forward / ``backward`` / ``step``.

How it is measured:

* Every (model, batch size, impl) runs in its own fresh process (this module with ``--worker``),
  one after another, never concurrently. ``--rounds`` repeats the whole set; the impls are
  interleaved within each round (``--order=rotate``, the default, also rotates which impl goes
  first, so no impl is always first or last).
* A worker builds the model (fixed ``--seed``), draws float32 data once and keeps it on the
  device, times the first call (trace + compile + one step, reported as "compile"), runs
  ``--warmup`` untimed steps, then times ``--repeats`` steps one by one (``block_until_ready``
  on every output for JAX, ``cuda.synchronize`` for torch on a GPU), and prints one JSON line.
* Before the first round the parent waits until the 1-minute load average is below
  ``--quiet_load`` (or ``--quiet_max_wait`` seconds have passed), and reports the load seen. Each
  worker also reports the CPU time other processes used while it was timing
  (``others_cpu_frac``: 0 = the machine was ours alone, 1 = another process kept every core busy;
  null when the timed window was too short to say, under about half a CPU-second).
* Per (model, batch, impl): min and median seconds per step over all timed steps of all rounds,
  img/s at the median, median compile time. Ratios are throughput ratios (``a/b`` > 1: ``a``
  faster), computed per round from the two workers' median step times, then the median (and
  range) over rounds.

Output: a markdown table on stdout (progress on stderr) and, with ``--json_out``, a JSON file
with the machine description (CPU, cores, affinity, jax/jaxlib/torch versions, XLA_FLAGS in
effect, jax devices, torch threads), the summaries, the ratios and every worker's raw step
times. The exit status is 1 if any worker failed (the table still shows the others).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from absl import app, flags

MODELS = ("three_layer", "vgg")
# jcnn_xla: jcnn with its compiled CPU kernels turned off (JCNN_NATIVE=0): XLA's code instead.
JAX_IMPLS = ("jcnn", "reference", "solver", "jcnn_xla")
TORCH_IMPLS = ("torch", "torch_compile")
IMPLS = JAX_IMPLS + TORCH_IMPLS
# (a, b): report throughput(a) / throughput(b) when both were run.
RATIO_PAIRS = (
    ("jcnn", "torch"),
    ("reference", "torch"),
    ("jcnn", "reference"),
    ("jcnn", "torch_compile"),
    ("torch_compile", "torch"),
    ("solver", "jcnn"),
    ("jcnn", "jcnn_xla"),
)
RESULT_PREFIX = "@@jcnn-benchmark@@ "

# Values --tiny gives to the size flags that were not set explicitly: a model that compiles and
# runs in well under a second, for smoke tests.
TINY = {
    "image_size": 8,
    "three_layer_filters": 4,
    "three_layer_filter_size": 3,
    "three_layer_hidden": 8,
    "vgg_filters": ["4", "4"],
    "vgg_blocks": ["1", "1"],
    "vgg_hidden": ["8"],
    "batch_sizes": ["4"],
}

FLAGS = flags.FLAGS

flags.DEFINE_list("models", list(MODELS), f"Models to time, from {MODELS}.")
flags.DEFINE_list("batch_sizes", ["50"], "Batch sizes to time.")
flags.DEFINE_list(
    "impls",
    ["jcnn", "reference", "torch"],
    f"Implementations, from {IMPLS}; torch ones are skipped when torch is not importable.",
)
flags.DEFINE_integer("repeats", 20, "Timed steps per worker (per round).")
flags.DEFINE_integer("rounds", 5, "Rounds; each runs every (model, batch, impl) once.")
flags.DEFINE_integer("warmup", 3, "Untimed steps after the first (compiling) call.")
flags.DEFINE_enum("order", "rotate", ["rotate", "fixed"], "Impl order within a round.")
flags.DEFINE_string("json_out", None, "Write the full results as JSON to this path.")
flags.DEFINE_float(
    "quiet_load", 0.5, "Wait before timing until the 1-min load average is below this."
)
flags.DEFINE_float("quiet_max_wait", 300.0, "Give up waiting for a quiet machine after this (s).")
flags.DEFINE_bool("quiet_each_round", False, "Also wait for a quiet machine before every round.")
flags.DEFINE_float("worker_timeout", 1800.0, "Seconds before a worker is killed.")
flags.DEFINE_integer("seed", 0, "Seed for the parameters and the data.")
flags.DEFINE_float("learning_rate", 1e-3, "Adam learning rate.")
flags.DEFINE_float("reg", 1e-3, "L2 strength: 0.5·reg·Σ W² added to the loss.")
flags.DEFINE_integer("num_classes", 10, "Classes.")
flags.DEFINE_integer("image_size", 32, "Images are 3 x image_size x image_size.")
flags.DEFINE_integer("three_layer_filters", 32, "ThreeLayerConvNet: conv filters.")
flags.DEFINE_integer("three_layer_filter_size", 7, "ThreeLayerConvNet: filter size.")
flags.DEFINE_integer("three_layer_hidden", 500, "ThreeLayerConvNet: hidden units.")
flags.DEFINE_float("three_layer_weight_scale", 1e-3, "ThreeLayerConvNet: init std.")
flags.DEFINE_list("vgg_filters", ["64", "64", "128", "256"], "VGGNet: filters per stage.")
flags.DEFINE_list("vgg_blocks", ["2", "2", "3", "3"], "VGGNet: conv blocks per stage.")
flags.DEFINE_list("vgg_hidden", ["64", "64"], "VGGNet: hidden affine widths.")
flags.DEFINE_float("vgg_dropout", 0.2, "VGGNet: dropout rate (probability of dropping).")
flags.DEFINE_float("vgg_weight_scale", 1e-2, "VGGNet: init std.")
flags.DEFINE_bool(
    "tiny", False, "Tiny sizes for smoke tests (sets the size flags not given explicitly)."
)
flags.DEFINE_integer(
    "solver_num_train", 10_000, "solver impl: training images (one epoch = this / batch)."
)
flags.DEFINE_bool("solver_augment", False, "solver impl: random crops + flips in the step.")
flags.DEFINE_string("conv_impl", None, "jcnn models: conv_impl (default: the model's).")
flags.DEFINE_string("pool_impl", None, "jcnn models: pool_impl (default: the model's).")
flags.DEFINE_integer("torch_threads", 0, "torch.set_num_threads (0: torch's default).")
flags.DEFINE_string("torch_device", "auto", "torch device: auto (cuda if available), cpu, cuda.")
# Worker mode: internal, used by the parent to run one (model, batch, impl) in a fresh process.
flags.DEFINE_bool("worker", False, "Internal: time a single model/batch/impl and print JSON.")
flags.DEFINE_integer("round", 0, "Internal: the round a worker belongs to.")

# Flags the parent forwards to its workers, verbatim.
_FORWARDED = (
    "repeats",
    "warmup",
    "seed",
    "learning_rate",
    "reg",
    "num_classes",
    "image_size",
    "three_layer_filters",
    "three_layer_filter_size",
    "three_layer_hidden",
    "three_layer_weight_scale",
    "vgg_filters",
    "vgg_blocks",
    "vgg_hidden",
    "vgg_dropout",
    "vgg_weight_scale",
    "solver_num_train",
    "solver_augment",
    "conv_impl",
    "pool_impl",
    "torch_threads",
    "torch_device",
)


# --------------------------------------------------------------------------------------------
# Configuration


def apply_tiny() -> None:
    """With ``--tiny``, give every size flag that was not set explicitly its tiny value."""
    if not FLAGS.tiny:
        return
    for name, value in TINY.items():
        if not FLAGS[name].present:
            FLAGS[name].value = value


def _ints(values: Iterable[str]) -> tuple[int, ...]:
    return tuple(int(v) for v in values)


def model_config(model: str) -> dict:
    """Constructor keyword arguments shared by the jcnn model and its torch twin."""
    s = FLAGS.image_size
    if model == "three_layer":
        return {
            "input_dim": (3, s, s),
            "num_filters": FLAGS.three_layer_filters,
            "filter_size": FLAGS.three_layer_filter_size,
            "hidden_dim": FLAGS.three_layer_hidden,
            "num_classes": FLAGS.num_classes,
            "weight_scale": FLAGS.three_layer_weight_scale,
            "reg": FLAGS.reg,
        }
    if model == "vgg":
        return {
            "input_dim": (3, s, s),
            "num_filters": _ints(FLAGS.vgg_filters),
            "filter_size": 3,
            "blocks": _ints(FLAGS.vgg_blocks),
            "hidden_dims": _ints(FLAGS.vgg_hidden),
            "num_classes": FLAGS.num_classes,
            "weight_scale": FLAGS.vgg_weight_scale,
            "reg": FLAGS.reg,
            "use_batchnorm": True,
            "dropout": FLAGS.vgg_dropout,
        }
    raise ValueError(f"unknown model {model!r}; expected one of {MODELS}")


# --------------------------------------------------------------------------------------------
# Machine state


def read_loadavg() -> float | None:
    """The 1-minute load average, or None where /proc/loadavg is missing."""
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def wait_for_quiet(
    threshold: float, max_wait: float, poll: float = 5.0, log=None, sleep=time.sleep
) -> dict:
    """Wait until the 1-min load average is below ``threshold`` or ``max_wait`` s have passed."""
    start = time.monotonic()
    first = load = read_loadavg()
    announced = False
    while load is not None and load >= threshold:
        waited = time.monotonic() - start
        if waited >= max_wait:
            break
        if log is not None and not announced:
            log(f"waiting for a quiet machine: load {load:.2f} >= {threshold} (max {max_wait}s)")
            announced = True
        sleep(min(poll, max(max_wait - waited, 0.0)))
        load = read_loadavg()
    return {
        "threshold": threshold,
        "max_wait_s": max_wait,
        "waited_s": round(time.monotonic() - start, 3),
        "load_start": first,
        "load_end": load,
        "quiet": load is None or load < threshold,
    }


def _cpu_jiffies() -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs from /proc/stat."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields[:8]) - idle, sum(fields[:8])


class OthersCpu:
    """Share of the machine's CPU that *other* processes used during a ``with`` block."""

    def __enter__(self):
        self._sys = _cpu_jiffies()
        self._own = os.times()
        return self

    def __exit__(self, *exc):
        end_sys, end_own = _cpu_jiffies(), os.times()
        self.frac = None
        if self._sys is None or end_sys is None:
            return False
        hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        busy = end_sys[0] - self._sys[0]
        total = end_sys[1] - self._sys[1]
        own = (end_own.user + end_own.system - self._own.user - self._own.system) * hz
        if total >= 50:  # fewer jiffies than that is quantisation noise, not a measurement
            self.frac = round(min(max((busy - own) / total, 0.0), 1.0), 4)
        return False


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _cpu_flags() -> list[str]:
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "fma")
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                return [f for f in wanted if f in have]
    except OSError:
        pass
    return []


def machine_info() -> dict:
    """What the parent knows without importing jax or torch."""
    affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    return {
        "python": sys.version.split()[0],
        "platform": sys.platform,
        "cpu_model": _cpu_model(),
        "cpu_flags": _cpu_flags(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(affinity) if affinity is not None else None,
        "versions": {d: _version(d) for d in ("jax", "jaxlib", "optax", "torch", "numpy")},
        "env": {
            k: os.environ.get(k)
            for k in ("XLA_FLAGS", "JAX_PLATFORMS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
        },
    }


# --------------------------------------------------------------------------------------------
# Worker: one (model, batch size, impl) in this process


def make_data(model: str, batch_size: int, seed: int):
    """Fixed-seed float32 images (NCHW) and int labels as numpy arrays."""
    import numpy as np

    cfg = model_config(model)
    rng = np.random.default_rng(seed + 1)
    x = rng.standard_normal((batch_size, *cfg["input_dim"]), dtype=np.float32)
    y = rng.integers(0, cfg["num_classes"], size=(batch_size,), dtype=np.int32)
    return x, y


def _timed_steps(step, sync, repeats: int, warmup: int) -> dict:
    t0 = time.perf_counter()
    sync(step())
    first_call = time.perf_counter() - t0
    for _ in range(warmup):
        sync(step())
    times = []
    with OthersCpu() as others:
        load_before = read_loadavg()
        for _ in range(repeats):
            t0 = time.perf_counter()
            out = sync(step())
            times.append(time.perf_counter() - t0)
    return {
        "first_call_s": first_call,
        "step_s": times,
        "last": out,
        "load_before": load_before,
        "load_after": read_loadavg(),
        "others_cpu_frac": others.frac,
    }


def _jax_platform(model_kwargs: dict) -> dict:
    import jax

    import jcnn
    import jcnn.cpu
    import jcnn.native

    devices = jax.devices()
    return {
        "jax": jax.__version__,
        "jaxlib": importlib.metadata.version("jaxlib"),
        "jcnn": jcnn.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in devices],
        "device_kind": devices[0].device_kind if devices else None,
        "XLA_FLAGS": os.environ.get("XLA_FLAGS"),
        "jcnn_xla_flags": jcnn.XLA_FLAGS_STATUS,
        "jcnn_hugepages": jcnn.cpu.status(),
        "jcnn_native": jcnn.native.status(),
        "GLIBC_TUNABLES": os.environ.get("GLIBC_TUNABLES"),
        "model_kwargs": {k: v for k, v in model_kwargs.items() if k != "dtype"},
    }


def _make_jax_model(model: str, impl: str):
    import jax.numpy as jnp

    from jcnn.models import ThreeLayerConvNet, VGGNet

    cfg = model_config(model)
    layers = "jcnn" if impl in ("solver", "jcnn_xla") else impl
    kwargs = dict(cfg, layers=layers, dtype=jnp.float32)
    for name in ("conv_impl", "pool_impl"):
        if FLAGS[name].value is not None:
            kwargs[name] = FLAGS[name].value
    return (ThreeLayerConvNet if model == "three_layer" else VGGNet)(**kwargs), kwargs


def run_solver_worker(model: str, batch_size: int) -> dict:
    """Two epochs of :class:`jcnn.solver.Solver` on random CIFAR-sized data (see the module
    docs); the second epoch is the measurement."""
    import jax
    import numpy as np

    from jcnn.augment import random_crop_flip
    from jcnn.solver import Solver

    net, kwargs = _make_jax_model(model, "solver")
    cfg = model_config(model)
    rng = np.random.default_rng(FLAGS.seed + 1)
    n_train, n_val = FLAGS.solver_num_train, 1000
    X = rng.standard_normal((n_train + n_val, *cfg["input_dim"]), dtype=np.float32)
    y = rng.integers(0, cfg["num_classes"], size=n_train + n_val).astype(np.int64)
    data = {
        "X_train": X[:n_train],
        "y_train": y[:n_train],
        "X_val": X[n_train:],
        "y_val": y[n_train:],
    }
    marks = []
    solver = Solver(
        net,
        data,
        update_rule="adam",
        optim_config={"learning_rate": FLAGS.learning_rate},
        batch_size=batch_size,
        num_epochs=2,
        num_train_samples=1000,
        verbose=False,
        seed=FLAGS.seed,
        augment=random_crop_flip if FLAGS.solver_augment else None,
        on_epoch_end=lambda solver, epoch: marks.append(time.perf_counter()),
    )
    with OthersCpu() as others:
        start = time.perf_counter()
        solver.train()
    ipe = solver.iterations_per_epoch
    # eval_history "seconds": time into train() when each accuracy check began.
    train_s = (start + solver.eval_history[2]["seconds"]) - marks[1]
    step = train_s / ipe
    return {
        "first_call_s": marks[0] - start,
        "step_s": [step],
        "epoch_s": marks[2] - marks[1],
        "epoch_train_s": train_s,
        "iterations_per_epoch": ipe,
        "first_loss": solver.loss_history[0],
        "last_loss": solver.loss_history[-1],
        "n_params": int(sum(p.size for p in jax.tree_util.tree_leaves(solver.params))),
        "load_before": None,
        "load_after": read_loadavg(),
        "others_cpu_frac": others.frac,
        "platform": {
            **_jax_platform(kwargs),
            "augment": FLAGS.solver_augment,
            "num_train": n_train,
        },
    }


def make_jax_step(model: str, impl: str, batch_size: int):
    """The jcnn/reference training step of ``model`` on fixed data, as a user writes it:
    returns ``(step, sync, carry, losses, model_kwargs, hlo_text)``; ``step()`` runs one
    update in place on ``carry`` (params, state, opt_state, key), ``sync(out)`` waits for it
    and records its loss in ``losses``, ``hlo_text()`` is the compiled step's HLO."""
    import jax
    import jax.numpy as jnp
    import optax

    net, kwargs = _make_jax_model(model, impl)

    # -- the training step, as a user writes it --------------------------------------------
    params, state = net.init(jax.random.PRNGKey(FLAGS.seed))
    optimizer = optax.adam(FLAGS.learning_rate, b1=0.9, b2=0.999, eps=1e-8)
    opt_state = optimizer.init(params)

    def train_step(params, state, opt_state, key, x, y):
        key, subkey = jax.random.split(key)
        (loss, state), grads = jax.value_and_grad(net.loss, has_aux=True)(
            params, state, x, y, key=subkey
        )
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return params, state, opt_state, key, loss

    train_step = jax.jit(train_step, donate_argnums=(0, 1, 2, 3))
    # ----------------------------------------------------------------------------------------

    x_np, y_np = make_data(model, batch_size, FLAGS.seed)
    x, y = jax.device_put(jnp.asarray(x_np)), jax.device_put(jnp.asarray(y_np))
    key = jax.random.PRNGKey(FLAGS.seed + 2)
    carry = [params, state, opt_state, key]
    losses = []

    def step():
        out = train_step(*carry, x, y)
        carry[:] = out[:4]
        return out

    def sync(out):
        jax.block_until_ready(out)
        losses.append(out[4])
        return out

    def hlo_text() -> str:
        return train_step.lower(*carry, x, y).compile().as_text()

    return step, sync, carry, losses, kwargs, hlo_text


def run_jax_worker(model: str, impl: str, batch_size: int) -> dict:
    import jax

    step, sync, carry, losses, kwargs, _ = make_jax_step(model, impl, batch_size)
    result = _timed_steps(step, sync, FLAGS.repeats, FLAGS.warmup)
    result.update(
        first_loss=float(losses[0]),
        last_loss=float(losses[-1]),
        n_params=int(sum(p.size for p in jax.tree_util.tree_leaves(carry[0]))),
        platform=_jax_platform(kwargs),
    )
    return result


def run_torch_worker(model: str, impl: str, batch_size: int) -> dict:
    import torch

    from experiments import torch_models

    if FLAGS.torch_threads > 0:
        torch.set_num_threads(FLAGS.torch_threads)
    device = FLAGS.torch_device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(FLAGS.seed)
    cfg = model_config(model)
    cls = torch_models.ThreeLayerConvNet if model == "three_layer" else torch_models.VGGNet
    net = cls(**cfg).to(device).train()
    optimizer = torch_models.make_adam(net, FLAGS.learning_rate)
    loss_fn = torch.compile(net.loss) if impl == "torch_compile" else net.loss

    x_np, y_np = make_data(model, batch_size, FLAGS.seed)
    x = torch.from_numpy(x_np).to(device)
    y = torch.from_numpy(y_np).long().to(device)
    losses = []

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(x, y)
        loss.backward()
        optimizer.step()
        return loss

    def sync(loss):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        losses.append(loss.detach())
        return loss

    result = _timed_steps(step, sync, FLAGS.repeats, FLAGS.warmup)
    result.update(
        first_loss=float(losses[0]),
        last_loss=float(losses[-1]),
        n_params=int(sum(p.numel() for p in net.parameters())),
        platform={
            "torch": torch.__version__,
            "device": device,
            "device_name": torch.cuda.get_device_name() if device.startswith("cuda") else None,
            "num_threads": torch.get_num_threads(),
            "num_interop_threads": torch.get_num_interop_threads(),
            "mkldnn": torch.backends.mkldnn.is_available(),
            "model_kwargs": cfg,
        },
    )
    return result


def run_worker(model: str, impl: str, batch_size: int) -> dict:
    """Time ``repeats`` steps of one (model, impl, batch size) in this process."""
    if impl in JAX_IMPLS:  # jcnn's workers tune their process, as a training program does
        import jcnn.cpu

        jcnn.cpu.tune()
    if impl == "solver":
        result = run_solver_worker(model, batch_size)
    elif impl in JAX_IMPLS:
        result = run_jax_worker(model, impl, batch_size)
    elif impl in TORCH_IMPLS:
        result = run_torch_worker(model, impl, batch_size)
    else:
        raise ValueError(f"unknown impl {impl!r}; expected one of {IMPLS}")
    result.pop("last", None)
    steps = result["step_s"]
    return {
        "model": model,
        "impl": impl,
        "batch_size": batch_size,
        "round": FLAGS.round,
        "ok": True,
        "repeats": FLAGS.repeats,
        "warmup": FLAGS.warmup,
        "min_s": min(steps) if steps else None,
        "median_s": statistics.median(steps) if steps else None,
        "cpu_count": os.cpu_count(),
        "pid": os.getpid(),
        **result,
        "loss_finite": math.isfinite(result["first_loss"]) and math.isfinite(result["last_loss"]),
    }


def worker_main() -> int:
    if len(FLAGS.models) != 1 or len(FLAGS.impls) != 1 or len(FLAGS.batch_sizes) != 1:
        raise app.UsageError("--worker takes exactly one of --models, --impls, --batch_sizes")
    record = run_worker(FLAGS.models[0], FLAGS.impls[0], int(FLAGS.batch_sizes[0]))
    print(RESULT_PREFIX + json.dumps(record), flush=True)
    return 0


# --------------------------------------------------------------------------------------------
# Parent: spawn workers, interleave, aggregate, report


def _flag_arg(name: str) -> str | None:
    value = FLAGS[name].value
    if value is None:
        return None
    if isinstance(value, list):
        value = ",".join(str(v) for v in value)
    elif isinstance(value, bool):
        return f"--{name}" if value else f"--no{name}"
    return f"--{name}={value}"


def worker_command(model: str, impl: str, batch_size: int, round_: int) -> list[str]:
    args = [
        sys.executable,
        "-m",
        "experiments.benchmark",
        "--worker",
        f"--models={model}",
        f"--impls={impl}",
        f"--batch_sizes={batch_size}",
        f"--round={round_}",
    ]
    args += [a for a in (_flag_arg(n) for n in _FORWARDED) if a is not None]
    return args


def _worker_env(impl: str) -> dict:
    """The parent's environment, with the project root importable (for ``-m experiments``);
    ``jcnn_xla`` workers also get ``JCNN_NATIVE=0``."""
    env = dict(os.environ)
    if impl == "jcnn_xla":
        env["JCNN_NATIVE"] = "0"
    root = str(Path(__file__).resolve().parent.parent)
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = root + (os.pathsep + path if path else "")
    return env


def spawn_worker(model: str, impl: str, batch_size: int, round_: int, timeout: float) -> dict:
    """Run one worker process and return its record (``ok: False`` with the reason on failure)."""
    cmd = worker_command(model, impl, batch_size, round_)
    base = {"model": model, "impl": impl, "batch_size": batch_size, "round": round_}
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, env=_worker_env(impl)
        )
    except subprocess.TimeoutExpired:
        return {**base, "ok": False, "error": f"timed out after {timeout}s"}
    wall = time.perf_counter() - t0
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            record = json.loads(line[len(RESULT_PREFIX) :])
            record["process_wall_s"] = wall
            record["argv"] = cmd[1:]
            return record
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
    return {**base, "ok": False, "returncode": proc.returncode, "error": "\n".join(tail)}


def impl_order(impls: Sequence[str], round_: int, order: str) -> list[str]:
    """The impls of round ``round_`` (1-based): as given, or rotated by one per round."""
    impls = list(impls)
    if order == "rotate" and impls:
        k = (round_ - 1) % len(impls)
        impls = impls[k:] + impls[:k]
    return impls


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


def _platforms(records: Sequence[dict]) -> dict:
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
                f"compiled kernels: {p.get('jcnn_native')}"
            )
        else:
            parts.append(
                f"{impl}: device {p['device']}"
                + (f" ({p['device_name']})" if p.get("device_name") else "")
                + f", {p['num_threads']} threads"
            )
    for model, cfg in meta["models"].items():
        shown = ", ".join(f"{k}={v}" for k, v in cfg.items())
        parts.append(f"{model}: {shown}; batch sizes {meta['batch_sizes']}")
    q = meta["quiet"]
    parts.append(
        f"load (1 min) before timing: {q['load_start']} -> {q['load_end']} after "
        f"{q['waited_s']:.0f}s (threshold {q['threshold']}, quiet: {q['quiet']}); "
        f"max CPU share used by other processes while timing: {meta['others_cpu_frac_max']}"
    )
    parts.append(
        f"float32, one step = forward + backward + Adam; {meta['rounds']} rounds x "
        f"{meta['repeats']} timed steps (+{meta['warmup']} warm-up) per worker"
    )
    return "\n".join(f"- {p}" for p in parts)


def torch_available() -> bool:
    """Whether ``import torch`` can work, without importing it into the parent."""
    try:
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):
        return False


def parent_main() -> int:
    log = _stderr
    models = list(FLAGS.models)
    for m in models:
        if m not in MODELS:
            raise app.UsageError(f"unknown model {m!r}; expected one of {MODELS}")
    impls = list(FLAGS.impls)
    for i in impls:
        if i not in IMPLS:
            raise app.UsageError(f"unknown impl {i!r}; expected one of {IMPLS}")
    skipped = []
    if not torch_available():
        skipped = [i for i in impls if i in TORCH_IMPLS]
        impls = [i for i in impls if i not in TORCH_IMPLS]
        if skipped:
            log(f"torch is not importable: skipping {skipped}")
    batch_sizes = [int(b) for b in FLAGS.batch_sizes]

    quiet = wait_for_quiet(FLAGS.quiet_load, FLAGS.quiet_max_wait, log=log)
    log(f"load {quiet['load_end']} (quiet: {quiet['quiet']}); timing {FLAGS.rounds} rounds")
    quiet_rounds = [quiet]
    records = []
    for rnd in range(1, FLAGS.rounds + 1):
        if rnd > 1 and FLAGS.quiet_each_round:
            quiet_rounds.append(wait_for_quiet(FLAGS.quiet_load, FLAGS.quiet_max_wait, log=log))
        for model in models:
            for bs in batch_sizes:
                for impl in impl_order(impls, rnd, FLAGS.order):
                    rec = spawn_worker(model, impl, bs, rnd, FLAGS.worker_timeout)
                    records.append(rec)
                    if rec.get("ok"):
                        log(
                            f"[round {rnd}/{FLAGS.rounds}] {model} bs={bs} {impl}: "
                            f"median {rec['median_s']:.4f} s/step, first call "
                            f"{rec['first_call_s']:.2f}s, others' CPU {rec['others_cpu_frac']}"
                        )
                    else:
                        last = rec["error"].strip().splitlines()[-3:]
                        log(f"[round {rnd}/{FLAGS.rounds}] {model} bs={bs} {impl}: FAILED")
                        log("\n".join("    " + line for line in last))

    summaries, ratios = summarise(records)
    others = [r["others_cpu_frac"] for r in records if r.get("others_cpu_frac") is not None]
    meta = {
        "command": sys.argv,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine_info(),
        "platforms": _platforms(records),
        "quiet": quiet,
        "quiet_rounds": quiet_rounds,
        "others_cpu_frac_max": max(others, default=None),
        "models": {m: model_config(m) for m in models},
        "batch_sizes": batch_sizes,
        "impls": impls,
        "skipped_impls": skipped,
        "rounds": FLAGS.rounds,
        "repeats": FLAGS.repeats,
        "warmup": FLAGS.warmup,
        "order": FLAGS.order,
        "seed": FLAGS.seed,
        "learning_rate": FLAGS.learning_rate,
    }
    print(format_header(meta))
    print()
    print(format_tables(summaries, ratios))
    sys.stdout.flush()
    if FLAGS.json_out:
        path = Path(FLAGS.json_out)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {"meta": meta, "summary": summaries, "ratios": ratios, "runs": records}
        path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
        log(f"wrote {path}")
    failed = [r for r in records if not r.get("ok")]
    return 1 if failed else 0


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def main(argv: Sequence[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    apply_tiny()
    if FLAGS.repeats < 1 or FLAGS.rounds < 1 or FLAGS.warmup < 0:
        raise app.UsageError("--repeats and --rounds must be >= 1, --warmup >= 0")
    if FLAGS.worker:
        return worker_main()
    return parent_main()


if __name__ == "__main__":
    app.run(main)
