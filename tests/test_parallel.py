"""Data parallelism over a device mesh (jcnn.parallel + Solver(mesh=...)), mixed precision.

The multi-device cases run in child processes (tests/_parallel_worker.py) with virtual CPU
devices: XLA_FLAGS=--xla_force_host_platform_device_count=N must be set before JAX starts,
which the test process has long done.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jcnn import parallel
from tests.helpers import free_port

ROOT = Path(__file__).resolve().parents[1]
WORKER = "tests._parallel_worker"
INIT_FAILED = 3  # the worker's exit status when multi-process JAX itself does not work
TIMEOUT = 300
TOL = 1e-5  # relative to each leaf's scale, float32, after 6 updates
ROUND_OFF = 1e-6  # leaves this small are round-off around 0 (biases before batchnorm)


def _env(devices: int) -> dict[str, str]:
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _load(path: Path) -> dict:
    with open(path, "rb") as f:
        return pickle.load(f)


def _leaf_errors(a, b) -> dict[str, float]:
    """``max |a − b| / scale`` per leaf (0 for leaves that are round-off around zero: the
    structurally-zero gradients of biases followed by batchnorm leave them at ~1e-8 noise,
    where any relative error is meaningless). A running mean's scale is also its values'
    spread (the running variance's root): a mean near 0 of values of order 1 carries the
    round-off of those values, which a different order of summation changes."""
    out = {}
    flat_b = jax.tree_util.tree_leaves(b)
    for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(a)[0], flat_b, strict=True):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        scale = max(np.abs(x).max(), np.abs(y).max())
        if path[-1] == jax.tree_util.DictKey("running_mean"):
            spread = np.sqrt(np.asarray(_lookup(a, path[:-1])["running_var"], np.float64)).max()
            scale = max(scale, spread)
        out[jax.tree_util.keystr(path)] = 0.0 if scale < ROUND_OFF else np.abs(x - y).max() / scale
    return out


def _lookup(tree, path):
    for key in path:
        tree = tree[key.key]
    return tree


def _assert_same_run(ref: dict, run: dict, what: str) -> None:
    loss_ref, loss = np.asarray(ref["loss"]), np.asarray(run["loss"])
    assert loss.shape == loss_ref.shape == (6,)
    assert np.all(np.abs(loss - loss_ref) / np.abs(loss_ref) < TOL), (what, loss, loss_ref)
    for part in ("params", "state"):
        errs = _leaf_errors(ref[part], run[part])
        assert max(errs.values()) < TOL, (what, part, errs)


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> dict:
    """One process, 4 virtual CPU devices: the same run without a mesh and on meshes of 1, 2
    and 4 devices, bfloat16 compute, error messages."""
    out = tmp_path_factory.mktemp("parallel") / "single.pkl"
    proc = subprocess.run(
        [sys.executable, "-m", WORKER, "single", str(out)],
        cwd=ROOT, env=_env(4), capture_output=True, text=True, timeout=TIMEOUT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    return _load(out)


# ------------------------------------------------------------------- several devices


def test_same_losses_params_and_statistics_on_1_2_4_devices(single):
    assert single["device_count"] == 4
    # A one-device mesh is the plain jitted step, bit for bit.
    assert single[1]["loss"] == single["plain"]["loss"]
    _assert_same_run(single["plain"], single[1], "1 device")
    for n in (2, 4):
        _assert_same_run(single[1], single[n], f"{n} devices")
        assert single[n]["val_acc"] == single[1]["val_acc"]
        # Each step traced once: the accuracy checks' memory check traced the eval step with
        # unplaced parameters, and the first check traced it again.
        assert single[n]["traces"] == {"train_step": 1, "eval_step": 1}, single[n]["traces"]
    assert "Mesh('data': 4" in single[4]["params_sharding"]
    assert "spec=P()" in single[4]["params_sharding"]  # parameters replicated


def test_data_selection_on_4_devices_is_the_one_device_update(single):
    one, four = single["selection"][1], single["selection"][4]
    for part in ("params", "proxy"):
        errs = _leaf_errors(one[part], four[part])
        assert max(errs.values()) < TOL, (part, errs)


def test_checkpoint_resumes_on_another_device_count_not_another_compute_dtype(single):
    resumed = single["resumed"]
    assert resumed["from"]["iteration"] == 6 and resumed["from"]["path"].endswith("epoch_001.npz")
    assert "Mesh('data': 4" in resumed["sharding"] and "spec=P()" in resumed["sharding"]
    assert resumed["loss"] == single[2]["loss"]
    assert "solver.compute_dtype" in resumed["bf16_error"], resumed["bf16_error"]


def test_placed_batch_is_sharded_over_the_data_axis(single):
    placed = single["placed"]
    assert placed["sharding"] == "NamedSharding"
    assert placed["spec"] == ("data",) and placed["y_spec"] == ("data",)
    # 8 rows over 4 devices: 2 consecutive rows each
    assert placed["shards"] == [(d, 2 * d, (2, 3, 8, 8)) for d in range(4)]


def test_batch_not_divisible_by_the_devices_is_an_error(single):
    errors = single["errors"]
    for name in ("mesh", "solver"):
        assert "batch_size=6" in errors[name] and "divisible" in errors[name], errors
        assert "4 or 8" in errors[name]
    assert "num_devices=5" in errors["too_many"] and "only 4" in errors["too_many"]


def test_bfloat16_compute_keeps_float32_params_state_and_loss(single):
    check = single["bf16_check"]
    assert check["loss_dtype"] == "float32"
    assert check["grad_dtypes"] == ["float32"] and check["state_dtypes"] == ["float32"]
    # every convolution and matmul, forward and backward, runs in bfloat16
    assert check["heavy_dtypes"] == ["bf16"] and check["num_heavy"] >= 6
    assert abs(check["loss"] - check["loss_f32"]) < 2e-2 * check["loss_f32"]
    run, ref = single["bf16"], single[2]
    assert run["opt_dtypes"] == ["float32", "int32"]
    assert all(np.asarray(v).dtype == np.float32 for v in jax.tree_util.tree_leaves(run["params"]))
    assert all(np.asarray(v).dtype == np.float32 for v in jax.tree_util.tree_leaves(run["state"]))
    rel = np.abs(np.asarray(run["loss"]) - ref["loss"]) / np.asarray(ref["loss"])
    assert np.all(rel < 2e-2), rel


# --------------------------------------------------------------------- several hosts


def test_two_processes_match_one_process_on_four_devices(single, tmp_path):
    """Two local processes with 2 virtual CPU devices each (jax.distributed.initialize on a
    loopback coordinator): the same run as one process with 4 devices."""
    out = tmp_path / "multi.pkl"
    address = f"127.0.0.1:{free_port()}"
    logs = [tmp_path / f"stderr.{pid}" for pid in (0, 1)]
    procs = []
    for pid, log in enumerate(logs):
        with open(log, "w") as err:  # files, not pipes: neither process can block on output
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", WORKER, "multi", str(out), address, "2", str(pid)],
                    cwd=ROOT,
                    env=_env(2),
                    stdout=subprocess.DEVNULL,
                    stderr=err,
                )
            )
    deadline = time.monotonic() + TIMEOUT
    try:
        # Until both are done, or one fails (the other would wait for it until its timeout).
        while time.monotonic() < deadline:
            codes = [p.poll() for p in procs]
            if all(c == 0 for c in codes) or any(c not in (None, 0) for c in codes):
                break
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    results = [(code, log.read_text()) for code, log in zip(codes, logs, strict=True)]
    failed = [err for code, err in results if code == INIT_FAILED]
    if failed:
        line = next(s for s in failed[0].splitlines() if s.startswith("multi-process-failed"))
        pytest.skip(f"this JAX build ({jax.__version__}) cannot run multi-process on CPU: {line}")
    for pid, (code, err) in enumerate(results):
        assert code == 0, (
            f"process {pid} ({'still running' if code is None else code}):\n{err[-4000:]}"
        )
    runs = [_load(Path(f"{out}.{pid}")) for pid in (0, 1)]
    for pid, r in enumerate(runs):
        assert r["process_index"] == pid and r["device_count"] == 4 and r["mesh_size"] == 4
        assert r["rows"] == slice(4 * pid, 4 * pid + 4)  # each process holds its half
    assert runs[0]["run"]["loss"] == runs[1]["run"]["loss"]
    # process 0 wrote the checkpoint, every process resumed from it
    assert [r["resumed"]["iteration"] for r in runs] == [6, 6]
    assert sorted(p.name for p in Path(f"{out}.ckpt").iterdir()) == [
        "epoch_001.json",
        "epoch_001.npz",
    ]
    _assert_same_run(single[4], runs[0]["run"], "2 processes x 2 devices")


# ------------------------------------------------------------- in this process (1 device)


def test_make_mesh_on_local_devices():
    mesh = parallel.make_mesh()
    assert mesh.axis_names == ("data",) and mesh.size == jax.local_device_count()
    assert parallel.make_mesh(1, batch_size=7).size == 1
    with pytest.raises(ValueError, match="num_devices=.* but this process has only"):
        parallel.make_mesh(jax.local_device_count() + 1)
    with pytest.raises(ValueError, match="num_devices must be a positive int"):
        parallel.make_mesh(0)
    assert parallel.process_slice(parallel.make_mesh(1), 5) == slice(0, 5)


def test_replicate_and_shard_batch_on_one_device():
    mesh = parallel.make_mesh(1)
    tree = parallel.replicate({"w": jnp.ones(3), "k": jax.random.key(0), "n": np.int32(2)}, mesh)
    for leaf in jax.tree_util.tree_leaves(tree):
        assert leaf.sharding == parallel.replicated_sharding(mesh)
    X, y = parallel.shard_batch(mesh, np.zeros((4, 2)), np.arange(4))
    assert X.sharding == parallel.batch_sharding(mesh) and y.shape == (4,)
    with pytest.raises(ValueError, match="must have 4 rows"):
        parallel.put_batch(mesh, [np.zeros((3, 2))], 4)


def test_initialize_distributed_arguments():
    assert parallel.initialize_distributed() is False  # single process: nothing to do
    assert parallel.initialize_distributed(None, 1, 0) is False
    with pytest.raises(ValueError, match="coordinator_address"):
        parallel.initialize_distributed(None, 2, 0)
    with pytest.raises(ValueError, match="needs coordinator_address, num_processes and"):
        parallel.initialize_distributed("127.0.0.1:1234", 2, None)
    with pytest.raises(ValueError, match="process_id must be in"):
        parallel.initialize_distributed("127.0.0.1:1234", 2, 2)
    # JAX gave an IndexError traceback for the first and waited in silence on the last.
    for address in ("notahost", "127.0.0.1:", ":1234", "127.0.0.1:abc", "127.0.0.1:99999"):
        with pytest.raises(ValueError, match="must be 'host:port' with a port in 1..65535"):
            parallel.initialize_distributed(address, 2, 0)
    assert parallel.is_primary()


def test_compute_dtype_and_casts():
    assert parallel.resolve_compute_dtype(None) is None
    assert parallel.resolve_compute_dtype("float32") is None
    assert parallel.resolve_compute_dtype("bfloat16") == jnp.bfloat16
    with pytest.raises(ValueError, match="compute_dtype"):
        parallel.resolve_compute_dtype("int8")
    with pytest.raises(ValueError, match="compute_dtype"):
        parallel.resolve_compute_dtype("float13")
    tree = {"w": jnp.ones(2, jnp.float32), "n": jnp.ones(2, jnp.int32)}
    cast = parallel.cast_floating(tree, jnp.bfloat16)
    assert cast["w"].dtype == jnp.bfloat16 and cast["n"].dtype == jnp.int32


def _as_two_processes(monkeypatch, other: dict) -> None:
    """Make :func:`parallel.differing_across_processes` see two processes, the other one
    holding ``other``: what it would send is recorded by running it as that process first."""
    from jax.experimental import multihost_utils

    sent: list[np.ndarray] = []
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(
        multihost_utils,
        "process_allgather",
        lambda x: sent.append(np.asarray(x)) or np.stack([x, x]),
    )
    assert parallel.differing_across_processes(other) == []
    replies = iter(sent)
    monkeypatch.setattr(
        multihost_utils, "process_allgather", lambda x: np.stack([np.asarray(x), next(replies)])
    )


def test_differing_across_processes_names_each_setting_the_processes_disagree_on(monkeypatch):
    """Processes given another seed or learning rate trained replicas apart silently (or
    failed in JAX with a 200-line traceback): each differing setting is named."""
    mine = {"solver.seed": 0, "solver.optim_config": {"learning_rate": 0.1, "momentum": 0.9},
            "model.widths": [4, 8]}  # fmt: skip
    theirs = {
        **mine,
        "solver.seed": 5,
        "solver.optim_config": {"momentum": 0.9, "learning_rate": 0.01},
    }
    _as_two_processes(monkeypatch, theirs)
    assert parallel.differing_across_processes(mine) == ["solver.optim_config", "solver.seed"]
    same_in_another_order = {"solver.optim_config": {"momentum": 0.9, "learning_rate": 0.1},
                             "model.widths": [4, 8], "solver.seed": 0}  # fmt: skip
    _as_two_processes(monkeypatch, same_in_another_order)
    assert parallel.differing_across_processes(mine) == []
    _as_two_processes(monkeypatch, {**mine, "model.depth": 3})  # other code, other names
    assert parallel.differing_across_processes(mine) == sorted(mine)


@pytest.mark.parametrize("differ", [["data.fingerprint"], ["solver.seed"]])
def test_processes_with_other_data_are_told_so_not_told_to_fix_their_flags(monkeypatch, differ):
    """Same flags, other images: the line named 'data.fingerprint' as a flag to make equal."""
    from jcnn import solver_checkpoints

    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(solver_checkpoints, "identity", lambda s: {"data": {}, "solver": {}})
    monkeypatch.setattr(parallel, "differing_across_processes", lambda fields: differ)
    with pytest.raises(solver_checkpoints.ProcessesDifferError) as info:
        solver_checkpoints.check_same_in_every_process(None)
    message = str(info.value)
    if differ == ["data.fingerprint"]:
        assert message.startswith("the processes of this run loaded different training or "
                                  "validation data (data.fingerprint differs)")  # fmt: skip
        assert "flags" not in message
    else:
        assert message.startswith("the processes of this run were given different solver.seed")


def test_an_app_names_the_flags_its_processes_were_given_differently(monkeypatch):
    """Two processes given different --learning_rate stopped naming the Solver's internal
    'solver.optim_config'; the app names the flag, and ignores those that say where each
    process runs (--process_id, --data_dir)."""
    from experiments import processes, recipes, settings
    from experiments.errors import UsageFailure

    mine = settings.flag_values(recipes.VGGRecipe(learning_rate=0.1, process_id=0))
    theirs = {**mine, "learning_rate": 0.01, "process_id": 1, "data_dir": "/elsewhere"}
    shared = {n: theirs[n] for n, o in settings.options(recipes.VGGRecipe).items()
              if not o.may_change_on_resume}  # fmt: skip
    _as_two_processes(monkeypatch, shared)
    with pytest.raises(UsageFailure, match=r"given different --learning_rate: start every"):
        processes.check_same_flags(mine, recipes.VGGRecipe)
    _as_two_processes(monkeypatch, {**shared, "learning_rate": 0.1})
    processes.check_same_flags(mine, recipes.VGGRecipe)
