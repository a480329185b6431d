"""One compiled library of FFI kernels: built on first use, cached, loaded, registered.

A :class:`Library` compiles its sources with the system's C++ compiler (``$CXX``, else ``c++``
or ``g++``; ``-O3 -march=native``) against the XLA FFI headers that ship with jaxlib, caches
the result in ``$JCNN_CACHE_DIR`` (default ``~/.cache/jcnn``) under a name that hashes the
sources, the jaxlib version, the compiler, this CPU's features and any extra inputs, writes it
atomically, and registers its targets with
:func:`jax.ffi.register_ffi_target`. Any failure leaves the library unavailable, and the
callers on XLA's code.

A cached library is verified before it is loaded: its file name ends with the SHA-256 of its
contents (``kernels-<key>-<sha>.so``), written once the compiled file is on disk (``fsync``,
then an atomic rename, then the directory's ``fsync``). Loading a truncated or overwritten
shared library can kill the process (a bus error inside ``dlopen``), so a file whose contents
do not match its name is deleted, with one warning, and the library rebuilt. A build killed
mid-way leaves a ``.tmp`` file; those older than twice the build's time limit are deleted.

Processes that start at once (pytest-xdist workers, the processes of one run) build a library
once: one that finds no cached file takes an advisory lock on ``<name>-<key>.lock`` in the
cache and looks again before building, so the others wait for the builder (at most the
build's time limit) and load its file; a cached file is loaded without the lock. Where no
lock can be taken (a read-only cache, something other than a file in the way) each process
goes on as if it held it: the atomic rename keeps concurrent builds safe, only slower.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import hashlib
import importlib.metadata
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import jax

OPT_OUT = "JCNN_NATIVE"
CACHE_DIR_VARIABLE = "JCNN_CACHE_DIR"
BUILD_TIMEOUT_S = 300  # a compile that takes longer has failed


class Unavailable(Exception):
    """Raised by a library's ``requirements`` when something it needs is missing; the
    message is the library's status (e.g. ``'no-onednn'``)."""


@dataclass(frozen=True)
class Requirements:
    """What a library needs beyond the FFI headers: compiler and linker flags, and text
    that identifies those dependencies in the cache key (e.g. their versions)."""

    compile_flags: tuple[str, ...] = ()
    link_flags: tuple[str, ...] = ()
    key: str = ""


def cache_dir() -> Path:
    """``$JCNN_CACHE_DIR`` if set (and non-empty), else ``~/.cache/jcnn``."""
    return Path(os.environ.get(CACHE_DIR_VARIABLE) or Path.home() / ".cache" / "jcnn")


def compiler() -> str | None:
    """``$CXX``, else ``c++`` or ``g++`` on the ``PATH``, else None."""
    return os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")


def _cpu_features() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return platform.processor()


