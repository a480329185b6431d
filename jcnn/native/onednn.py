"""Convolutions on oneDNN's primitives (``onednn_conv.cc``), for channels-last activations
in float32 or bfloat16: the forward pass, the data gradient and the weight gradient.

oneDNN comes from PyPI (``onednn-cpu-gomp`` for the library, ``onednn-devel-cpu-gomp`` for its
headers; jcnn depends on both on x86-64 Linux). Each primitive runs on one thread and the
batch is split in two halves over the calling thread and XLA's intra-op pool, so oneDNN's
OpenMP threads never compete with XLA's for the cores. bfloat16 operands are multiplied on
the CPU's bfloat16 units where it has them (AVX512-BF16, AMX) with float32 accumulation; the
weight gradient's two halves are added in float32 before the one rounding to bfloat16.

:class:`Convolutions` binds the three directions to XLA twins given by the caller
(:mod:`jcnn.layers.conv`), as :class:`jcnn.native.Kernel` primitives whose derivative rules
are each other: every direction returns what its twin would, and is that twin wherever the
kernels cannot run (other dtypes, other backends, several devices, no compiler, oneDNN not
installed: status ``'no-onednn'``, ``JCNN_NATIVE=0`` or ``JCNN_ONEDNN=0``, and programs
lowered for :mod:`jax.export`). :func:`jcnn.native.status` with ``'onednn'`` says which.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.interpreters import ad

from jcnn.native._library import Requirements, Unavailable
from jcnn.native._partition import BatchSplit
from jcnn.native._primitive import Kernel

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


def _forward_shape(x, w, *, stride: int, pad: int):
    n, h, wd, _ = x.shape
    f, _, kh, kw = w.shape
    shape = (n, (h + 2 * pad - kh) // stride + 1, (wd + 2 * pad - kw) // stride + 1, f)
    return jax.ShapeDtypeStruct(shape, x.dtype)


def _data_shape(dout, w, *, stride: int, pad: int, x_shape: tuple[int, ...]):
    return jax.ShapeDtypeStruct(x_shape, dout.dtype)


def _weights_shape(dout, x, *, stride: int, pad: int, w_shape: tuple[int, ...]):
    return jax.ShapeDtypeStruct(w_shape, dout.dtype)


def _rows_of_x(params: dict, rows: int) -> dict:
    """``backward_data``'s parameters for a block of ``rows`` rows of the batch."""
    return {**params, "x_shape": (rows, *params["x_shape"][1:])}


def _core_shape(operand, batch_dims: int) -> tuple[int, ...]:
    aval = operand.aval if ad.is_undefined_primal(operand) else operand
    return tuple(aval.shape[batch_dims:])


