"""A kernel on every device's rows of a sharded batch (``jax.experimental.custom_partitioning``).

A custom call is opaque to XLA's SPMD partitioner: left alone, it would gather its operands
onto every device and run the whole batch there. A kernel that works row by row says so with
a :class:`BatchSplit`; when a program is partitioned over several devices, its lowering
becomes a ``custom_partitioning`` call whose partition rule

- keeps the operands split over the batch axis (and over any ``vmap`` axes) as the
  partitioner chose, and every other axis whole on each device;
- lowers, for each device, the kernel itself on that device's block of rows (the program of
  one device is lowered with every mesh axis manual, where the FFI call is safe);
- for a kernel whose output is a sum over the batch (a weight gradient), all-reduces the
  per-device partial sums (``lax.psum``).

So a data-parallel step runs the compiled kernels on every device's shard, with the same
arithmetic as one device up to the order of the all-reduce's sums.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P


def _same_params(params: dict[str, Any], rows: int) -> dict[str, Any]:
    del rows
    return params


@dataclasses.dataclass(frozen=True)
class BatchSplit:
    """How a kernel's work splits over the rows of a batch.

    Attributes:
        operands: for each operand, the axis that holds the batch (after any ``vmap`` axes),
            or None for an operand every device needs whole (the weights).
        output: the output's batch axis, or None where the output is a sum over the batch
            (then the devices' partial outputs are all-reduced).
        localize: ``localize(params, rows)``: the kernel's parameters for a block of ``rows``
            rows (a parameter that names the batch's size must be cut down to it).
    """

    operands: tuple[int | None, ...]
    output: int | None
    localize: Callable[[dict[str, Any], int], dict[str, Any]] = _same_params


def needs_devices(primitive) -> bool:
    """Ask ``jit`` to pass the device assignment to ``primitive``'s lowering, which a
    ``custom_partitioning`` call needs (JAX has no public hook for this; the cuDNN kernels
    use the same one). Returns False where this JAX lacks it: such a kernel does not split."""
    try:
        from jax._src import dispatch
    except ImportError:  # pragma: no cover - a JAX without the private module
        return False
    devices = getattr(dispatch, "prim_requires_devices_during_lowering", None)
    if not isinstance(devices, set):  # pragma: no cover
        return False
    devices.add(primitive)
    return True


def per_device(ctx) -> bool:
    """True where the module being lowered is one device's program: a ``jit`` on one device,
    the body of a ``shard_map`` (every mesh axis manual) or of a ``pmap``."""
    context = ctx.module_context.axis_context
    if hasattr(context, "manual_axes"):  # SPMDAxisContext
        return set(context.manual_axes) == set(context.mesh.axis_names)
    if hasattr(context, "num_devices"):  # ShardingContext
        return context.num_devices == 1
    return True  # ReplicaAxisContext: pmap lowers one replica's program


def _axis_size(mesh, axis) -> int:
    if axis is None:
        return 1
    names = axis if isinstance(axis, tuple) else (axis,)
    return math.prod(mesh.shape[name] for name in names)


def _padded(spec: Sequence, rank: int) -> tuple:
    return tuple(spec) + (None,) * (rank - len(spec))


def _sharding_rule(split: BatchSplit, ranks: Sequence[int], out_rank: int, batch_dims: int):
    """Shardy's einsum-like rule: vmap axes and the batch pass through, every other axis is
    kept whole; a batch that the output does not have is a reduction."""
    lead = [f"v{i}" for i in range(batch_dims)]
    whole: list[str] = []

    def factors(prefix: str, rank: int, batch_axis: int | None) -> str:
        names = list(lead)
        for j in range(rank - batch_dims):
            if j == batch_axis:
                names.append("n")
            else:
                whole.append(f"{prefix}{j}")
                names.append(whole[-1])
        return " ".join(names)

    operands = [
        factors(f"a{i}x", rank, axis)
        for i, (rank, axis) in enumerate(zip(ranks, split.operands, strict=True))
    ]
    result = factors("rx", out_rank, split.output)
    reduction = ("n",) if split.output is None else ()
    return f"{', '.join(operands)} -> {result}", tuple(whole), reduction


def partitioned(
    bind: Callable,
    fallback: Callable,
    split: BatchSplit,
    batch_dims: int,
    ranks: tuple[int, ...],
    out_rank: int,
    params: dict[str, Any],
) -> Callable:
    """The kernel as a ``custom_partitioning`` function of its operands (global shapes).

    Args:
        bind: ``bind(*operands, batch_dims=..., **params)``, the kernel's primitive.
        fallback: the XLA twin with ``params`` bound and vmapped ``batch_dims`` times (what
            runs where the call is not partitioned).
        split: how the kernel splits over the batch.
        batch_dims: leading ``vmap`` axes of every operand and of the output.
        ranks: the operands' ranks; out_rank: the output's (vmap axes included).
        params: the kernel's static parameters for the whole batch.
    """
    first = next(i for i, axis in enumerate(split.operands) if axis is not None)

    def shardings(mesh, arg_shapes):
        spec = _padded(arg_shapes[first].sharding.spec, ranks[first])
        lead, axis = spec[:batch_dims], spec[batch_dims + split.operands[first]]
        rows = arg_shapes[first].shape[batch_dims + split.operands[first]]
        if axis is not None and rows % _axis_size(mesh, axis):
            axis = None  # uneven blocks: every device takes the whole batch

        def spec_for(rank: int, batch_axis: int | None) -> NamedSharding:
            rest = [axis if j == batch_axis else None for j in range(rank - batch_dims)]
            return NamedSharding(mesh, P(*lead, *rest))

        args = tuple(spec_for(rank, a) for rank, a in zip(ranks, split.operands, strict=True))
        return axis, rows // _axis_size(mesh, axis), args, spec_for(out_rank, split.output)

    def partition(mesh, arg_shapes, result_shape):
        del result_shape
        axis, rows, args, result = shardings(mesh, arg_shapes)
        local = split.localize(dict(params), rows)

        def lower(*operands):
            out = bind(*operands, batch_dims=batch_dims, **local)
            if split.output is None and axis is not None:
                out = jax.lax.psum(out, axis)
            return out

        return mesh, lower, result, args

    def infer(mesh, arg_shapes, result_shape):
        del result_shape
        return shardings(mesh, arg_shapes)[3]

    rule, whole, reduction = _sharding_rule(split, ranks, out_rank, batch_dims)
    fn = custom_partitioning(lambda *operands: fallback(*operands))
    fn.def_partition(
        partition,
        infer_sharding_from_operands=infer,
        sharding_rule=rule,
        need_replication_factors=whole,
        reduction_factors=reduction,
    )
    return fn
