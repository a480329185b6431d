"""Convolutions on oneDNN's primitives (``onednn_conv.cc``), for channels-last activations
in float32 or bfloat16: the forward pass, the data gradient and the weight gradient.

oneDNN comes from PyPI (``onednn-cpu-gomp`` for the library, ``onednn-devel-cpu-gomp`` for its
headers; jcnn depends on both on x86-64 Linux). Each primitive runs on one thread and the
batch is split in two halves over the calling thread and XLA's intra-op pool, so oneDNN's
OpenMP threads never compete with XLA's for the cores. bfloat16 operands are multiplied on
the CPU's bfloat16 units where it has them (AVX512-BF16, AMX) with float32 accumulation; the
weight gradient's two halves are added in float32 before the one rounding to bfloat16.

Each function returns what its ``fallback`` (XLA's convolution) would, and is that fallback
wherever the kernels cannot run: other dtypes, other backends, several devices, no compiler,
oneDNN not installed (status ``'no-onednn'``), ``JCNN_NATIVE=0`` or ``JCNN_ONEDNN=0``.
:func:`jcnn.native.status` with ``'onednn'`` says which.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jcnn.native._library import Requirements, Unavailable

LIBRARY_DIST = "onednn-cpu-gomp"
HEADERS_DIST = "onednn-devel-cpu-gomp"
OPT_OUT = "JCNN_ONEDNN"
DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16))
TARGETS = {
    "jcnn_conv_forward": "JcnnConvForward",
    "jcnn_conv_backward_data": "JcnnConvBackwardData",
    "jcnn_conv_backward_weights": "JcnnConvBackwardWeights",
}


def _installed_file(dist: str, suffix: str) -> Path:
    """The file of distribution ``dist`` whose path ends with ``suffix``."""
    try:
        files = importlib.metadata.distribution(dist).files or []
    except importlib.metadata.PackageNotFoundError:
        raise Unavailable("no-onednn") from None
    for file in files:
        if file.as_posix().endswith(suffix):
            return Path(str(file.locate())).resolve()
    raise Unavailable("no-onednn")


def requirements() -> Requirements:
    """oneDNN's include directory and shared library, from the installed wheels.

    Raises:
        Unavailable: ``'no-onednn'`` if either distribution (or its files) is missing.
    """
    header = _installed_file(HEADERS_DIST, "/oneapi/dnnl/dnnl.hpp")
    shared = _installed_file(LIBRARY_DIST, "/libdnnl.so.3")
    version = importlib.metadata.version(LIBRARY_DIST)
    return Requirements(
        compile_flags=("-fopenmp", f"-I{header.parents[2]}"),
        link_flags=(str(shared), f"-Wl,-rpath,{shared.parent}"),
        key=f"{LIBRARY_DIST} {version} {shared}",
    )


def eligible(*operands: jax.Array) -> bool:
    """True if the kernels take these operands: all float32, or all bfloat16, none empty."""
    dtypes = {jnp.dtype(a.dtype) for a in operands}
    return len(dtypes) == 1 and dtypes.pop() in DTYPES and all(a.size for a in operands)


def _call(target: str, fallback: Callable, shape, dtype, a, b, stride: int, pad: int):
    from jcnn import native  # the package imports this module

    if not eligible(a, b):
        return fallback(a, b)
    out = jax.ShapeDtypeStruct(tuple(shape), dtype)
    return native.run(target, fallback, out, a, b, stride=np.int64(stride), pad=np.int64(pad))


def conv_forward(x, w, *, stride: int, pad: int, fallback: Callable) -> jax.Array:
    """``out[n, i, j, f] = Σ_{c,p,q} x_pad[n, s·i + p, s·j + q, c] · w[f, c, p, q]``.

    Args:
        x: ``(N, H, W, C)``.
        w: ``(F, C, KH, KW)``, x's dtype.
        stride: the filter's step; it must tile the padded input (jcnn's callers check).
        pad: zeros added on each side of H and W.
        fallback: ``fallback(x, w)``, the same convolution in XLA.

    Returns:
        ``(N, H', W', F)`` with ``H' = (H + 2·pad − KH) / stride + 1``, likewise W'.
    """
    n, h, wd, _ = x.shape
    f, _, kh, kw = w.shape
    shape = (n, (h + 2 * pad - kh) // stride + 1, (wd + 2 * pad - kw) // stride + 1, f)
    return _call("jcnn_conv_forward", fallback, shape, x.dtype, x, w, stride, pad)


def conv_backward_data(dout, w, x_shape, *, stride: int, pad: int, fallback: Callable):
    """dx: the transpose of :func:`conv_forward` in x, applied to ``dout``.

    Args:
        dout: ``(N, H', W', F)``.
        w: ``(F, C, KH, KW)``, dout's dtype.
        x_shape: ``(N, H, W, C)``, the forward's input shape.
        stride: the forward's stride.
        pad: the forward's padding.
        fallback: ``fallback(dout, w)``, the same in XLA.

    Returns:
        dx of shape ``x_shape``, dout's dtype.
    """
    return _call("jcnn_conv_backward_data", fallback, x_shape, dout.dtype, dout, w, stride, pad)


def conv_backward_weights(dout, x, w_shape, *, stride: int, pad: int, fallback: Callable):
    """``dw[f, c, p, q] = Σ_{n,i,j} x_pad[n, s·i + p, s·j + q, c] · dout[n, i, j, f]``.

    Args:
        dout: ``(N, H', W', F)``.
        x: ``(N, H, W, C)``, dout's dtype.
        w_shape: ``(F, C, KH, KW)``.
        stride: the forward's stride.
        pad: the forward's padding.
        fallback: ``fallback(dout, x)``, the same in XLA.

    Returns:
        dw of shape ``w_shape``, dout's dtype (summed in float32).
    """
    return _call("jcnn_conv_backward_weights", fallback, w_shape, dout.dtype, dout, x, stride, pad)
