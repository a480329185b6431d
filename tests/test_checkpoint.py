"""Checkpoints: npz + JSON sidecar, atomic, no pickle, strict on load."""

import io
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jcnn import checkpoint as ck
from jcnn.files import file_digest


def _tree():
    params = {
        "conv1_1": {"w": jnp.arange(24.0).reshape(2, 3, 2, 2), "b": jnp.ones(2, jnp.float32)},
        "out": {"w": jnp.full((3, 4), 0.5, jnp.float64), "b": jnp.zeros(4)},
    }
    opt_state = optax.adam(1e-3).init(params)
    return {
        "params": params,
        "state": {"bn": {"running_mean": jnp.zeros(3)}},
        "opt_state": opt_state,
    }


def _same(a, b):
    leaves = jax.tree_util.tree_leaves(jax.tree_util.tree_map(np.array_equal, a, b))
    return all(leaves) and jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)


def test_round_trip(tmp_path):
    tree = _tree()
    path = ck.save_checkpoint(tmp_path / "run" / "epoch_001", tree, {"epoch": 1, "acc": [0.5]})
    assert path == tmp_path / "run" / "epoch_001.npz"
    assert sorted(p.name for p in path.parent.iterdir()) == ["epoch_001.json", "epoch_001.npz"]
    back, meta = ck.load_checkpoint(path, tree)
    assert _same(back, tree)
    assert meta["epoch"] == 1 and meta["acc"] == [0.5]
    assert "params/conv1_1/w" in meta["keys"] and "opt_state/0/mu/out/b" in meta["keys"]
    assert back["params"]["out"]["w"].dtype == np.float64
    # Plain npz of named arrays, readable without pickle.
    with np.load(path, allow_pickle=False) as f:
        np.testing.assert_array_equal(f["params/conv1_1/w"], tree["params"]["conv1_1"]["w"])
        assert f["opt_state/0/count"].dtype == np.int32
    assert json.loads(ck.sidecar_path(path).read_text())["epoch"] == 1


def test_overwrite_is_atomic(tmp_path, monkeypatch):
    tree = _tree()
    path = ck.save_checkpoint(tmp_path / "c.npz", tree, {"v": 1})
    before = path.read_bytes()

    def crash(f, **arrays):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(OSError, match="disk full"):
        ck.save_checkpoint(path, tree, {"v": 2})
    assert path.read_bytes() == before  # the old checkpoint is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.json", "c.npz"]  # no temp left
    assert ck.load_checkpoint(path, tree)[1]["v"] == 1


def test_load_is_strict(tmp_path):
    tree = _tree()
    path = ck.save_checkpoint(tmp_path / "c", tree)
    bigger = {**tree, "extra": {"w": jnp.zeros(2)}}
    with pytest.raises(ValueError, match=r"missing \['extra/w'\]"):
        ck.load_checkpoint(path, bigger)
    smaller = {"params": tree["params"]}
    with pytest.raises(ValueError, match="unexpected"):
        ck.load_checkpoint(path, smaller)
    reshaped = jax.tree_util.tree_map(lambda x: x, tree)
    reshaped["params"]["out"]["b"] = jnp.zeros(5)
    with pytest.raises(ValueError, match=r"params/out/b is float64\[4\], expected float64\[5\]"):
        ck.load_checkpoint(path, reshaped)
    with pytest.raises(FileNotFoundError):
        ck.load_checkpoint(tmp_path / "nope", tree)


def test_keys_must_be_path_safe(tmp_path):
    with pytest.raises(ValueError, match="'a/b'"):
        ck.save_checkpoint(tmp_path / "c", {"a/b": jnp.zeros(1)})
    assert ck.flatten_tree({"x": [jnp.ones(1), {"y": jnp.zeros(2)}]}).keys() == {"x/0", "x/1/y"}


def test_checksums_catch_truncation_and_tampering(tmp_path):
    tree = _tree()
    path = ck.save_checkpoint(tmp_path / "c", tree, {"iteration": 3})
    meta = ck.verify_checkpoint(path)
    assert meta["npz_sha256"] == file_digest(path) and len(meta["sidecar_sha256"]) == 64
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(ck.CorruptCheckpointError, match="fails its checksum"):
        ck.load_checkpoint(path, tree)
    with pytest.raises(ck.CorruptCheckpointError, match="unreadable"):
        ck.load_checkpoint(path, tree, verify=False)  # not even a zip any more
    path.write_bytes(good)
    side = ck.sidecar_path(path)
    side.write_text(side.read_text().replace('"iteration": 3', '"iteration": 4'))
    with pytest.raises(ck.CorruptCheckpointError, match="sidecar .* fails its checksum"):
        ck.load_checkpoint(path, tree)
    side.write_text("{ truncated")
    with pytest.raises(ck.CorruptCheckpointError, match="unreadable"):
        ck.verify_checkpoint(path)
    with pytest.raises(ValueError, match="reserved"):
        ck.save_checkpoint(tmp_path / "d", tree, {"npz_sha256": "x"})


def test_latest_checkpoint_skips_and_sets_aside_corrupt_ones(tmp_path):
    tree = _tree()
    for it in (2, 4, 6):
        ck.save_checkpoint(tmp_path / f"step_{it}", tree, {"iteration": it})
    (tmp_path / "step_8.npz").write_bytes(b"no sidecar: an incomplete write, ignored")
    assert ck.latest_checkpoint(tmp_path)[1]["iteration"] == 6
    (tmp_path / "step_6.npz").write_bytes(b"garbage")
    with pytest.warns(ck.CorruptCheckpointWarning, match="step_6.npz fails its checksum"):
        path, meta = ck.latest_checkpoint(tmp_path)
    assert path == tmp_path / "step_4.npz" and meta["iteration"] == 4
    assert (tmp_path / "step_6.npz.corrupt").is_file() and not (tmp_path / "step_6.json").exists()
    assert ck.latest_checkpoint(tmp_path / "missing") is None


