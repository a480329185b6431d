"""Data-parallel training over devices and hosts with :mod:`jax.sharding`.

::

    mesh = make_mesh(num_devices=4, batch_size=100)   # 1-D mesh, axis 'data'
    params = replicate(params, mesh)                   # a full copy on every device
    X, y = shard_batch(mesh, X_global, y_global)       # rows split over the devices

Nothing here is home-made SPMD: a :class:`jax.sharding.Mesh` with one axis
(:data:`DATA_AXIS`) over the devices, :class:`~jax.sharding.NamedSharding` for the batch
(``P('data')``: axis 0 split into equal consecutive blocks, one per device) and for
everything else (``P()``: replicated), and ``jax.jit`` with those shardings. XLA partitions
the step: every device runs the forward and the hand-written backward on its rows, and the
reductions over the batch axis become all-reduces. In particular

- the gradient is the gradient of the *global* mean loss (the loss's ``1/N`` is over the
  whole batch, so the all-reduce of the per-device partial sums is exactly the usual mean),
- batchnorm statistics are computed over the *global* batch: the layer's ``jnp.mean`` over
  the (sharded) batch axis is an all-reduce, so 1, 2 or 4 devices see the same mean and
  variance, and the same running statistics (no "per-device batchnorm"),
- random numbers do not depend on the sharding (JAX's threefry is partitionable), so
  dropout and augmentation draw the same masks on any number of devices.

Same seed and global batch, same run on 1, 2 or 4 devices, up to float round-off in the
order of the all-reduce's sums.

Several hosts (processes): call :func:`initialize_distributed` first thing (before anything
touches a device); :func:`make_mesh` then spans ``num_devices`` local devices of every
process, ordered by process, so process ``p`` holds the ``p``-th consecutive block of rows
of every global batch (:func:`process_slice`). Each process draws the same global indices
from the shared seed and gathers only its block (:func:`put_batch` builds the global array
from the process-local rows with :func:`jax.make_array_from_process_local_data`).

Mixed precision (``compute_dtype``) is :mod:`jcnn.precision`'s; its names are also
reachable here (``jcnn.parallel.resolve_compute_dtype``, ...).
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jcnn._validate import nonnegative_int, positive_int
from jcnn.precision import (
    COMPUTE_DTYPES,
    cast_floating,
    mixed_precision_loss,
    predict_params,
    resolve_compute_dtype,
)

__all__ = [
    "COMPUTE_DTYPES",
    "DATA_AXIS",
    "batch_sharding",
    "cast_floating",
    "check_batch_divisible",
    "initialize_distributed",
    "is_primary",
    "make_mesh",
    "mixed_precision_loss",
    "predict_params",
    "process_slice",
    "put_batch",
    "replicate",
    "replicated_sharding",
    "resolve_compute_dtype",
    "shard_batch",
]

DATA_AXIS = "data"


# ------------------------------------------------------------------------------ processes


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    timeout_s: int | None = None,
) -> bool:
    """:func:`jax.distributed.initialize` for a multi-host run; returns whether it ran.

    Call it before anything touches a device (creating an array, ``jax.devices()``). With no
    arguments (or ``num_processes`` 1 and no coordinator) it does nothing: a single-process
    run. ``coordinator_address`` is ``host:port`` of process 0, reachable from every process;
    ``process_id`` is this process's rank in ``[0, num_processes)``. ``timeout_s``: how long
    to wait for every process to connect (JAX's default, 300 s, if None); JAX then ends the
    process (an abort, not an exception).

    Args:
      coordinator_address: ``'host:port'`` of process 0, or None for a single process.
      num_processes: how many processes take part (a positive int), or None.
      process_id: this process's rank in ``[0, num_processes)``, or None.
      timeout_s: seconds to wait for every process to connect (None: 300).

    Returns:
      True if :func:`jax.distributed.initialize` ran, False for a single-process run.

    Raises:
      ValueError: a multi-process run (``num_processes`` not None/1 or ``process_id`` not
        None/0, or a coordinator given) without all three of ``coordinator_address``,
        ``num_processes`` and ``process_id``; an address that is not ``host:port`` with a
        port in 1..65535; ``num_processes`` not a positive int,
        ``process_id`` not a non-negative int or not below ``num_processes``.
    """
    if coordinator_address is None and num_processes in (None, 1) and process_id in (None, 0):
        return False
    if not coordinator_address:
        raise ValueError(
            "coordinator_address ('host:port' of process 0) is needed for a multi-process run "
            f"(num_processes={num_processes}, process_id={process_id})"
        )
    if num_processes is None or process_id is None:
        raise ValueError(
            "a multi-process run needs coordinator_address, num_processes and process_id, got "
            f"{coordinator_address!r}, {num_processes!r}, {process_id!r}"
        )
    host, colon, port = str(coordinator_address).rpartition(":")
    if not (host and colon and port.isdigit() and 1 <= int(port) <= 65535):
        raise ValueError(
            "coordinator_address must be 'host:port' with a port in 1..65535, got "
            f"{coordinator_address!r}"
        )
    n = positive_int("num_processes", num_processes)
    pid = nonnegative_int("process_id", process_id)
    if not 0 <= pid < n:
        raise ValueError(f"process_id must be in [0, num_processes={n}), got {process_id!r}")
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=n,
        process_id=pid,
        initialization_timeout=300 if timeout_s is None else int(timeout_s),
    )
    return True


def is_primary() -> bool:
    """Whether this is process 0 (the one that writes files and prints).

    Returns:
      ``jax.process_index() == 0`` (True in a single-process run).
    """
    return jax.process_index() == 0


# ----------------------------------------------------------------------------------- mesh


def make_mesh(
    num_devices: int | None = None,
    *,
    batch_size: int | None = None,
    devices: Sequence[jax.Device] | None = None,
) -> Mesh:
    """A 1-D :class:`~jax.sharding.Mesh` with axis :data:`DATA_AXIS`.

    ``num_devices`` counts devices *per process* (default: all of this process's local
    devices); the mesh takes the first ``num_devices`` local devices of every process,
    ordered by process, so it has ``num_devices × jax.process_count()`` devices. ``devices``
    gives the mesh's devices explicitly instead. With ``batch_size`` (the global batch),
    also checks that it splits evenly over the mesh. ValueError when more devices are asked
    for than there are, or when the batch does not divide.

    Args:
      num_devices: local devices per process to use, a positive int (None: all of them);
        with ``devices``, must equal ``len(devices)`` if given.
      batch_size: the global batch size to check against the mesh, or None.
      devices: the mesh's devices explicitly, in order (None: chosen as above).

    Returns:
      The :class:`~jax.sharding.Mesh`, axis names ``(DATA_AXIS,)``.

    Raises:
      ValueError: ``num_devices`` is not a positive int or exceeds this process's local
        devices; ``devices`` is empty or its length differs from ``num_devices``;
        ``batch_size`` is not a positive int or not divisible by the mesh's size
        (:func:`check_batch_divisible`).
    """
    if devices is None:
        local = jax.local_device_count()
        n = local if num_devices is None else positive_int("num_devices", num_devices)
        if n > local:
            kind = jax.local_devices()[0].platform
            raise ValueError(
                f"num_devices={n} but this process has only {local} {kind} device(s) "
                "(on the CPU, XLA_FLAGS=--xla_force_host_platform_device_count=N, set before "
                "JAX starts, makes N virtual devices)"
            )
        by_process: dict[int, list[jax.Device]] = {}
        for d in sorted(jax.devices(), key=lambda d: (d.process_index, d.id)):
            by_process.setdefault(d.process_index, []).append(d)
        devices = [d for p in sorted(by_process) for d in by_process[p][:n]]
    else:
        devices = list(devices)
        if not devices:
            raise ValueError("devices is empty")
        if num_devices is not None and positive_int("num_devices", num_devices) != len(devices):
            raise ValueError(f"num_devices={num_devices} but {len(devices)} devices were given")
    mesh = Mesh(np.array(devices), (DATA_AXIS,))
    if batch_size is not None:
        check_batch_divisible(batch_size, mesh)
    return mesh


def check_mesh(mesh: Any, batch_size: int) -> Mesh:
    """``mesh`` if it is a 1-D :class:`~jax.sharding.Mesh` with axis :data:`DATA_AXIS` over
    which ``batch_size`` splits evenly; ValueError naming ``mesh`` or ``batch_size`` else.

    Args:
      mesh: the value to check (e.g. a user's ``mesh=`` argument).
      batch_size: the global batch size.

    Returns:
      ``mesh``, unchanged.

    Raises:
      ValueError: ``mesh`` is not a :class:`~jax.sharding.Mesh` with axis names
        ``(DATA_AXIS,)``, or ``batch_size`` is not a positive int divisible by its size.
    """
    if not isinstance(mesh, Mesh) or mesh.axis_names != (DATA_AXIS,):
        raise ValueError(
            f"mesh must be a 1-D jax.sharding.Mesh with axis {DATA_AXIS!r} "
            f"(see jcnn.parallel.make_mesh), got {mesh!r}"
        )
    check_batch_divisible(batch_size, mesh)
    return mesh


def assert_same_in_every_process(value: int, message: str) -> None:
    """With several processes: raise (with ``message``) unless every process passes the same
    ``value``; nothing with one.

    Args:
      value: an integer every process should agree on, below 2**31 in magnitude (JAX
        gathers it as ``int32`` unless 64-bit types are on).
      message: the error message if they do not.

    Raises:
      AssertionError: the processes passed different values
        (:func:`jax.experimental.multihost_utils.assert_equal`).
    """
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.assert_equal(np.int64(value), message)


def differing_across_processes(values: Mapping[str, Any]) -> list[str]:
    """The names in ``values`` whose values differ between the processes (a collective every
    process must call at the same point; ``[]`` with one process). Each value is compared by
    a 31-bit checksum of its JSON.

    Args:
      values: name → JSON-able value, the same names in every process.

    Returns:
      The differing names, sorted (every name when the processes passed different names).
    """
    names = sorted(values)
    if jax.process_count() == 1:
        return []
    from jax.experimental import multihost_utils

    def checksum(value: Any) -> int:
        return zlib.crc32(json.dumps(value, sort_keys=True, default=repr).encode()) >> 1

    if len(set(gather_from_every_process(checksum(names)))) > 1:
        return names
    local = np.array([checksum(values[name]) for name in names], np.int32)
    every = np.asarray(multihost_utils.process_allgather(local)).reshape(-1, len(names))
    return [name for i, name in enumerate(names) if len(set(every[:, i].tolist())) > 1]


def gather_from_every_process(value: int) -> list[int]:
    """Every process's ``value``, in process order: a collective every process must call at
    the same point of its program (``[value]`` with one process).

    Args:
      value: this process's integer (sent as ``int32``).

    Returns:
      ``jax.process_count()`` integers; entry ``i`` is process ``i``'s ``value``.
    """
    if jax.process_count() == 1:
        return [int(value)]
    from jax.experimental import multihost_utils

    gathered = multihost_utils.process_allgather(np.int32(value))
    return [int(v) for v in np.asarray(gathered).reshape(-1)]


def wait_for_every_process(name: str) -> None:
    """Return once every process has reached the call with this ``name`` (a barrier; nothing
    with one process).

    Args:
      name: the barrier's name, the same in every process.
    """
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def check_batch_divisible(batch_size: int, mesh: Mesh, name: str = "batch_size") -> int:
    """``batch_size`` if it splits evenly over the mesh's devices, else ValueError.

    Args:
      batch_size: the global batch size.
      mesh: the mesh whose devices share each batch.
      name: the argument's name in the error message (default ``'batch_size'``).

    Returns:
      ``batch_size`` as an ``int``.

    Raises:
      ValueError: ``batch_size`` is not a positive int, or not divisible by ``mesh.size``
        (the message suggests the nearest sizes that are).
    """
    b = positive_int(name, batch_size)
    n = mesh.size
    if b % n:
        lo, hi = (b // n) * n, -(-b // n) * n
        hint = f"{lo} or {hi}" if lo else f"{hi}"
        raise ValueError(
            f"{name}={b} (the global batch) must be divisible by the number of devices "
            f"{n} ({jax.process_count()} process(es) x {n // jax.process_count()} device(s)): "
            f"each device takes an equal share of every batch; use e.g. {hint}"
        )
    return b


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Axis 0 split over the mesh (``P('data')``), the other axes whole.

    Args:
      mesh: a mesh with axis :data:`DATA_AXIS`.

    Returns:
      ``NamedSharding(mesh, P(DATA_AXIS))``.
    """
    return NamedSharding(mesh, P(DATA_AXIS))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
    """A full copy on every device of the mesh (``P()``).

    Args:
      mesh: the mesh.

    Returns:
      ``NamedSharding(mesh, P())``.
    """
    return NamedSharding(mesh, P())


# --------------------------------------------------------------------------- placement


def _is_key(x: Any) -> bool:
    return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Every leaf of ``tree`` copied onto every device of ``mesh`` (replicated).

    The values must be the same in every process (they are: the same seed builds them).
    Typed PRNG keys go through their raw key data (``device_put`` refuses keys for a mesh
    that spans other processes).

    Args:
      tree: a pytree of arrays (host or device), scalars or typed PRNG keys.
      mesh: the mesh to replicate over.

    Returns:
      A pytree of the same structure whose leaves are :class:`jax.Array` with
      :func:`replicated_sharding` (leaves already so placed are returned as they are).
    """
    sharding = replicated_sharding(mesh)

    def put(x):
        if _is_key(x):
            impl = jax.random.key_impl(x)
            data = jax.device_put(np.asarray(jax.random.key_data(x)), sharding)
            return jax.random.wrap_key_data(data, impl=impl)
        if isinstance(x, jax.Array) and x.sharding == sharding:
            return x
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return jax.jit(lambda v: v, out_shardings=sharding)(x)
        if jax.process_count() > 1:
            x = np.asarray(x)  # host value, the same in every process
        return jax.device_put(x, sharding)

    return jax.tree_util.tree_map(put, tree)


def process_slice(mesh: Mesh, global_batch: int) -> slice:
    """The rows of a global batch of ``global_batch`` examples that this process holds
    (``slice(0, global_batch)`` with one process).

    Args:
      mesh: the mesh the batch is sharded over (from :func:`make_mesh`).
      global_batch: the number of examples in the global batch.

    Returns:
      ``slice(start, stop)``: this process's consecutive rows.

    Raises:
      ValueError: ``global_batch`` is not a positive int divisible by the mesh's size, or this
        process's devices do not hold one consecutive block (a mesh not ordered by process).
    """
    b = check_batch_divisible(global_batch, mesh, "global batch")
    index_map = batch_sharding(mesh).addressable_devices_indices_map((b,))
    rows = [idx[0] for idx in index_map.values() if idx is not None]
    starts = sorted({(r.start or 0, b if r.stop is None else r.stop) for r in rows})
    lo, hi = starts[0][0], starts[-1][1]
    covered = sum(stop - start for start, stop in starts)
    if covered != hi - lo:  # cannot happen for make_mesh's process-ordered meshes
        raise ValueError(
            "this process's devices do not hold one consecutive block of the batch; build the "
            "mesh with make_mesh (devices ordered by process)"
        )
    return slice(lo, hi)


def put_batch(mesh: Mesh, local: Sequence[Any], global_batch: int) -> tuple[jax.Array, ...]:
    """Global batch arrays, sharded on axis 0, from this process's rows of them.

    ``local`` holds host arrays whose axis 0 is this process's :func:`process_slice` of the
    global batch (all of it with one process). With one process this is
    :func:`jax.device_put`; with several, :func:`jax.make_array_from_process_local_data`.

    Args:
      mesh: the mesh to shard over.
      local: array-likes, each of shape ``(global_batch / P, ...)`` for ``P`` processes
        (the rows :func:`process_slice` gives).
      global_batch: the number of rows of the global batch.

    Returns:
      One :class:`jax.Array` per entry of ``local``, shape ``(global_batch, ...)``, with
      :func:`batch_sharding`.

    Raises:
      ValueError: ``global_batch`` does not suit the mesh (:func:`process_slice`), or an
        array's axis 0 is not this process's number of rows.
    """
    sharding = batch_sharding(mesh)
    sl = process_slice(mesh, global_batch)
    out = []
    for a in local:
        a = np.asarray(a)
        if a.shape[:1] != (sl.stop - sl.start,):
            raise ValueError(
                f"this process's part of the batch must have {sl.stop - sl.start} rows "
                f"(rows {sl.start}:{sl.stop} of {global_batch}), got shape {a.shape}"
            )
        if jax.process_count() == 1:
            out.append(jax.device_put(a, sharding))
        else:
            global_shape = (global_batch, *a.shape[1:])
            out.append(jax.make_array_from_process_local_data(sharding, a, global_shape))
    return tuple(out)


def shard_batch(mesh: Mesh, *arrays: Any) -> tuple[jax.Array, ...]:
    """Whole global batch arrays (the same on every process) placed onto the mesh: each
    process sends only its own rows.

    Args:
      mesh: the mesh to shard over.
      *arrays: array-likes of the whole global batch, each of shape ``(N, ...)`` with the
        same ``N``.

    Returns:
      One :class:`jax.Array` per array, shape ``(N, ...)``, with :func:`batch_sharding`
      (``()`` when no arrays are given).

    Raises:
      ValueError: ``N`` (the first array's) is not a positive int divisible by the mesh's
        size, or another array is too short to give this process's rows.
    """
    if not arrays:
        return ()
    n = np.shape(arrays[0])[0]
    sl = process_slice(mesh, n)
    return put_batch(mesh, [np.asarray(a)[sl] for a in arrays], n)
