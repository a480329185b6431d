"""A compiled kernel as a JAX primitive, so that every transformation passes through it.

A :class:`Kernel` binds one FFI target to a primitive of its own with:

- an abstract evaluation (the output shapes, from the caller's ``out_shapes``);
- two lowerings: on the CPU, where the kernel's library is loaded, the FFI call in a program
  of one device (a ``jit`` on one device, a ``shard_map`` body); in a program partitioned
  over several devices, the FFI call on every device's rows for a kernel with a
  :class:`~jcnn.native._partition.BatchSplit`; else (other backends, the library
  unavailable, a kernel that does not split, every program lowered for :mod:`jax.export`)
  the kernel's XLA twin, ``fallback``. An exported program therefore holds no jcnn custom
  call and runs wherever XLA does;
- a batching rule: ``vmap`` adds a leading dimension to every operand (unbatched ones are
  broadcast), which the kernels take as a batch of independent problems; the twin is
  ``vmap``-ped as often (``batch_dims``);
- derivative rules given by the caller: :meth:`Kernel.defjvp` (forward mode, which JAX
  linearises and transposes for reverse mode) and, for kernels linear in an operand,
  :meth:`Kernel.deftranspose`; or :meth:`Kernel.defjvp_by_fallback`, where the tangent is the
  derivative of the XLA twin and the primal output still comes from the kernel.

The primitive's parameters are the kernel's static arguments (stride, padding, shapes, eps:
hashable Python values) plus ``batch_dims``; ``attributes`` names those passed on to the FFI
handler and the NumPy type each is sent as.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

from jcnn.native._library import Library
from jcnn.native._partition import BatchSplit, needs_devices, partitioned, per_device

Shapes = Callable[..., Any]  # (*operand ShapeDtypeStructs, **params) -> out struct(s)


def _for_export(ctx) -> bool:
    parameters = getattr(ctx.module_context, "lowering_parameters", None)
    return bool(getattr(parameters, "for_export", False))


class Kernel:
    """One FFI target of a :class:`~jcnn.native._library.Library` as a JAX primitive.

    Args:
        target: the FFI target's name (also the primitive's).
        library: the library that holds it.
        fallback: the XLA twin, ``fallback(*operands, **params)``, returning what the kernel
            does (one array, or a tuple when ``out_shapes`` gives several).
        out_shapes: ``out_shapes(*operands, **params)`` on the operands' shapes and dtypes
            (without vmap's leading dimensions): a :class:`jax.ShapeDtypeStruct` or a tuple.
        attributes: param name -> the NumPy scalar type it is passed to the handler as.
        multiple_results: whether the kernel returns a tuple.
        split: for a kernel that works row by row, how it splits over a sharded batch
            (:class:`~jcnn.native._partition.BatchSplit`); without one, a partitioned
            program runs the XLA twin.
    """

    def __init__(
        self,
        target: str,
        library: Library,
        fallback: Callable,
        out_shapes: Shapes,
        attributes: Mapping[str, type] | None = None,
        *,
        multiple_results: bool = False,
        split: BatchSplit | None = None,
    ):
        if split is not None and multiple_results:
            raise ValueError("split: only kernels with one output split over the batch")
        if target not in library.targets:
            raise ValueError(
                f"target must be one of {sorted(library.targets)} ({library.name}), got {target!r}"
            )
        self.target = target
        self.library = library
        self.fallback = fallback
        self.out_shapes = out_shapes
        self.attributes = dict(attributes or {})
        self.multiple_results = multiple_results
        self.primitive = Primitive(target)
        self.primitive.multiple_results = multiple_results
        self.split = split if split is not None and needs_devices(self.primitive) else None
        self.primitive.def_impl(self._impl)
        self.primitive.def_abstract_eval(self._abstract_eval)
        mlir.register_lowering(self.primitive, self._lower_xla)
        mlir.register_lowering(self.primitive, self._lower_cpu, platform="cpu")
        batching.primitive_batchers[self.primitive] = self._batch

    def __repr__(self) -> str:
        return f"Kernel({self.target!r})"

    def __call__(self, *operands: jax.Array, **params):
        """The kernel's output(s) for ``operands`` (no leading batch dimensions)."""
        return self.primitive.bind(*operands, batch_dims=0, **params)

    def bind(self, *operands, batch_dims: int, **params):
        """The primitive on operands with ``batch_dims`` leading (vmap) dimensions: what the
        derivative rules use, so that a rule applied inside ``vmap`` keeps the batch."""
        return self.primitive.bind(*operands, batch_dims=batch_dims, **params)

    # -------------------------------------------------------------------- evaluation

    def _impl(self, *operands, batch_dims: int, **params):
        """Eager calls: the primitive compiled alone, once per setting of its parameters.

        Under ``jax_debug_nans``/``jax_debug_infs`` (whose search for the culprit re-runs a
        failing program op by op, calling this) the compiled call runs unchecked and its
        outputs are checked here, so that an invalid value is reported in the kernel's name
        rather than sending the search back into the same compiled call."""
        compiled = self._compiled(batch_dims, tuple(sorted(params.items())))
        nans = getattr(jax.config, "jax_debug_nans")  # noqa: B009 (typeshed lacks it)
        infs = getattr(jax.config, "jax_debug_infs")  # noqa: B009
        if not (nans or infs):
            return compiled(*operands)
        with jax.debug_nans(False), jax.debug_infs(False):
            out = compiled(*operands)
        for value in out if self.multiple_results else (out,):
            if nans and bool(jnp.isnan(value).any()):
                raise FloatingPointError(f"invalid value (nan) encountered in {self.target}")
            if infs and bool(jnp.isinf(value).any()):
                raise FloatingPointError(f"invalid value (inf) encountered in {self.target}")
        return out

    @functools.lru_cache(maxsize=256)  # noqa: B019 (kernels live as long as the process)
    def _compiled(self, batch_dims: int, params: tuple) -> Callable:
        return jax.jit(
            functools.partial(self.primitive.bind, batch_dims=batch_dims, **dict(params))
        )

    def _abstract_eval(self, *avals, batch_dims: int, **params):
        lead = tuple(avals[0].shape[:batch_dims])
        core = [jax.ShapeDtypeStruct(a.shape[batch_dims:], a.dtype) for a in avals]
        outs = self.out_shapes(*core, **params)
        outs = tuple(outs) if self.multiple_results else (outs,)
        result = [jax.core.ShapedArray(lead + tuple(o.shape), o.dtype) for o in outs]
        return result if self.multiple_results else result[0]

    def batched_fallback(self, batch_dims: int, **params) -> Callable:
        """The XLA twin with ``params`` bound, ``vmap``-ped over ``batch_dims`` leading axes."""
        fn = functools.partial(self.fallback, **params)
        for _ in range(batch_dims):
            fn = jax.vmap(fn)
        return fn

    def _lower_xla(self, ctx, *operands, batch_dims: int, **params):
        fn = self.batched_fallback(batch_dims, **params)
        if self.multiple_results:
            lowered = mlir.lower_fun(lambda *a: tuple(fn(*a)), multiple_results=True)
        else:
            lowered = mlir.lower_fun(fn, multiple_results=False)
        return lowered(ctx, *operands)

    def _lower_cpu(self, ctx, *operands, batch_dims: int, **params):
        if _for_export(ctx) or not self.library.load():
            return self._lower_xla(ctx, *operands, batch_dims=batch_dims, **params)
        if per_device(ctx):
            attributes = {name: kind(params[name]) for name, kind in self.attributes.items()}
            return jax.ffi.ffi_lowering(self.target)(ctx, *operands, **attributes)
        if self.split is None:
            return self._lower_xla(ctx, *operands, batch_dims=batch_dims, **params)
        fn = partitioned(
            self.bind,
            self.batched_fallback(batch_dims, **params),
            self.split,
            batch_dims,
            tuple(len(a.shape) for a in ctx.avals_in),
            len(ctx.avals_out[0].shape),
            params,
        )
        return mlir.lower_fun(fn, multiple_results=False)(ctx, *operands)

    def _batch(self, operands: Sequence, dims: Sequence, *, batch_dims: int, **params):
        size = next(a.shape[d] for a, d in zip(operands, dims, strict=True) if d is not None)
        moved = [
            jnp.broadcast_to(a, (size, *a.shape)) if d is None else jnp.moveaxis(a, d, 0)
            for a, d in zip(operands, dims, strict=True)
        ]
        out = self.bind(*moved, batch_dims=batch_dims + 1, **params)
        return out, ([0] * len(out) if self.multiple_results else 0)

    # ------------------------------------------------------------------- derivatives

    def defjvp(self, rule: Callable) -> None:
        """Forward mode: ``rule(primals, tangents, batch_dims=..., **params) -> (out,
        tangent_out)``; a tangent may be :class:`jax.interpreters.ad.Zero`. For reverse mode
        JAX transposes the tangent's linear part, so it must be built from primitives that
        can be transposed (jnp code, or kernels with :meth:`deftranspose`)."""
        ad.primitive_jvps[self.primitive] = rule

    def deftranspose(self, rule: Callable) -> None:
        """For a kernel linear in the operands the rule is asked about: ``rule(cotangent,
        *operands, batch_dims=..., **params)`` returns one cotangent per operand (None for
        those that are not :class:`jax.interpreters.ad.UndefinedPrimal`)."""
        ad.primitive_transposes[self.primitive] = rule

    def defjvp_by_fallback(self) -> None:
        """Forward mode: the primal output from the kernel, the tangent as the derivative of
        the XLA twin (``jax.jvp`` of ``fallback``), which JAX can transpose."""

        def rule(primals, tangents, *, batch_dims: int, **params):
            out = self.bind(*primals, batch_dims=batch_dims, **params)
            fn = self.batched_fallback(batch_dims, **params)
            tangents = [ad.instantiate_zeros(t) for t in tangents]
            _, tangent_out = jax.jvp(fn, tuple(primals), tuple(tangents))
            return out, (list(tangent_out) if self.multiple_results else tangent_out)

        self.defjvp(rule)