class Convolutions:
    """The three directions of a channels-last convolution as kernels with derivative rules.

    With ``F(x, w)`` the forward convolution, ``D(g, w)`` its transpose in x (the data
    gradient) and ``W(g, x)`` its transpose in w (the weight gradient), each is bilinear, so
    each one's derivative is a sum of two calls of itself, and each one's transpose in
    either operand is one of the others:

    - ``F``: tangent ``F(ẋ, w) + F(x, ẇ)``; transposes ``x̄ = D(ȳ, w)``, ``w̄ = W(ȳ, x)``.
    - ``D``: tangent ``D(ġ, w) + D(g, ẇ)``; transposes ``ḡ = F(x̄, w)``, ``w̄ = W(g, x̄)``.
    - ``W``: tangent ``W(ġ, x) + W(g, ẋ)``; transposes ``ḡ = F(x, w̄)``, ``x̄ = D(g, w̄)``.

    (``⟨D(g, w), v⟩ = ⟨g, F(v, w)⟩`` and ``⟨W(g, x), v⟩ = ⟨g, F(x, v)⟩`` define D and W.) So
    grad-of-grad, Hessian-vector products and ``jax.hessian`` of a model stay on oneDNN.

    Args:
        forward: XLA's ``forward(x, w, *, stride, pad)`` on ``(N, H, W, C)``, ``(F, C, KH,
            KW)``.
        backward_data: XLA's ``backward_data(dout, w, *, stride, pad, x_shape)``.
        backward_weights: XLA's ``backward_weights(dout, x, *, stride, pad, w_shape)``.
    """

    def __init__(self, forward: Callable, backward_data: Callable, backward_weights: Callable):
        from jcnn import native  # the package imports this module

        library = native.LIBRARIES["onednn"]
        attributes = {"stride": np.int64, "pad": np.int64}
        self.forward = Kernel(
            "jcnn_conv_forward",
            library,
            forward,
            _forward_shape,
            attributes,
            split=BatchSplit(operands=(0, None), output=0),
        )
        self.backward_data = Kernel(
            "jcnn_conv_backward_data",
            library,
            backward_data,
            _data_shape,
            attributes,
            split=BatchSplit(operands=(0, None), output=0, localize=_rows_of_x),
        )
        self.backward_weights = Kernel(
            "jcnn_conv_backward_weights",
            library,
            backward_weights,
            _weights_shape,
            attributes,
            split=BatchSplit(operands=(0, 0), output=None),
        )
        for kernel in (self.forward, self.backward_data, self.backward_weights):
            kernel.defjvp(_bilinear_jvp(kernel))
        self.forward.deftranspose(_zero_cotangent(self._transpose_forward))
        self.backward_data.deftranspose(_zero_cotangent(self._transpose_backward_data))
        self.backward_weights.deftranspose(_zero_cotangent(self._transpose_backward_weights))

    def conv_forward(self, x, w, *, stride: int, pad: int) -> jax.Array:
        """``out[n, i, j, f] = Σ_{c,p,q} x_pad[n, s·i + p, s·j + q, c] · w[f, c, p, q]``.

        Args:
            x: ``(N, H, W, C)``.
            w: ``(F, C, KH, KW)``, x's dtype.
            stride: the filter's step; it must tile the padded input (jcnn's callers check).
            pad: zeros added on each side of H and W.

        Returns:
            ``(N, H', W', F)`` with ``H' = (H + 2·pad − KH) / stride + 1``, likewise W'.
        """
        if not eligible(x, w):
            return self.forward.fallback(x, w, stride=stride, pad=pad)
        return self.forward(x, w, stride=stride, pad=pad)

    def conv_backward_data(self, dout, w, x_shape, *, stride: int, pad: int) -> jax.Array:
        """dx: the transpose of :meth:`conv_forward` in x, applied to ``dout``.

        Args:
            dout: ``(N, H', W', F)``.
            w: ``(F, C, KH, KW)``, dout's dtype.
            x_shape: ``(N, H, W, C)``, the forward's input shape.
            stride: the forward's stride.
            pad: the forward's padding.

        Returns:
            dx of shape ``x_shape``, dout's dtype.
        """
        params = {"stride": stride, "pad": pad, "x_shape": tuple(x_shape)}
        if not eligible(dout, w):
            return self.backward_data.fallback(dout, w, **params)
        return self.backward_data(dout, w, **params)

    def conv_backward_weights(self, dout, x, w_shape, *, stride: int, pad: int) -> jax.Array:
        """``dw[f, c, p, q] = Σ_{n,i,j} x_pad[n, s·i + p, s·j + q, c] · dout[n, i, j, f]``.

        Args:
            dout: ``(N, H', W', F)``.
            x: ``(N, H, W, C)``, dout's dtype.
            w_shape: ``(F, C, KH, KW)``.
            stride: the forward's stride.
            pad: the forward's padding.

        Returns:
            dw of shape ``w_shape``, dout's dtype (summed in float32).
        """
        params = {"stride": stride, "pad": pad, "w_shape": tuple(w_shape)}
        if not eligible(dout, x):
            return self.backward_weights.fallback(dout, x, **params)
        return self.backward_weights(dout, x, **params)

    # Transposes: exactly one operand is undefined (each kernel is linear in each operand).

    def _transpose_forward(self, ct, x, w, *, batch_dims: int, stride: int, pad: int):
        if ad.is_undefined_primal(x):
            x_shape = _core_shape(x, batch_dims)
            dx = self.backward_data.bind(
                ct, w, batch_dims=batch_dims, stride=stride, pad=pad, x_shape=x_shape
            )
            return dx, None
        w_shape = _core_shape(w, batch_dims)
        dw = self.backward_weights.bind(
            ct, x, batch_dims=batch_dims, stride=stride, pad=pad, w_shape=w_shape
        )
        return None, dw

    def _transpose_backward_data(self, ct, dout, w, *, batch_dims, stride, pad, x_shape):
        if ad.is_undefined_primal(dout):
            return self.forward.bind(ct, w, batch_dims=batch_dims, stride=stride, pad=pad), None
        w_shape = _core_shape(w, batch_dims)
        dw = self.backward_weights.bind(
            dout, ct, batch_dims=batch_dims, stride=stride, pad=pad, w_shape=w_shape
        )
        return None, dw

    def _transpose_backward_weights(self, ct, dout, x, *, batch_dims, stride, pad, w_shape):
        if ad.is_undefined_primal(dout):
            return self.forward.bind(x, ct, batch_dims=batch_dims, stride=stride, pad=pad), None
        x_shape = _core_shape(x, batch_dims)
        dx = self.backward_data.bind(
            dout, ct, batch_dims=batch_dims, stride=stride, pad=pad, x_shape=x_shape
        )
        return None, dx


def _zero_cotangent(rule: Callable) -> Callable:
    """``rule``, answering a symbolic zero cotangent with zeros for the undefined operand."""

    def transpose(ct, *operands, **params):
        if type(ct) is ad.Zero:
            return tuple(ad.Zero(a.aval) if ad.is_undefined_primal(a) else None for a in operands)
        return rule(ct, *operands, **params)

    return transpose


def _bilinear_jvp(kernel: Kernel) -> Callable:
    """``d f(a, b) = f(ȧ, b) + f(a, ḃ)`` for a kernel bilinear in its two operands."""

    def rule(primals, tangents, **params):
        (a, b), (da, db) = primals, tangents
        out = kernel.bind(a, b, **params)
        terms = []
        if type(da) is not ad.Zero:
            terms.append(kernel.bind(da, b, **params))
        if type(db) is not ad.Zero:
            terms.append(kernel.bind(a, db, **params))
        if not terms:
            return out, ad.Zero.from_primal_value(out)
        return out, terms[0] if len(terms) == 1 else terms[0] + terms[1]

    return rule
