"""Child process of tests/test_parallel.py: trains a tiny model data-parallel and pickles
what the test compares. It must be started with XLA_FLAGS setting the virtual CPU device
count (JAX reads it once, when its backend starts, so the test process itself cannot).

    python -m tests._parallel_worker single OUT            # 4 devices, one process
    python -m tests._parallel_worker multi OUT ADDR N ID   # 2 devices in each of N processes
"""

from __future__ import annotations

import pickle
import re
import sys
import tempfile
import time

import jcnn  # noqa: F401  (first: its XLA flag goes in before JAX starts)
from jcnn import parallel

INIT_FAILED = 3  # exit status when jax.distributed.initialize itself fails


def _setup(mode: str, argv: list[str]) -> None:
    if mode == "multi":
        address, n, pid = argv[0], int(argv[1]), int(argv[2])
        try:
            parallel.initialize_distributed(address, n, pid)
            # One cross-process all-reduce: where multi-process CPU computations are not
            # supported, this is where it shows.
            import jax
            import jax.numpy as jnp
            import numpy as np

            mesh = parallel.make_mesh()
            (x,) = parallel.shard_batch(mesh, np.ones(mesh.size, np.float32))
            total = jax.jit(jnp.sum, out_shardings=parallel.replicated_sharding(mesh))(x)
            assert float(total) == mesh.size, float(total)
        except Exception as e:  # what this JAX build says, for the test's skip message
            print(f"multi-process-failed: {type(e).__name__}: {e}", file=sys.stderr)
            sys.exit(INIT_FAILED)


