"""Compiled CPU kernels for what XLA's CPU code generation does badly, built on first use.

Two libraries:

- ``kernels``: :func:`to_channel_major` (``transpose.cc``), the transpose
  ``(N, H, W, C) -> (C, H, W, N)`` that XLA's CPU convolution wants for a channels-last
  weight gradient and emits as an untiled strided loop (the kernel copies it block by block
  on both cores); and ``jcnn_batchnorm_relu_forward`` / ``_backward`` (``batchnorm_relu.cc``):
  training-mode batchnorm → relu on features-last input, each way in two cache-blocked passes
  (:func:`jcnn.layers.batchnorm_relu.batchnorm_relu_forward` and its backward, where the math is).
- ``onednn``: the three directions of a channels-last convolution on oneDNN's primitives, in
  float32 or bfloat16 (``onednn_conv.cc``; :mod:`jcnn.native.onednn`, used by
  :func:`jcnn.layers.conv_forward_xla` and its gradients). It needs oneDNN's PyPI wheels.

Each library is compiled the first time one of its kernels is needed, with the system's C++
compiler (``$CXX``, else ``c++`` or ``g++``; ``-O3 -march=native``) against the XLA FFI
headers that ship with jaxlib, and registered with :func:`jax.ffi.register_ffi_target`. It is
cached in ``$JCNN_CACHE_DIR`` (default ``~/.cache/jcnn``) under a name that hashes the
sources, the jaxlib version, the compiler and this CPU's features, and written atomically, so
processes that build it at the same time are safe. Where it cannot be built (no compiler,
another operating system, oneDNN missing) or ``JCNN_NATIVE=0`` (``JCNN_ONEDNN=0`` for the
convolutions only), every kernel's caller gets its XLA twin instead (the :class:`Kernel`'s
``fallback``): the same values at XLA's speed. :func:`status` says which.

Each kernel is a JAX primitive of its own (:class:`Kernel`), so it composes like any jax
function: under ``jit``, ``vmap`` (a kernel takes leading batch dimensions), ``grad``,
grad-of-grad, ``jvp`` of ``grad`` (Hessian-vector products, ``jax.hessian``),
``jax.checkpoint`` and ``jax_debug_nans``. Its derivative rules are written out where the
kernel's math allows (the convolutions' three directions are each other's derivatives and
transposes, :class:`jcnn.native.onednn.Convolutions`; the transpose is its own transpose) and
are the derivatives of the XLA twin elsewhere (batchnorm → relu). The kernel runs on the CPU
of a program on one device; in a program partitioned over several devices or processes (data
parallelism, :mod:`jcnn.parallel`), the kernels that work row by row (the convolutions, the
transpose) run on every device's block of the batch (:mod:`jcnn.native._partition`), while
the batchnorm kernels, whose statistics are over the whole batch, give way to their XLA twins,
which XLA partitions. Other backends, and every program lowered for :mod:`jax.export`, get the
XLA twins, so an exported program runs anywhere without jcnn.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
from jax.interpreters import ad

from jcnn.native import onednn
from jcnn.native._library import CACHE_DIR_VARIABLE, OPT_OUT, Library
from jcnn.native._library import cache_dir as cache_dir
from jcnn.native._library import compiler as _compiler  # noqa: F401 (tests use it)
from jcnn.native._partition import BatchSplit
from jcnn.native._primitive import Kernel

HERE = Path(__file__).parent
LIBRARIES = {
    "kernels": Library(
        name="kernels",
        sources=(HERE / "transpose.cc", HERE / "batchnorm_relu.cc"),
        headers=(HERE / "parallel.h",),
        targets={
            "jcnn_to_channel_major": "JcnnToChannelMajor",
            "jcnn_batchnorm_relu_forward": "JcnnBatchnormReluForward",
            "jcnn_batchnorm_relu_backward": "JcnnBatchnormReluBackward",
        },
    ),
    "onednn": Library(
        name="onednn",
        sources=(HERE / "onednn_conv.cc",),
        headers=(HERE / "parallel.h",),
        targets=onednn.TARGETS,
        requirements=onednn.requirements,
        opt_out=onednn.OPT_OUT,
    ),
}
SOURCES = tuple(s for lib in LIBRARIES.values() for s in lib.sources)
HEADERS = tuple(sorted({h for lib in LIBRARIES.values() for h in lib.headers}))
# FFI target name -> the library that holds it.
TARGETS = {target: lib for lib in LIBRARIES.values() for target in lib.targets}
TARGET = "jcnn_to_channel_major"
PERMUTATION = (3, 1, 2, 0)
__all__ = [
    "CACHE_DIR_VARIABLE", "OPT_OUT", "Kernel", "available", "cache_dir", "load", "status",
    "to_channel_major",
]  # fmt: skip


def _library(name: str) -> Library:
    if name not in LIBRARIES:
        raise ValueError(f"library must be one of {sorted(LIBRARIES)}, got {name!r}")
    return LIBRARIES[name]


def status(library: str = "kernels") -> str:
    """The state of one kernel library in this process.

    Args:
        library: ``'kernels'`` (the transpose and batchnorm → relu) or ``'onednn'`` (the
            convolutions).

    Returns:
        ``'loaded'``, ``'not-built-yet'`` (until first needed), ``'opted-out'``,
        ``'no-compiler'``, ``'unsupported-platform'``, ``'no-onednn'`` (``'onednn'`` only:
        its wheels are not installed) or ``'failed: <why>'``.

    Raises:
        ValueError: naming ``library`` if it is not one of the two.
    """
    return _library(library).status()


def load(library: str = "kernels") -> bool:
    """Build (or find in the cache) and register one library, once per process.

    Args:
        library: ``'kernels'`` or ``'onednn'``.

    Returns:
        True if the library is loaded and its FFI targets registered; False if opted out,
        on another platform than Linux, with no compiler, without oneDNN (``'onednn'``), or
        after a failure (see :func:`status`). A failed build is not raised: it warns
        (``RuntimeWarning``) once.

    Raises:
        ValueError: naming ``library`` if it is not one of the two.
    """
    return _library(library).load()


def _transpose(x: jax.Array) -> jax.Array:
    return jnp.transpose(x, PERMUTATION)


def _out_shape(x) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(tuple(x.shape[i] for i in PERMUTATION), x.dtype)


def available(library: str = "kernels") -> bool:
    """Whether one library's kernels can be used in this process: :func:`load`'s answer
    (it builds or finds the library first), under the name a caller asking uses.

    Args:
        library: ``'kernels'`` or ``'onednn'``.

    Returns:
        ``True`` if :func:`load` succeeds, else ``False``.

    Raises:
        ValueError: naming ``library`` if it is not one of the two.
    """
    return load(library)


# The permutation is its own inverse, so the kernel is its own transpose.
_TO_CHANNEL_MAJOR = Kernel(
    TARGET,
    LIBRARIES["kernels"],
    _transpose,
    _out_shape,
    split=BatchSplit(operands=(0,), output=PERMUTATION.index(0)),
)


def _to_channel_major_jvp(primals, tangents, **params):
    out = _TO_CHANNEL_MAJOR.bind(*primals, **params)
    if type(tangents[0]) is ad.Zero:
        return out, ad.Zero.from_primal_value(out)
    return out, _TO_CHANNEL_MAJOR.bind(*tangents, **params)


def _to_channel_major_transpose(ct, x, **params):
    if type(ct) is ad.Zero:
        return (ad.Zero(x.aval),)
    return (_TO_CHANNEL_MAJOR.bind(ct, **params),)


_TO_CHANNEL_MAJOR.defjvp(_to_channel_major_jvp)
_TO_CHANNEL_MAJOR.deftranspose(_to_channel_major_transpose)


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
    return _TO_CHANNEL_MAJOR(x)
