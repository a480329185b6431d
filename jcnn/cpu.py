"""Opt-in tuning of this process's memory for fast CPU training: :func:`tune`.

``import jcnn`` changes nothing in how the process allocates memory; a program, benchmark or
notebook that trains on the CPU asks for it in one line, once, early::

    import jcnn.cpu; jcnn.cpu.tune()

:func:`status` says what happened. The work is done by :mod:`jcnn._hugepages`.
"""

from __future__ import annotations

import threading

from jcnn import _hugepages

NOT_CALLED = "not called"

_lock = threading.Lock()
_status: str | None = None


def tune() -> str:
    """Back the malloc heap with transparent huge pages, for the rest of this process.

    On the CPU a training step is bound by memory traffic as much as by arithmetic, and with
    4 KiB pages XLA's transposes and batch reductions spend much of their time on TLB misses;
    with the heap on 2 MiB huge pages the VGGNet step was about 15–20 % faster on our machine
    (docs/performance.md). What it changes in the process, for good (there is no undo):

    - ``mallopt(M_MMAP_MAX, 0)``: malloc no longer serves large blocks with ``mmap``, so every
      allocation (XLA's buffers, NumPy arrays, the training data) comes from the heap;
    - ``mallopt(M_ARENA_MAX, 1)``: one malloc arena shared by all threads;
    - the heap grows once by :func:`jcnn._hugepages.reserve_bytes` (half the machine's
      memory, at most 16 GiB: address space, so ``VmSize`` grows by that much; pages are
      committed only when first touched), marked ``madvise(MADV_HUGEPAGE)`` and freed for
      malloc to hand out, with a block kept allocated above it (64 MiB of address space) so
      that the stretch is never trimmed, i.e. given back to the system.

    The cost: memory freed inside that stretch is kept by the process for reuse rather than
    returned to the system (a large array, once freed, still counts in the process's
    resident size), and malloc-heavy multi-threaded code contends for the one arena. Memory
    allocated before the call stays where it is, so call it at the start of the program,
    before loading data or running JAX.

    It does nothing unless the process runs on Linux with glibc and the kernel's THP mode is
    ``madvise`` (with ``always`` there is nothing to do), nor when ``GLIBC_TUNABLES`` already
    asks for ``glibc.malloc.hugetlb`` (the cleaner way: set that before Python starts), nor
    with the environment variable ``JCNN_HUGEPAGES=0``. Only the first call acts: later calls
    (from any thread) change nothing and return the first call's status.

    Returns:
        What happened: ``'applied'``; ``'opted-out'`` (``JCNN_HUGEPAGES=0``); ``'tunable'``
        (``GLIBC_TUNABLES`` already does it); ``'thp-always'`` (the kernel already does it);
        ``'thp-unavailable'`` (THP off or unknown, or the heap could not be reserved; malloc
        is left as it was); or ``'unsupported-platform'``. :func:`status` returns it again.
    """
    global _status
    with _lock:
        if _status is None:
            _status = _hugepages.apply_hugepages()
        return _status


def status() -> str:
    """What :func:`tune` did in this process.

    Returns:
        Its return value, or ``'not called'`` before the first call.
    """
    return NOT_CALLED if _status is None else _status