def main() -> None:
    mode, out, rest = sys.argv[1], sys.argv[2], sys.argv[3:]
    _setup(mode, rest)  # before anything touches a device

    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.experimental import multihost_utils

    from jcnn.augment import random_crop_flip
    from jcnn.models import VGGNet
    from jcnn.solver import CheckpointMismatchError, Solver

    shape, n_train, n_val, batch = (3, 8, 8), 48, 16, 8  # 6 updates in one epoch
    rng = np.random.default_rng(0)
    data = {
        "X_train": rng.normal(size=(n_train, *shape)).astype(np.float32),
        "y_train": rng.integers(0, 10, n_train),
        "X_val": rng.normal(size=(n_val, *shape)).astype(np.float32),
        "y_val": rng.integers(0, 10, n_val),
    }
    # conv - spatial bn - relu - pool - affine - bn - relu - dropout - affine: batch
    # statistics, dropout and augmentation all see the (sharded) batch.
    model = VGGNet(
        input_dim=shape, num_filters=(4,), blocks=(1,), hidden_dims=(8,), dropout=0.3,
        weight_scale="he",
    )  # fmt: skip

    def make_solver(mesh, compute_dtype=None, batch_size=batch, num_epochs=1, **kw):
        # sgd_momentum, not adam: adam divides by sqrt(v), which blows up the round-off in
        # the structurally-zero gradients of biases followed by batchnorm into O(lr) steps.
        return Solver(
            model, data, update_rule="sgd_momentum", optim_config={"learning_rate": 0.05},
            batch_size=batch_size, num_epochs=num_epochs, num_train_samples=16, verbose=False,
            seed=3,
            augment=random_crop_flip, mesh=mesh, compute_dtype=compute_dtype, **kw,
        )  # fmt: skip

    def train(mesh, compute_dtype=None, batch_size=batch, **kw):
        final = {}

        def snapshot(s, epoch):  # the trained values, before train() restores the best ones
            final.update(jax.device_get({"params": s.params, "state": s.state}))
            final["params_sharding"] = str(s.params["out"]["w"].sharding)

        solver = make_solver(mesh, compute_dtype, batch_size, on_epoch_end=[snapshot], **kw)
        t = time.perf_counter()
        solver.train()
        return {
            "loss": list(solver.loss_history),
            "val_acc": list(solver.val_acc_history),
            "opt_dtypes": sorted(
                {str(x.dtype) for x in jax.tree_util.tree_leaves(solver.opt_state)}
            ),
            "seconds": time.perf_counter() - t,
            "traces": solver.trace_counts,
            **final,
        }

    result: dict = {"process_index": jax.process_index(), "device_count": jax.device_count()}
    if mode == "multi":
        mesh = parallel.make_mesh(batch_size=batch)  # 2 local devices x N processes
        result["mesh_size"] = mesh.size
        result["rows"] = parallel.process_slice(mesh, batch)
        ckpt = f"{out}.ckpt"  # the same folder for both processes: only process 0 writes
        result["run"] = train(mesh, checkpoint_dir=ckpt)
        multihost_utils.sync_global_devices("checkpoint written")
        result["resumed"] = make_solver(mesh, checkpoint_dir=ckpt, num_epochs=2).resumed_from
    else:
        result["plain"] = train(None)
        ckpt = tempfile.mkdtemp()
        for n in (1, 2, 4):
            kw = {"checkpoint_dir": ckpt} if n == 2 else {}
            result[n] = train(parallel.make_mesh(n, batch_size=batch), **kw)
        # A checkpoint of the 2-device run resumes on 4 devices (the device count may change;
        # the compute dtype may not).
        resumed = make_solver(parallel.make_mesh(4), checkpoint_dir=ckpt, num_epochs=2)
        result["resumed"] = {
            "from": resumed.resumed_from,
            "sharding": str(resumed.params["out"]["w"].sharding),
        }
        result["resumed"]["loss"] = list(resumed.loss_history)
        try:
            make_solver(parallel.make_mesh(2), "bfloat16", checkpoint_dir=ckpt)
            result["resumed"]["bf16_error"] = None
        except CheckpointMismatchError as e:
            result["resumed"]["bf16_error"] = str(e)
        mesh = parallel.make_mesh(4)
        X, y = parallel.shard_batch(mesh, data["X_train"][:batch], data["y_train"][:batch])
        result["placed"] = {
            "sharding": type(X.sharding).__name__,
            "spec": tuple(X.sharding.spec),
            "shards": sorted((s.device.id, s.index[0].start, s.data.shape) for s in
                             X.addressable_shards),
            "y_spec": tuple(y.sharding.spec),
        }  # fmt: skip
        errors = {}
        for name, fn in {
            "mesh": lambda: parallel.make_mesh(4, batch_size=6),
            "solver": lambda: train(parallel.make_mesh(4), batch_size=6),
            "too_many": lambda: parallel.make_mesh(5),
        }.items():
            try:
                fn()
                errors[name] = None
            except ValueError as e:
                errors[name] = str(e)
        result["errors"] = errors

        # Mixed precision: bfloat16 inside, float32 parameters, optimiser state and loss.
        result["bf16"] = train(parallel.make_mesh(2), compute_dtype="bfloat16")
        loss_fn = parallel.mixed_precision_loss(model, "bfloat16")
        params, state = model.init(jax.random.key(0))
        X, y = data["X_train"][:batch], data["y_train"][:batch]
        key = jax.random.key(1)
        (loss, new_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, state, X, y, key=key
        )
        grad_jaxpr = jax.make_jaxpr(jax.grad(lambda p: loss_fn(p, state, X, y, key=key)[0]))(params)
        # dtype of every convolution and matmul, forward and backward
        heavy = re.findall(r":(\w+)\[[^\]]*\] = (?:conv_general_dilated|dot_general)\b",
                           str(grad_jaxpr))  # fmt: skip
        result["bf16_check"] = {
            "loss_dtype": str(loss.dtype),
            "grad_dtypes": sorted({str(g.dtype) for g in jax.tree_util.tree_leaves(grads)}),
            "state_dtypes": sorted({str(s.dtype) for s in jax.tree_util.tree_leaves(new_state)}),
            "heavy_dtypes": sorted(set(heavy)),
            "num_heavy": len(heavy),
            "loss": float(loss),
            "loss_f32": float(model.loss(params, state, X, y, key=key)[0]),
            "param_dtype": str(jnp.asarray(params["out"]["w"]).dtype),
        }

        # Data selection: the kept rows are split over the devices again; on 4 devices the
        # updates (main net and proxy) are those of one device.
        result["selection"] = {
            n: _selection_run(model, data, batch, None if n == 1 else parallel.make_mesh(n))
            for n in (1, 4)
        }

    if jax.process_index() == 0 or mode == "multi":
        with open(f"{out}.{jax.process_index()}" if mode == "multi" else out, "wb") as f:
            pickle.dump(result, f)


def _selection_run(model, data, batch, mesh):
    """Two updates with data selection (keep half the batch, the proxy trains every update)."""
    import jax
    import optax

    from jcnn.models import VGGNet
    from jcnn.selection import Selection
    from jcnn.train import create_train_state, make_train_step

    optimizer = optax.sgd(0.05, momentum=0.9)
    proxy_model = VGGNet(input_dim=model.input_dim, num_filters=(2,), blocks=(1,),
                         hidden_dims=(4,), weight_scale="he")  # fmt: skip
    proxy = create_train_state(proxy_model, optimizer, key=jax.random.key(1))
    state = create_train_state(model, optimizer, key=jax.random.key(0), proxy=proxy)
    select = Selection(proxy_model, optimizer, keep=batch // 2, train_every=1)
    step = make_train_step(model, optimizer, select=select, mesh=mesh)
    if mesh is not None:
        state = parallel.replicate(state, mesh)
    for t in range(2):
        rows = slice(t * batch, (t + 1) * batch)
        X, y = data["X_train"][rows], data["y_train"][rows]
        if mesh is not None:
            X, y = parallel.shard_batch(mesh, X, y)
        state, _ = step(state, (X, y))
    return jax.device_get({"params": state.params, "proxy": state.proxy.params})


if __name__ == "__main__":
    main()
