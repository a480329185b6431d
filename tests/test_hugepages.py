"""The helpers of :func:`jcnn.cpu.tune` (its effects on a process: tests/test_cpu.py)."""

import pytest

from jcnn import _hugepages


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