@dataclass
class Library:
    """FFI targets compiled from ``sources`` into ``<name>-<hash>.so``.

    Attributes:
        name: the cached file's prefix, and the name warnings use.
        sources: the ``.cc`` files, compiled together.
        headers: files the sources include (part of the cache key).
        targets: FFI target name -> the handler's symbol in the library.
        requirements: returns the extra :class:`Requirements`, or raises
            :class:`Unavailable` with the status to report (checked before compiling).
        opt_out: an environment variable that, set to ``0``, turns this library off
            (besides ``JCNN_NATIVE=0``, which turns off every library).
    """

    name: str
    sources: tuple[Path, ...]
    headers: tuple[Path, ...]
    targets: dict[str, str]
    requirements: Callable[[], Requirements] = Requirements
    opt_out: str | None = None
    _status: str | None = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def status(self) -> str:
        """``'loaded'``, ``'not-built-yet'``, ``'opted-out'``, ``'no-compiler'``,
        ``'unsupported-platform'``, a missing requirement (e.g. ``'no-onednn'``) or
        ``'failed: <why>'``."""
        return self._status or "not-built-yet"

    def load(self) -> bool:
        """Build (or find in the cache) and register the library, once per process; True if
        it is available. A failed build warns (``RuntimeWarning``) once; it is not raised."""
        with self._lock:
            if self._status is None:
                self._status = self._load()
                if self._status.startswith("failed"):
                    warnings.warn(
                        f"jcnn could not build its CPU kernels ({self.name}, {self._status}); "
                        f"using XLA's code instead (slower). {OPT_OUT}=0 silences this.",
                        RuntimeWarning,
                        stacklevel=4,
                    )
            return self._status == "loaded"

    def _load(self) -> str:
        for variable in (OPT_OUT, self.opt_out):
            if variable and os.environ.get(variable, "1") == "0":
                return "opted-out"
        if platform.system() != "Linux":
            return "unsupported-platform"
        cxx = compiler()
        if cxx is None:
            return "no-compiler"
        try:
            needs = self.requirements()
        except Unavailable as missing:
            return str(missing)
        try:
            stem = self._stem(cxx, needs)
            _remove_abandoned_builds(self.name)
            path = self._cached(stem)
            if path is None:  # build it, unless a process building it now gets there first
                with _build_lock(stem):
                    path = self._cached(stem) or self._build(cxx, needs, stem)
            library = ctypes.cdll.LoadLibrary(str(path))
            for target, symbol in self.targets.items():
                handler = jax.ffi.pycapsule(getattr(library, symbol))
                jax.ffi.register_ffi_target(target, handler, platform="cpu")
        except Exception as error:  # any failure means: fall back to XLA
            first_line = (str(error).strip().splitlines() or [repr(error)])[0]
            return f"failed: {first_line}"
        return "loaded"

    def _stem(self, cxx: str, needs: Requirements) -> str:
        """``<name>-<hash of everything the build depends on>``."""
        version = subprocess.run(
            [cxx, "--version"], capture_output=True, text=True, check=True
        ).stdout
        key = "\n".join(
            (
                *(path.read_text() for path in self.sources + self.headers),
                importlib.metadata.version("jaxlib"),
                version,
                _cpu_features(),
                needs.key,
            )
        )
        return f"{self.name}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"

    def _cached(self, stem: str) -> Path | None:
        """A cached build of ``stem`` whose contents match the checksum in its name; a
        damaged one is deleted with a warning (None: build it)."""
        for path in sorted(cache_dir().glob(f"{stem}-*.so")):
            if path.name == f"{stem}-{_file_digest(path)}.so":
                return path
            warnings.warn(
                f"jcnn's cached CPU kernels {path} are damaged (their checksum does not match); "
                "rebuilding them.",
                RuntimeWarning,
                stacklevel=5,
            )
            path.unlink(missing_ok=True)
        return None

    def _build(self, cxx: str, needs: Requirements, stem: str) -> Path:
        """Compile the sources into the cache atomically (a temporary file, flushed to disk,
        then renamed to its checksummed name); returns the cached file."""
        directory = cache_dir()
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=stem, suffix=".tmp")
        os.close(fd)
        command = [
            cxx, "-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-w",
            f"-I{jax.ffi.include_dir()}", *needs.compile_flags, *map(str, self.sources),
            "-o", tmp, *needs.link_flags,
        ]  # fmt: skip
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
            if done.returncode != 0:
                raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
            _fsync(tmp)
            target = directory / f"{stem}-{_file_digest(Path(tmp))}.so"
            os.replace(tmp, target)
            _fsync(directory)
            return target
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


@contextlib.contextmanager
def _build_lock(stem: str) -> Iterator[None]:
    """Hold the cache's advisory lock for library ``stem`` (``fcntl.flock`` on
    ``<stem>.lock``), waiting at most ``BUILD_TIMEOUT_S`` for a process building it; without a
    lockable file, or after the wait, go on unlocked (a concurrent build is safe, only slower)."""
    try:
        cache_dir().mkdir(parents=True, exist_ok=True)
        fd = os.open(
            cache_dir() / f"{stem}.lock",
            os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK,
            0o644,
        )
    except OSError:  # a read-only cache, a folder or a link in the way
        yield
        return
    try:
        deadline = time.monotonic() + BUILD_TIMEOUT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:  # another process is building
                if time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            except OSError:  # a file system without locks
                break
        yield
    finally:
        os.close(fd)  # releases the lock


def _remove_abandoned_builds(name: str) -> None:
    """Delete the cache's temporary files of library ``name`` that no build can still be
    writing: a build killed mid-way (SIGKILL, power loss) leaves its ``.tmp`` file behind,
    while a live one (another process may be building) is younger than the build's time
    limit. Other files are left alone (the cache folder may be shared)."""
    now = time.time()
    for path in cache_dir().glob(f"{name}-*.tmp"):
        with contextlib.suppress(OSError):  # gone already, or not ours to delete
            if now - path.stat().st_mtime > 2 * BUILD_TIMEOUT_S:
                path.unlink()


def _file_digest(path: Path) -> str:
    """The first 16 hex digits of the SHA-256 of a file's contents."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()[:16]


def _fsync(path: str | Path) -> None:
    """Flush a file's (or a directory's entries') writes to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
