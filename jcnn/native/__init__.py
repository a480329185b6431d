"""Compiled CPU kernels for what XLA's CPU code generation does badly, built on first use.

- :func:`to_channel_major` (``transpose.cc``): the transpose ``(N, H, W, C) -> (C, H, W, N)``.
  XLA's CPU convolution wants the activation channel-major for a channels-last weight
  gradient (:func:`jcnn.layers.conv.conv_dw_xla`), and XLA emits that transpose as an
  untiled strided loop; the kernel copies it block by block on both cores instead.
- ``jcnn_batchnorm_relu_forward`` / ``_backward`` (``batchnorm_relu.cc``): training-mode
  batchnorm → relu on features-last input, each way in two cache-blocked passes over the
  activations (:func:`jcnn.layers.batchnorm.batchnorm_relu_forward` and its backward, where
  the math is; they call :func:`run`).

All kernels are one library, compiled the first time one is needed with the system's C++
compiler (``$CXX``, else ``c++`` or ``g++``; ``-O3 -march=native``) against the XLA FFI
headers that ship with jaxlib, and registered with :func:`jax.ffi.register_ffi_target`. It is
cached in ``$JCNN_CACHE_DIR`` (default ``~/.cache/jcnn``) under a name that hashes the
sources, the jaxlib version, the compiler and this CPU's features, and written atomically, so
processes that build it at the same time are safe. Where it cannot be built (no compiler,
another operating system) or ``JCNN_NATIVE=0``, every kernel's caller gets its XLA twin
instead (:func:`run`'s ``fallback``): the same values at XLA's speed. :func:`status` says
which.

The kernels compose like any jax function: under ``jit``, ``vmap`` (a kernel takes leading
batch dimensions) and ``jax_debug_nans``; on other backends (``lax.platform_dependent``: the
kernel is the CPU's branch, the XLA twin everyone else's). They are used only in a process
with a single device; with several (data parallelism, :mod:`jcnn.parallel`), the XLA twins
run, which XLA partitions like the rest (docs/performance.md).
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
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
from jax import lax

OPT_OUT = "JCNN_NATIVE"
CACHE_DIR_VARIABLE = "JCNN_CACHE_DIR"
HERE = Path(__file__).parent
SOURCES = (HERE / "transpose.cc", HERE / "batchnorm_relu.cc")
HEADERS = (HERE / "parallel.h",)
# FFI target name -> the handler's symbol in the library.
TARGETS = {
    "jcnn_to_channel_major": "JcnnToChannelMajor",
    "jcnn_batchnorm_relu_forward": "JcnnBatchnormReluForward",
    "jcnn_batchnorm_relu_backward": "JcnnBatchnormReluBackward",
}
TARGET = "jcnn_to_channel_major"
PERMUTATION = (3, 1, 2, 0)

_lock = threading.Lock()
_status: str | None = None


def status() -> str:
    """``'loaded'``, ``'not-built-yet'``, ``'opted-out'``, ``'no-compiler'``,
    ``'unsupported-platform'`` or ``'failed: <why>'``.

    Returns:
        The state of the kernel library in this process, one of the strings above
        (``'not-built-yet'`` until :func:`load` has run).
    """
    return _status or "not-built-yet"


def cache_dir() -> Path:
    """Where the compiled library is cached.

    Returns:
        ``$JCNN_CACHE_DIR`` if set (and non-empty), else ``~/.cache/jcnn``, as a
        :class:`pathlib.Path` (not created here).
    """
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
            *(path.read_text() for path in SOURCES + HEADERS),
            importlib.metadata.version("jaxlib"),
            version,
            _cpu_features(),
        )
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return cache_dir() / f"kernels-{digest}.so"


def _build(compiler: str, target: Path) -> None:
    """Compile :data:`SOURCES` into one library, ``target``, atomically (a temporary file,
    then a rename)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=target.stem, suffix=".tmp")
    os.close(fd)
    command = [
        compiler, "-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-w",
        f"-I{jax.ffi.include_dir()}", *map(str, SOURCES), "-o", tmp,
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
    is available. A failed build warns once and leaves :func:`to_channel_major` on XLA.

    Returns:
        True if the library is loaded and its FFI targets registered; False if opted out,
        on another platform than Linux, with no compiler, or after a failure (see
        :func:`status`). A failed build is not raised: it warns (``RuntimeWarning``) once.
    """
    global _status
    with _lock:
        if _status is None:
            _status = _load()
            if _status.startswith("failed"):
                warnings.warn(
                    f"jcnn could not build its CPU kernels ({_status}); using XLA's "
                    f"code instead (slower). {OPT_OUT}=0 silences this.",
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
        for target, symbol in TARGETS.items():
            handler = jax.ffi.pycapsule(getattr(library, symbol))
            jax.ffi.register_ffi_target(target, handler, platform="cpu")
    except Exception as error:  # any failure means: fall back to XLA
        first_line = (str(error).strip().splitlines() or [repr(error)])[0]
        return f"failed: {first_line}"
    return "loaded"


def _transpose(x: jax.Array) -> jax.Array:
    return jnp.transpose(x, PERMUTATION)


def _out_shape(x) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(tuple(x.shape[i] for i in PERMUTATION), x.dtype)


def _single_device() -> bool:
    """The kernel is used only where nothing can be partitioned: XLA would gather a sharded
    operand of a custom call onto every device (``jax.experimental.custom_partitioning``
    avoids that, but it also turns off ``jax_debug_nans``'s checks of later calls)."""
    return jax.process_count() == 1 and jax.device_count() == 1


def available() -> bool:
    """True where the kernels can be used in this process: built or cached, and a single
    device (see :func:`_single_device`).

    Returns:
        ``True`` if this process has one device and :func:`load` succeeds, else ``False``
        (with several devices nothing is built).
    """
    return _single_device() and load()


def run(target: str, fallback: Callable, out_shapes, *args: jax.Array, **attributes):
    """``target``'s kernel on the CPU, ``fallback(*args)`` on other backends or where the
    kernels are not available. Both must give the same ``out_shapes`` (one
    :class:`jax.ShapeDtypeStruct` or a sequence). Under ``vmap`` the kernel gets the batch
    as leading dimensions of every operand.

    Args:
        target: the FFI target, a key of ``TARGETS`` (e.g. ``'jcnn_to_channel_major'``).
        fallback: the XLA twin, called as ``fallback(*args)`` (without ``attributes``).
        out_shapes: the output's :class:`jax.ShapeDtypeStruct`, or a sequence of them.
        *args: the operands, arrays of the shapes the kernel expects.
        **attributes: the kernel's FFI attributes (e.g. ``eps=np.float64(...)``).

    Returns:
        The output(s) of the shapes and dtypes ``out_shapes`` describes.

    Raises:
        ValueError: naming ``target`` if it is not one of ``TARGETS``.
    """
    if target not in TARGETS:
        raise ValueError(f"target must be one of {sorted(TARGETS)}, got {target!r}")
    if not available():
        return fallback(*args)

    def kernel(*operands):
        call = jax.ffi.ffi_call(target, out_shapes, vmap_method="broadcast_all")
        return call(*operands, **attributes)

    return lax.platform_dependent(*args, cpu=kernel, default=fallback)


def to_channel_major(x: jax.Array) -> jax.Array:
    """``(N, H, W, C) -> (C, H, W, N)``, i.e. ``jnp.transpose(x, (3, 1, 2, 0))``; on the CPU
    by the compiled kernel when it is available (see the module docs), else by XLA.

    Args:
        x: an array ``(N, H, W, C)``; dtypes of 2, 4 or 8 bytes go through the kernel, others
            through ``jnp.transpose``.

    Returns:
        ``(C, H, W, N)``, of the dtype of ``x``.

    Raises:
        ValueError: naming ``x`` if it is not rank 4.
    """
    if getattr(x, "ndim", None) != 4:
        raise ValueError(f"x must be (N, H, W, C), got shape {getattr(x, 'shape', None)}")
    if jnp.dtype(x.dtype).itemsize not in (2, 4, 8):
        return _transpose(x)
    return run(TARGET, _transpose, _out_shape(x), x)
