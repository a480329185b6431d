"""jcnn.files: atomic writes, digests and the one JSON policy."""

import hashlib
import json
import math

import numpy as np
import pytest

from jcnn import files


def test_atomic_write_replaces_whole_file_with_mode_0644(tmp_path):
    dest = tmp_path / "sub" / "out.bin"
    files.atomic_write(dest, lambda f: f.write(b"old"))
    files.atomic_write(dest, lambda f: f.write(b"new contents"))
    assert dest.read_bytes() == b"new contents"
    assert dest.stat().st_mode & 0o777 == 0o644
    assert sorted(p.name for p in dest.parent.iterdir()) == ["out.bin"]


def test_atomic_write_failure_keeps_old_file_and_leaves_no_temporary(tmp_path):
    dest = tmp_path / "out.txt"
    dest.write_text("kept")

    def fail(f):
        f.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        files.atomic_write(dest, fail)
    assert dest.read_text() == "kept"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_file_digest_matches_hashlib(tmp_path):
    data = bytes(range(256)) * 5000
    (tmp_path / "f").write_bytes(data)
    assert files.file_digest(tmp_path / "f") == hashlib.sha256(data).hexdigest()
    assert files.file_digest(tmp_path / "f", "md5") == hashlib.md5(data).hexdigest()


def test_json_policy_writes_strict_json_with_null_for_non_finite():
    obj = {
        "nan": float("nan"),
        "inf": [math.inf, -math.inf, 1.5],
        "np": np.float32(0.25),
        "arr": np.arange(3),
        "dtype": np.dtype("float32"),
        "tuple": (1, 2),
    }
    text = files.dumps(obj, sort_keys=True)
    assert "NaN" not in text and "Infinity" not in text
    back = json.loads(text)
    assert back == {
        "nan": None,
        "inf": [None, None, 1.5],
        "np": 0.25,
        "arr": [0, 1, 2],
        "dtype": "float32",
        "tuple": [1, 2],
    }
    assert files.to_json_values(obj) == back


def test_json_policy_refuses_objects_without_json_form():
    with pytest.raises(TypeError, match="not JSON-able"):
        files.dumps({"f": object()})


def test_write_json_round_trips(tmp_path):
    path = files.write_json(tmp_path / "a.json", {"x": [1, float("inf")]})
    assert json.loads(path.read_text()) == {"x": [1, None]}