def test_stale_temporaries_are_removed(tmp_path):
    (tmp_path / ".epoch_001.npz.x1y2.tmp").write_bytes(b"half")
    (tmp_path / "keep.npz").write_bytes(b"x")
    assert [p.name for p in ck.remove_stale_temporaries(tmp_path)] == [".epoch_001.npz.x1y2.tmp"]
    assert [p.name for p in tmp_path.iterdir()] == ["keep.npz"]


def test_config_differences_accepts_a_key_only_when_the_saved_side_lacks_it():
    now = {"data": {"num_train": 40, "fingerprint": "sha256:b"}}
    older = {"data": {"num_train": 40}}  # made before fingerprints existed
    assert ck.config_differences(older, now) == {"data.fingerprint": ("<absent>", "sha256:b")}
    assert not ck.config_differences(older, now, accept_absent={"data.fingerprint"})
    other = {"data": {"num_train": 40, "fingerprint": "sha256:a"}}
    assert ck.config_differences(other, now, accept_absent={"data.fingerprint"}) == {
        "data.fingerprint": ("sha256:a", "sha256:b")
    }
    assert "data.fingerprint" in ck.IDENTITY_ACCEPT_ABSENT


def test_pruning_deletes_orphaned_npz_files_older_than_the_newest_complete_one(tmp_path):
    """A kill while pruning (sidecar deleted, .npz not yet) leaves an orphan: the next prune
    deletes it, so no more than --keep_checkpoints remain; a newer sidecar-less one stays."""
    for name in ("epoch_001", "epoch_002", "step_00000010"):
        (tmp_path / f"{name}.npz").write_bytes(b"")
        (tmp_path / f"{name}.json").write_text("{}")
    for orphan in ("epoch_000", "step_00000003", "step_00000009"):
        (tmp_path / f"{orphan}.npz").write_bytes(b"")
    (tmp_path / "step_00000011.npz").write_bytes(b"")  # newer than every complete one
    (tmp_path / "step_00000002.npz.corrupt").write_bytes(b"")  # moved aside: kept
    removed = ck.prune_run_checkpoints(tmp_path, iterations_per_epoch=4, keep_epochs=1)
    assert sorted(p.name for p in removed) == [
        "epoch_000.npz", "epoch_001.npz", "step_00000003.npz", "step_00000009.npz",
    ]  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "epoch_002.json", "epoch_002.npz", "step_00000002.npz.corrupt",
        "step_00000010.json", "step_00000010.npz", "step_00000011.npz",
    ]  # fmt: skip


def test_a_sidecar_that_is_not_a_regular_file_is_corrupt_not_read(tmp_path):
    """A FIFO at a sidecar's name blocked the app for ever in its read."""
    import threading

    from jcnn.checkpoint import CorruptCheckpointError, read_sidecar, save_checkpoint

    path = save_checkpoint(tmp_path / "epoch_001.npz", {"w": np.ones(3)}, {"iteration": 1})
    side = tmp_path / "epoch_001.json"
    side.unlink()
    os.mkfifo(side)
    raised: list[BaseException] = []

    def read() -> None:
        try:
            read_sidecar(path)
        except CorruptCheckpointError as e:
            raised.append(e)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(10)
    assert not reader.is_alive(), "read_sidecar blocked on a FIFO"
    assert "is not a regular file" in str(raised[0])


def test_a_checkpoint_that_is_a_link_to_a_device_is_named_for_what_it_is(tmp_path):
    """epoch_002.npz as a link to /dev/zero was reported as "missing"."""
    path = ck.save_checkpoint(tmp_path / "c.npz", _tree(), {"iteration": 3})
    path.unlink()
    path.symlink_to("/dev/zero")
    with pytest.raises(ck.CorruptCheckpointError, match=r"c.npz is not a regular file \(its"):
        ck.verify_checkpoint(path)
    path.unlink()
    with pytest.raises(ck.CorruptCheckpointError, match=r"c.npz is missing \(its sidecar"):
        ck.verify_checkpoint(path)


def test_an_array_header_is_checked_before_its_data_is_read(tmp_path):
    """A member whose .npy header claims a huge shape made np.load allocate it (a MemoryError
    traceback): the header is compared with the expected leaf first."""
    import zipfile

    tree = {"w": jnp.ones((3, 4), jnp.float32)}
    path = ck.save_checkpoint(tmp_path / "epoch_001", tree, {"epoch": 1})
    header = io.BytesIO()
    np.lib.format.write_array_header_2_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": (10**7, 10**6)}
    )
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("w.npy", header.getvalue() + bytes(48))
    with pytest.raises(ValueError, match=r"w is float32\[10000000, 1000000\], expected "
                       r"float32\[3, 4\]"):  # fmt: skip
        ck.load_checkpoint(path, tree, verify=False)
    np.lib.format.write_array_header_2_0(  # the right header, too little data
        header := io.BytesIO(), {"descr": "<f4", "fortran_order": False, "shape": (3, 4)}
    )
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("w.npy", header.getvalue() + bytes(8))
    with pytest.raises(ck.CorruptCheckpointError, match="w is unreadable"):
        ck.load_checkpoint(path, tree, verify=False)
