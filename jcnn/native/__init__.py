"""A compiled CPU kernel for what XLA's CPU code generation does badly, built on first use.

One so far, :func:`to_channel_major`: the transpose ``(N, H, W, C) -> (C, H, W, N)``. XLA's
CPU convolution wants the activation channel-major for a channels-last weight gradient
(:func:`jcnn.layers.conv.conv_dw_xla`), and XLA emits that transpose as an untiled strided
loop; ``transpose.cc`` copies it block by block on both cores instead (README, Performance).

The kernel is compiled the first time it is needed, with the system's C++ compiler (``$CXX``,
else ``c++`` or ``g++``; ``-O3 -march=native``) against the XLA FFI headers that ship with
jaxlib, and registered with :func:`jax.ffi.register_ffi_target`. The library is cached in
``$JCNN_CACHE_DIR`` (default ``~/.cache/jcnn``) under a name that hashes the source, the
jaxlib version, the compiler and this CPU's features, and written atomically, so processes
that build it at the same time are safe. Where it cannot be built (no compiler, another
operating system) or ``JCNN_NATIVE=0``, :func:`to_channel_major` is ``jnp.transpose``: the
same values at XLA's speed. :func:`status` says which.

It composes like any jax function: under ``jit``, ``vmap`` (the kernel takes leading batch
dimensions) and ``jax_debug_nans``; on other backends (``lax.platform_dependent``: the
kernel is the CPU's branch, ``jnp.transpose`` everyone else's). It is used only in a
process with a single device; with several (data parallelism, :mod:`jcnn.parallel`),
:func:`to_channel_major` is ``jnp.transpose``, which XLA partitions like the rest.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.metadata
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
from jax import lax

OPT_OUT = "JCNN_NATIVE"
CACHE_DIR_VARIABLE = "JCNN_CACHE_DIR"
SOURCE = Path(__file__).with_name("transpose.cc")
TARGET = "jcnn_to_channel_major"
SYMBOL = "JcnnToChannelMajor"
PERMUTATION = (3, 1, 2, 0)

_lock = threading.Lock()
_status: str | None = None


def status() -> str:
    """``'loaded'``, ``'not-built-yet'``, ``'opted-out'``, ``'no-compiler'``,
    ``'unsupported-platform'`` or ``'failed: <why>'``."""
    return _status or "not-built-yet"


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_DIR_VARIABLE) or Path.home() / ".cache" / "jcnn")


def _compiler() -> str | None:
    return os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")


def _cpu_features() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return platform.processor()


def _library_path(compiler: str) -> Path:
    version = subprocess.run(
        [compiler, "--version"], capture_output=True, text=True, check=True
    ).stdout
    key = "\n".join(
        (
            SOURCE.read_text(),
            importlib.metadata.version("jaxlib"),
            version,
            _cpu_features(),
        )
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return cache_dir() / f"transpose-{digest}.so"


def _build(compiler: str, target: Path) -> None:
    """Compile :data:`SOURCE` to ``target``, atomically (a temporary file, then a rename)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=target.stem, suffix=".tmp")
    os.close(fd)
    command = [
        compiler, "-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-w",
        f"-I{jax.ffi.include_dir()}", str(SOURCE), "-o", tmp,
    ]  # fmt: skip
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load() -> bool:
    """Build (or find in the cache) and register the kernel, once per process; True if it
    is available. A failed build warns once and leaves :func:`to_channel_major` on XLA."""
    global _status
    with _lock:
        if _status is None:
            _status = _load()
            if _status.startswith("failed"):
                warnings.warn(
                    f"jcnn could not build its CPU transpose kernel ({_status}); using XLA's "
                    f"transpose instead (slower). {OPT_OUT}=0 silences this.",
                    RuntimeWarning,
                    stacklevel=3,
                )
        return _status == "loaded"


def _load() -> str:
    if os.environ.get(OPT_OUT, "1") == "0":
        return "opted-out"
    if platform.system() != "Linux":
        return "unsupported-platform"
    compiler = _compiler()
    if compiler is None:
        return "no-compiler"
    try:
        path = _library_path(compiler)
        if not path.exists():
            _build(compiler, path)
        library = ctypes.cdll.LoadLibrary(str(path))
        handler = jax.ffi.pycapsule(getattr(library, SYMBOL))
        jax.ffi.register_ffi_target(TARGET, handler, platform="cpu")
    except Exception as error:  # any failure means: fall back to XLA
        first_line = (str(error).strip().splitlines() or [repr(error)])[0]
        return f"failed: {first_line}"
    return "loaded"


def _transpose(x: jax.Array) -> jax.Array:
    return jnp.transpose(x, PERMUTATION)


def _out_shape(x) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(tuple(x.shape[i] for i in PERMUTATION), x.dtype)


def _kernel(x: jax.Array) -> jax.Array:
    # Under vmap the kernel gets the batch as leading dimensions and transposes each entry.
    return jax.ffi.ffi_call(TARGET, _out_shape(x), vmap_method="broadcast_all")(x)


def _kernel_on_cpu(x: jax.Array) -> jax.Array:
    return lax.platform_dependent(x, cpu=_kernel, default=_transpose)


def _single_device() -> bool:
    """The kernel is used only where nothing can be partitioned: XLA would gather a sharded
    operand of a custom call onto every device (``jax.experimental.custom_partitioning``
    avoids that, but it also turns off ``jax_debug_nans``'s checks of later calls)."""
    return jax.process_count() == 1 and jax.device_count() == 1


def to_channel_major(x: jax.Array) -> jax.Array:
    """``(N, H, W, C) -> (C, H, W, N)``, i.e. ``jnp.transpose(x, (3, 1, 2, 0))``; on the CPU
    by the compiled kernel when it is available (see the module docs), else by XLA."""
    if getattr(x, "ndim", None) != 4:
        raise ValueError(f"x must be (N, H, W, C), got shape {getattr(x, 'shape', None)}")
    if jnp.dtype(x.dtype).itemsize not in (2, 4, 8) or not _single_device() or not load():
        return _transpose(x)
    return _kernel_on_cpu(x)
