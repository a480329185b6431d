"""What the benchmark records about the machine: load, other processes' CPU use, the CPU,
library versions, and each worker's platform (JAX backend and devices, torch threads).

The parent process describes the machine without importing JAX or torch
(:func:`machine_info`); a worker adds its platform (:func:`jax_platform`,
:func:`torch_platform`).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import sys
import time
from pathlib import Path


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


def cpu_model() -> str | None:
    """The CPU's model name from ``/proc/cpuinfo`` (None where there is none)."""
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
        "cpu_model": cpu_model(),
        "cpu_flags": _cpu_flags(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(affinity) if affinity is not None else None,
        "versions": {d: _version(d) for d in ("jax", "jaxlib", "optax", "torch", "numpy")},
        "env": {
            k: os.environ.get(k)
            for k in ("XLA_FLAGS", "JAX_PLATFORMS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
        },
    }


def jax_platform(model_kwargs: dict) -> dict:
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
        "jcnn_onednn": jcnn.native.status("onednn"),
        "GLIBC_TUNABLES": os.environ.get("GLIBC_TUNABLES"),
        "model_kwargs": {k: v for k, v in model_kwargs.items() if k != "dtype"},
    }


def torch_available() -> bool:
    """Whether ``import torch`` can work, without importing it into the parent."""
    try:
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):
        return False


def torch_platform(device: str, model_kwargs: dict) -> dict:
    """A torch worker's platform: versions, device, threads (imports torch)."""
    import torch

    return {
        "torch": torch.__version__,
        "device": device,
        "device_name": torch.cuda.get_device_name() if device.startswith("cuda") else None,
        "num_threads": torch.get_num_threads(),
        "num_interop_threads": torch.get_num_interop_threads(),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "model_kwargs": model_kwargs,
    }
