"""``import jcnn`` leaves the process's memory alone; :func:`jcnn.cpu.tune` backs the malloc
heap with huge pages only where it is safe, once. Each case that looks at the process runs in
a fresh interpreter (malloc settings are per process, and this one's are not ours to change).
"""

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

import jcnn.cpu
from jcnn import _hugepages

ROOT = Path(__file__).resolve().parents[1]
MiB = 2**20
LINUX = sys.platform.startswith("linux")
LINUX_GLIBC = LINUX and platform.libc_ver()[0] == "glibc"
needs_proc = pytest.mark.skipif(not LINUX, reason="reads /proc/self")
needs_thp_madvise = pytest.mark.skipif(
    not LINUX_GLIBC or _hugepages.thp_mode() != "madvise",
    reason="needs Linux, glibc and transparent huge pages in madvise mode",
)

HELPERS = """
import json

def proc_status(key):  # bytes
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024

def heap_flags():
    flags, current = [], None
    for line in open("/proc/self/smaps"):
        head = line.split()
        if "-" in head[0] and len(head) >= 5:
            current = line.rstrip().endswith("[heap]")
        elif current and line.startswith("VmFlags:"):
            flags.append(head[1:])
    return flags
"""


def _run(body: str, **env_extra: str) -> dict:
    """Run ``body`` (after :data:`HELPERS`) in a fresh interpreter; it prints one JSON line."""
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "JCNN_HUGEPAGES")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(env_extra)
    out = subprocess.run(
        [sys.executable, "-c", HELPERS + body],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def _huge_heap(result) -> bool:
    return any("hg" in flags for flags in result["heap_flags"])


@needs_proc
def test_import_jcnn_reserves_no_more_address_space_than_import_jax():
    result = _run("""
import jax
after_jax = proc_status("VmSize")
import jcnn, jcnn.models
import jcnn.cpu
print(json.dumps({"after_jax": after_jax, "after_jcnn": proc_status("VmSize"),
                  "status": jcnn.cpu.status(), "heap_flags": heap_flags()}))
""")
    assert result["after_jcnn"] - result["after_jax"] < 200 * MiB
    assert result["status"] == "not called"
    assert not _huge_heap(result)


@needs_proc
def test_memory_freed_after_import_jcnn_goes_back_to_the_system():
    result = _run("""
import numpy as np
import jcnn, jcnn.models
before = proc_status("VmRSS")
big = np.ones(256 * 2**20 // 8)  # touched: every page resident
allocated = proc_status("VmRSS")
del big
print(json.dumps({"before": before, "allocated": allocated, "freed": proc_status("VmRSS")}))
""")
    assert result["allocated"] - result["before"] > 200 * MiB  # the array was resident
    assert result["freed"] - result["before"] < 64 * MiB


TUNE_TWICE = """
import numpy as np
import jcnn.cpu
before = jcnn.cpu.status()
size_before = proc_status("VmSize")
first = jcnn.cpu.tune()
size_first = proc_status("VmSize")
second = jcnn.cpu.tune()
size_second = proc_status("VmSize")
big = np.ones(64 * 2**20 // 8)  # 64 MiB: above glibc's largest mmap threshold
print(json.dumps({"before": before, "first": first, "second": second,
                  "status": jcnn.cpu.status(), "size_before": size_before,
                  "size_first": size_first,
                  "size_second": size_second, "heap_flags": heap_flags(),
                  "sum": float(big.sum())}))
"""


@needs_thp_madvise
def test_tune_backs_the_heap_with_huge_pages_once_and_memory_still_works():
    result = _run(TUNE_TWICE)
    assert result["before"] == "not called"
    assert result["first"] == result["second"] == result["status"] == "applied"
    assert _huge_heap(result)
    assert result["size_first"] - result["size_before"] >= _hugepages.reserve_bytes() - 64 * MiB
    assert result["size_second"] == result["size_first"]  # the second call reserved nothing
    assert result["sum"] == 64 * MiB // 8  # a large allocation after the change is usable


@needs_proc
def test_opt_out_makes_tune_a_no_op_that_says_so():
    result = _run(TUNE_TWICE, JCNN_HUGEPAGES="0")
    assert result["first"] == result["second"] == result["status"] == "opted-out"
    assert not _huge_heap(result)
    assert result["size_first"] - result["size_before"] < 200 * MiB  # no heap reserved


def test_tune_respects_a_glibc_tunable_already_set():
    if not LINUX_GLIBC:
        pytest.skip("GLIBC_TUNABLES only matters with glibc")
    result = _run(TUNE_TWICE, GLIBC_TUNABLES="glibc.malloc.hugetlb=1")
    assert result["first"] == result["second"] == "tunable"


def test_tune_runs_the_setup_once_and_status_reports_it(monkeypatch):
    calls = []
    monkeypatch.setattr(jcnn.cpu, "_status", None)  # as in a process that never called it
    monkeypatch.setattr(_hugepages, "apply_hugepages", lambda: calls.append(1) or "applied")
    assert jcnn.cpu.status() == "not called"
    assert jcnn.cpu.tune() == "applied"
    assert jcnn.cpu.tune() == "applied"
    assert jcnn.cpu.status() == "applied"
    assert calls == [1]
