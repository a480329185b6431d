"""jcnn backs the malloc heap with huge pages only where it is safe; each case runs in a fresh
interpreter (the settings are per process)."""

import json
import os
import platform
import subprocess
import sys

import pytest

from jcnn import _hugepages

PROBE = """
import json
import numpy as np
import jcnn

def heap_flags():
    flags, current = [], None
    for line in open("/proc/self/smaps"):
        head = line.split()
        if "-" in head[0] and len(head) >= 5:
            current = line.rstrip().endswith("[heap]")
        elif current and line.startswith("VmFlags:"):
            flags.append(head[1:])
    return flags

big = np.ones(64 * 2**20 // 8)  # 64 MiB: above glibc's largest mmap threshold
total = float(big.sum())
print(json.dumps({"status": jcnn.HUGEPAGES_STATUS, "heap_flags": heap_flags(), "sum": total}))
"""

LINUX_GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


def _probe(env_extra):
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "JCNN_HUGEPAGES")}
    env.update(env_extra)
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def _huge_heap(result) -> bool:
    return any("hg" in flags for flags in result["heap_flags"])


@pytest.mark.skipif(
    not LINUX_GLIBC or _hugepages.thp_mode() != "madvise",
    reason="needs Linux, glibc and transparent huge pages in madvise mode",
)
def test_heap_is_marked_for_huge_pages_on_import_and_memory_still_works():
    result = _probe({})
    assert result["status"] == "applied"
    assert _huge_heap(result)
    assert result["sum"] == 64 * 2**20 // 8  # a large allocation after the change is usable


def test_opt_out_leaves_malloc_alone():
    result = _probe({"JCNN_HUGEPAGES": "0"})
    assert result["status"] == "opted-out"
    assert not _huge_heap(result)


def test_glibc_tunable_already_set_is_respected():
    if not LINUX_GLIBC:
        pytest.skip("GLIBC_TUNABLES only matters with glibc")
    result = _probe({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"})
    assert result["status"] == "tunable"


@pytest.mark.parametrize(
    ("text", "mode"),
    [
        ("always [madvise] never\n", "madvise"),
        ("[always] madvise never\n", "always"),
        ("always madvise [never]\n", "never"),
        ("garbage\n", None),
    ],
)
def test_thp_mode_reads_the_bracketed_choice(tmp_path, text, mode):
    path = tmp_path / "enabled"
    path.write_text(text)
    assert _hugepages.thp_mode(path) == mode


def test_thp_mode_is_none_without_the_sysfs_file(tmp_path):
    assert _hugepages.thp_mode(tmp_path / "missing") is None


class FakeLibc:
    """Records calls; ``malloc`` returns the addresses it is given, in order."""

    def __init__(self, addresses):
        self.addresses, self.freed, self.advised = list(addresses), [], []

    def malloc(self, size):
        return self.addresses.pop(0)

    def free(self, address):
        self.freed.append(address)

    def madvise(self, start, length, advice):
        self.advised.append((start, length, advice))
        return 0


def test_reserve_gives_up_when_malloc_fails(monkeypatch):
    libc = FakeLibc([0])
    assert _hugepages._reserve(libc, 8 << 20) is False
    assert libc.advised == [] and libc.freed == []


def test_reserve_gives_up_when_the_block_is_not_on_the_heap(monkeypatch):
    monkeypatch.setattr(_hugepages, "_in_heap", lambda address: False)  # an mmap fallback
    libc = FakeLibc([1 << 40])
    assert _hugepages._reserve(libc, 8 << 20) is False
    assert libc.freed == [1 << 40] and libc.advised == []


def test_reserve_gives_up_when_the_sentinel_lands_below_the_block(monkeypatch):
    monkeypatch.setattr(_hugepages, "_in_heap", lambda address: True)
    libc = FakeLibc([1 << 40, 1 << 30])
    assert _hugepages._reserve(libc, 8 << 20) is False
    assert libc.freed == [1 << 40] and libc.advised == []


def test_reserve_marks_whole_huge_pages_inside_the_block_then_frees_it(monkeypatch):
    monkeypatch.setattr(_hugepages, "_in_heap", lambda address: True)
    block = (1 << 40) + 16  # malloc's header makes blocks unaligned
    libc = FakeLibc([block, block + (8 << 20) + 64])
    assert _hugepages._reserve(libc, 8 << 20) is True
    start, length, advice = libc.advised[0]
    assert start == (1 << 40) + (2 << 20) and start + length <= block + (8 << 20)
    assert length == 6 << 20 and advice == 14
    assert libc.freed == [block]
