"""Transparent huge pages for the memory XLA computes in, set up when jcnn is imported.

On the CPU a training step is bound by memory traffic as much as by arithmetic: XLA's
transposes and batch reductions stride across tensors of several MB, and with 4 KiB pages
they spend much of their time on TLB misses. Backing the heap with 2 MiB transparent huge
pages made the VGGNet step about 15–20 % faster on our machine (README, Performance).

Most Linux systems run THP in ``madvise`` mode: only memory a program marks with
``madvise(MADV_HUGEPAGE)`` gets huge pages, and glibc's ``malloc`` marks nothing unless the
process was started with ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``. Since a library cannot
set that before its process starts, importing jcnn does the nearest thing at run time:

- ``mallopt``: one malloc arena, no ``mmap`` for large blocks, trimming only above 2 GiB — so
  every allocation, XLA's buffers included, comes from the ordinary heap;
- grows that heap once by :data:`RESERVE_BYTES` (address space only: pages are committed
  when first touched) and marks it ``MADV_HUGEPAGE``.

The cost: memory freed by the process is kept for reuse rather than handed back to the
system (up to 2 GiB), and malloc-heavy multi-threaded code shares one arena. It is done only
on Linux with glibc and THP in ``madvise`` mode, not when ``GLIBC_TUNABLES`` already asks
for huge pages (the better way: set it before Python starts), and never with
``JCNN_HUGEPAGES=0``.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys
from pathlib import Path

OPT_OUT = "JCNN_HUGEPAGES"
RESERVE_BYTES = 1 << 30
THP_MODE_FILE = Path("/sys/kernel/mm/transparent_hugepage/enabled")

_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
_MADV_HUGEPAGE = 14
_HUGE_PAGE = 2 << 20
_INT_MAX = 2**31 - 1


def thp_mode(path: Path = THP_MODE_FILE) -> str | None:
    """The kernel's THP mode (``'always'``, ``'madvise'``, ``'never'``) or None if unknown."""
    try:
        text = path.read_text()
    except OSError:
        return None
    for word in text.split():
        if word.startswith("[") and word.endswith("]"):
            return word[1:-1]
    return None


def _heap_range() -> tuple[int, int] | None:
    for line in Path("/proc/self/maps").read_text().splitlines():
        if line.endswith("[heap]"):
            start, end = (int(v, 16) for v in line.split()[0].split("-"))
            return start, end
    return None


def apply_hugepages() -> str:
    """Back the malloc heap with huge pages if it is safe and useful; returns what happened:
    ``'applied'``, ``'opted-out'``, ``'tunable'`` (GLIBC_TUNABLES already does it),
    ``'thp-always'`` (nothing to do), ``'thp-unavailable'`` or ``'unsupported-platform'``."""
    if os.environ.get(OPT_OUT, "1") == "0":
        return "opted-out"
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return "unsupported-platform"
    if "glibc.malloc.hugetlb" in os.environ.get("GLIBC_TUNABLES", ""):
        return "tunable"
    mode = thp_mode()
    if mode == "always":
        return "thp-always"
    if mode != "madvise":
        return "thp-unavailable"
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.malloc.restype = ctypes.c_void_p
        libc.malloc.argtypes = [ctypes.c_size_t]
        libc.free.argtypes = [ctypes.c_void_p]
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        settings = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _INT_MAX))
        if not all(libc.mallopt(option, value) == 1 for option, value in settings):
            return "unsupported-platform"
        block = libc.malloc(RESERVE_BYTES)  # grows the heap; freed, it stays for reuse
        if not block:
            return "thp-unavailable"
        libc.free(block)
        heap = _heap_range()
        if heap is None:
            return "thp-unavailable"
        start = (heap[0] + _HUGE_PAGE - 1) & ~(_HUGE_PAGE - 1)
        if libc.madvise(start, heap[1] - start, _MADV_HUGEPAGE) != 0:
            return "thp-unavailable"
    except (OSError, AttributeError, ValueError):
        return "unsupported-platform"
    return "applied"
