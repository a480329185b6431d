"""Transparent huge pages for the memory XLA computes in: the work of :func:`jcnn.cpu.tune`.

On the CPU a training step is bound by memory traffic as much as by arithmetic: XLA's
transposes and batch reductions stride across tensors of several MB, and with 4 KiB pages
they spend much of their time on TLB misses. Backing the heap with 2 MiB transparent huge
pages made the VGGNet step about 15–20 % faster on our machine (docs/performance.md).

Most Linux systems run THP in ``madvise`` mode: only memory a program marks with
``madvise(MADV_HUGEPAGE)`` gets huge pages, and glibc's ``malloc`` marks nothing unless the
process was started with ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``. Since a library cannot
set that before its process starts, :func:`apply_hugepages` (called once, by
:func:`jcnn.cpu.tune`, never on import) does the nearest thing at run time:

- ``mallopt``: one malloc arena and no ``mmap`` for large blocks, so every allocation, XLA's
  buffers and the training data included, comes from the ordinary heap;
- grows that heap once by :func:`reserve_bytes` (half the machine's memory, at most 16 GiB:
  address space only, pages are committed when first touched), marks that stretch
  ``MADV_HUGEPAGE`` and frees it for malloc to hand out, keeping a block (``_SENTINEL``)
  allocated above it so that the free stretch is never given back (trimmed) to the system.

The cost: memory freed inside that stretch is kept for reuse rather than handed back to the
system, and malloc-heavy multi-threaded code shares one arena. It is done only
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
MAX_RESERVE_BYTES = 16 << 30
THP_MODE_FILE = Path("/sys/kernel/mm/transparent_hugepage/enabled")

_M_MMAP_MAX, _M_ARENA_MAX = -4, -8
_DEFAULT_MMAP_MAX = 65536
_MADV_HUGEPAGE = 14
_HUGE_PAGE = 2 << 20
# Kept allocated above the reserved stretch for the process's life (address space; one page
# is touched). Larger than any free chunk malloc may hold from before (blocks above 32 MiB
# were always mmap'ed), so it is carved from the top of the heap, above the stretch.
_SENTINEL = 64 << 20


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


def reserve_bytes() -> int:
    """Half the physical memory, at most :data:`MAX_RESERVE_BYTES`, in whole huge pages."""
    try:
        ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        ram = 2 << 30
    return max(min(ram // 2, MAX_RESERVE_BYTES) // _HUGE_PAGE, 1) * _HUGE_PAGE


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
        if libc.mallopt(_M_MMAP_MAX, 0) != 1:
            return "unsupported-platform"
        if not _reserve(libc, reserve_bytes()):
            libc.mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)  # leave malloc as it was
            return "thp-unavailable"
        libc.mallopt(_M_ARENA_MAX, 1)  # threads' own arenas would live outside the stretch
    except (OSError, AttributeError, ValueError):
        return "unsupported-platform"
    return "applied"


def _reserve(libc, size: int) -> bool:
    """Grow the heap by ``size``, mark it for huge pages and free it for malloc to reuse."""
    block = libc.malloc(size)
    if not block or not _in_heap(block):  # NULL, or glibc fell back to mmap
        if block:
            libc.free(block)
        return False
    sentinel = libc.malloc(_SENTINEL)
    if not sentinel or sentinel < block:  # the freed block would be the top: trimmed away
        libc.free(block)
        return False
    start = (block + _HUGE_PAGE - 1) & ~(_HUGE_PAGE - 1)
    end = (block + size) & ~(_HUGE_PAGE - 1)
    advised = libc.madvise(start, end - start, _MADV_HUGEPAGE) == 0
    libc.free(block)
    return advised


def _in_heap(address: int) -> bool:
    for line in Path("/proc/self/maps").read_text().splitlines():
        if line.endswith("[heap]"):
            lo, hi = (int(v, 16) for v in line.split()[0].split("-"))
            if lo <= address < hi:
                return True
    return False
