"""jcnn.native: the compiled CPU transpose equals jnp.transpose wherever it runs, and jcnn
falls back to XLA, correctly, wherever the kernels cannot be built or used. (The batchnorm →
relu kernels are proven with the layer, in tests/layers/test_batchnorm.py.)"""

from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jcnn import native

ROOT = Path(__file__).resolve().parents[1]
HAVE_COMPILER = native._compiler() is not None and sys.platform.startswith("linux")
needs_compiler = pytest.mark.skipif(not HAVE_COMPILER, reason="no C++ compiler on this machine")


def _random(shape, dtype):
    return jax.random.normal(jax.random.PRNGKey(sum(shape)), shape, jnp.float32).astype(dtype)


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16, jnp.float32, jnp.float64])
@pytest.mark.parametrize(
    "shape", [(1, 1, 1, 1), (2, 3, 5, 7), (50, 32, 32, 3), (50, 8, 8, 300), (70, 4, 4, 16)]
)
def test_to_channel_major_is_the_transpose(shape, dtype):
    x = _random(shape, dtype)
    out = jax.jit(native.to_channel_major)(x)
    assert out.dtype == x.dtype
    np.testing.assert_array_equal(np.asarray(out), np.asarray(jnp.transpose(x, (3, 1, 2, 0))))


@needs_compiler
def test_kernel_is_built_cached_and_used_in_the_compiled_step():
    x = _random((4, 3, 3, 5), jnp.float32)
    hlo = jax.jit(native.to_channel_major).lower(x).compile().as_text()
    assert native.status() == "loaded"
    assert native.TARGET in hlo  # the custom call, not XLA's transpose
    cached = list(native.cache_dir().glob("kernels-*.so"))
    assert cached and not list(native.cache_dir().glob("*.tmp"))


def test_vmap_gives_the_batched_transpose():
    xs = _random((3, 4, 2, 5, 6), jnp.float32)
    batched = jax.jit(jax.vmap(native.to_channel_major))
    out = batched(xs)
    if HAVE_COMPILER:  # the kernel itself takes the batch as a leading dimension
        assert native.TARGET in batched.lower(xs).compile().as_text()
    np.testing.assert_array_equal(np.asarray(out), np.asarray(jnp.transpose(xs, (0, 4, 2, 3, 1))))
    unbatched = jax.vmap(native.to_channel_major, in_axes=None, axis_size=2)(xs[0])
    want = jnp.transpose(xs[0], (3, 1, 2, 0))
    np.testing.assert_array_equal(np.asarray(unbatched[1]), np.asarray(want))


def test_a_kernel_names_the_targets_its_library_has():
    with pytest.raises(ValueError, match=r"target must be one of \[.*'jcnn_to_channel_major'"):
        native.Kernel("jcnn_nothing", native.LIBRARIES["kernels"], lambda x: x, lambda x: x)


def test_rejects_anything_but_four_dimensions():
    with pytest.raises(ValueError, match=r"x must be \(N, H, W, C\), got shape \(2, 3\)"):
        native.to_channel_major(jnp.ones((2, 3)))


def test_nhwc_weight_gradient_in_float32_matches_the_reference():
    import jcnn.layers as L
    import jcnn.reference as R

    x = _random((6, 9, 9, 5), jnp.float32)
    w = _random((7, 5, 3, 3), jnp.float32) * 0.1
    b = jnp.zeros(7, jnp.float32)
    dout = _random((6, 9, 9, 7), jnp.float32)

    def vjp(module):
        def f(x, w):
            return module.conv2d(x, w, b, pad=1, layout="NHWC")

        return jax.jit(lambda x, w: jax.vjp(f, x, w)[1](dout))(x, w)

    for got, want in zip(vjp(L), vjp(R), strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-4)


# ------------------------------------------------------------------ fresh interpreters

PROBE = """
import json, warnings
warnings.simplefilter("always")
import jcnn, jax, jax.numpy as jnp, numpy as np
from jcnn import native
x = jax.random.normal(jax.random.PRNGKey(0), (4, 3, 3, 5))
with warnings.catch_warnings(record=True) as caught:
    out = jax.jit(native.to_channel_major)(x)
    out = jax.jit(native.to_channel_major)(x + 1) - 1   # a second trace: no second warning
print(json.dumps({
    "status": native.status(),
    "equal": bool(np.allclose(out, jnp.transpose(x, (3, 1, 2, 0)), atol=1e-6)),
    "warnings": [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)],
}))
"""


def _run_script(script: str, cache: Path | None = None, **env_extra: str) -> str:
    """Run ``script`` in a fresh interpreter; returns its stdout.

    ``cache``: a kernel cache of the test's own (the tests of building and caching); None:
    the test session's, where the kernels are built once for all. An ``XLA_FLAGS`` given is
    added to the session's flags (see conftest.py), not put in their place.
    """
    env = {k: v for k, v in os.environ.items() if k not in ("CXX", "JCNN_NATIVE")}
    if "XLA_FLAGS" in env_extra:
        env_extra["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {env_extra['XLA_FLAGS']}".strip()
    env.update(PYTHONPATH=str(ROOT), **env_extra)
    if cache is not None:
        env["JCNN_CACHE_DIR"] = str(cache)
    proc = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def _probe(cache: Path | None = None, **env_extra: str) -> dict:
    return json.loads(_run_script(PROBE, cache, **env_extra).strip().splitlines()[-1])


def _cache_holding_the_built_kernels(tmp_path: Path) -> Path:
    """A fresh cache folder holding a copy of the kernel library the session built (built
    now, in a fresh interpreter, if it was not yet): no test builds the same file twice."""
    assert _probe()["status"] == "loaded"
    (built,) = Path(os.environ["JCNN_CACHE_DIR"]).glob("kernels-*.so")
    cache = tmp_path / "cache"
    cache.mkdir()
    shutil.copy2(built, cache / built.name)
    return cache


def _copying_compiler(tmp_path: Path, library: bytes, build_s: float = 0.0) -> str:
    """A stand-in for ``$CXX`` whose builds write ``library`` (what the real compiler built
    this session) to their ``-o`` file after ``build_s`` seconds, each build adding a line to
    ``tmp_path / "builds.log"``, and whose ``--version`` is the real compiler's (so the cache's
    key is unchanged): for the tests of what happens around a build, which the real compiler
    spends ~10 s of CPU on."""
    real = shutil.which("c++") or shutil.which("g++")
    (tmp_path / "kernels.so").write_bytes(library)
    script = tmp_path / "cxx"
    script.write_text(
        "#!/bin/sh\n"
        f'[ "$1" = --version ] && exec {real} --version\n'
        f"echo build >> {tmp_path / 'builds.log'}\n"
        f"sleep {build_s}\n"
        'while [ "$#" -gt 1 ] && [ "$1" != -o ]; do shift; done\n'
        f'exec cp {tmp_path / "kernels.so"} "$2"\n'
    )
    script.chmod(0o755)
    return str(script)


def test_opt_out_uses_xla_and_says_so(tmp_path):
    result = _probe(tmp_path / "cache", JCNN_NATIVE="0")
    assert result == {"status": "opted-out", "equal": True, "warnings": []}


def test_without_a_compiler_falls_back_silently(tmp_path):
    result = _probe(tmp_path / "cache", PATH=str(tmp_path / "empty"))
    assert result == {"status": "no-compiler", "equal": True, "warnings": []}


def test_a_failed_build_warns_once_and_falls_back(tmp_path):
    result = _probe(tmp_path / "cache", CXX="/bin/false")
    assert result["status"].startswith("failed") and result["equal"]
    assert len(result["warnings"]) == 1 and "could not build" in result["warnings"][0]
    assert not list((tmp_path / "cache").glob("*"))  # no half-written library left behind


@needs_compiler
@pytest.mark.parametrize("damage", ["truncated", "overwritten"])
def test_a_damaged_cached_library_is_rebuilt_not_loaded(tmp_path, damage):
    """Loading a truncated shared library kills the process with a bus error inside dlopen;
    the cache's checksum is checked first."""
    cache = _cache_holding_the_built_kernels(tmp_path)
    (built,) = cache.glob("kernels-*.so")
    data = built.read_bytes()
    if damage == "truncated":
        built.write_bytes(data[: len(data) // 2])
    else:  # same size, other bytes
        built.write_bytes(data[:4096] + bytes(len(data) - 4096))
    result = _probe(cache, CXX=_copying_compiler(tmp_path, data))
    assert result["status"] == "loaded" and result["equal"]
    assert len(result["warnings"]) == 1 and "damaged" in result["warnings"][0]
    assert len(list(cache.glob("kernels-*.so"))) == 1  # the damaged one went
    assert _probe(cache)["warnings"] == []  # the rebuilt file verifies


@needs_compiler
def test_a_build_killed_midway_leaves_no_file_behind_for_long(tmp_path):
    """A SIGKILL during a build left its temporary file in the cache for good; one that no
    build can still be writing goes at the next load, one that may be a live build stays."""
    cache = _cache_holding_the_built_kernels(tmp_path)
    abandoned, live = cache / "kernels-abc.tmp", cache / "kernels-def.tmp"
    abandoned.touch()
    live.touch()
    an_hour_ago = time.time() - 3600
    os.utime(abandoned, (an_hour_ago, an_hour_ago))
    assert _probe(cache) == {"status": "loaded", "equal": True, "warnings": []}
    assert not abandoned.exists() and live.exists()


@needs_compiler
def test_processes_starting_at_once_build_the_library_once(tmp_path):
    """The first process to need the library builds it under the cache's lock; the other
    waits and loads that file (pytest-xdist's workers, a run's processes)."""
    (built,) = _cache_holding_the_built_kernels(tmp_path).glob("kernels-*.so")
    compiler = _copying_compiler(tmp_path, built.read_bytes(), build_s=2.0)
    cache = tmp_path / "empty-cache"
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: _probe(cache, CXX=compiler), range(2)))
    assert results == [{"status": "loaded", "equal": True, "warnings": []}] * 2
    assert (tmp_path / "builds.log").read_text() == "build\n"  # one build, not two
    assert [p.name for p in cache.glob("kernels-*.so")] == [built.name]


@needs_compiler
def test_a_cached_library_loads_without_waiting_for_a_build_lock(tmp_path):
    """A process found a good cached library and still waited (up to 300 s, silently) for
    the lock another process held: the cache is read first, the lock only taken to build."""
    import fcntl

    cache = _cache_holding_the_built_kernels(tmp_path)
    (built,) = cache.glob("kernels-*.so")
    with open(cache / f"{built.name.rsplit('-', 1)[0]}.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # as a process building it would
        start = time.monotonic()
        assert _probe(cache) == {"status": "loaded", "equal": True, "warnings": []}
        assert time.monotonic() - start < 60


@needs_compiler
def test_an_unlockable_cache_still_builds_and_loads(tmp_path):
    """A folder where the lock file goes (or a read-only cache): the build goes on
    without the lock."""
    (built,) = _cache_holding_the_built_kernels(tmp_path).glob("kernels-*.so")
    compiler = _copying_compiler(tmp_path, built.read_bytes())
    cache = tmp_path / "empty-cache"
    (cache / f"{built.name.rsplit('-', 1)[0]}.lock").mkdir(parents=True)
    assert _probe(cache, CXX=compiler) == {"status": "loaded", "equal": True, "warnings": []}
    assert (tmp_path / "builds.log").read_text() == "build\n"


@needs_compiler
def test_a_second_process_loads_the_cached_library(tmp_path):
    cache = _cache_holding_the_built_kernels(tmp_path)  # built by another process
    (built,) = cache.glob("kernels-*.so")
    stamp = built.stat().st_mtime_ns
    assert _probe(cache) == {"status": "loaded", "equal": True, "warnings": []}
    assert list(cache.glob("kernels-*.so")) == [built]
    assert built.stat().st_mtime_ns == stamp  # not rebuilt


SHARDED = """
import json
import jcnn, jcnn.layers, jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from jcnn import native
mesh = Mesh(np.array(jax.devices()), ("data",))
x = jax.random.normal(jax.random.PRNGKey(0), (8, 4, 4, 6))
xs = jax.device_put(x, NamedSharding(mesh, P("data")))
f = jax.jit(lambda x: native.to_channel_major(x) * 2)
out = f(xs)
hlo = f.lower(xs).compile().as_text()
bn = jax.jit(jax.grad(lambda x: jnp.sum(jcnn.layers.conv_bn_relu(
    x, jnp.ones((6, 6, 1, 1)), jnp.zeros(6), jnp.ones(6), jnp.zeros(6), jnp.zeros(6),
    jnp.ones(6), train=True, layout="NHWC")[0] ** 2)))
bn_hlo = bn.lower(xs).compile().as_text()
print(json.dumps({
    "bn_custom_call": "jcnn_batchnorm_relu" in bn_hlo,
    "devices": len(jax.devices()), "status": native.status(),
    "equal": bool(np.array_equal(out, jnp.transpose(x, (3, 1, 2, 0)) * 2)),
    "spec": [str(a) for a in out.sharding.spec],
    "all_gathers": hlo.count("all-gather"), "custom_call": native.TARGET in hlo,
}))
"""


def test_with_several_devices_the_kernel_transposes_each_devices_rows():
    out = _run_script(SHARDED, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    result = json.loads(out.strip().splitlines()[-1])
    assert result["devices"] == 2 and result["equal"]
    assert result["spec"] == ["None", "None", "None", "data"]  # the batch axis, now last
    assert result["all_gathers"] == 0
    assert result["custom_call"] == HAVE_COMPILER  # the kernel on each device's block
    assert not result["bn_custom_call"]  # statistics over the whole batch: XLA's twin
    assert result["status"] == ("loaded" if HAVE_COMPILER else "no-compiler")


DEBUG_NANS = """
import jcnn, jax, jax.numpy as jnp
from jcnn import native
jax.config.update("jax_debug_nans", True)
x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 5, 3))
f = jax.jit(lambda x, s: native.to_channel_major(x * s) * 0.0)
f(x, 1.0).block_until_ready()  # a first, finite call: later calls take JAX's fast path
try:
    f(x, jnp.inf)
except FloatingPointError as e:
    print("raised:", native.status(), e)
"""


def test_jax_debug_nans_still_checks_every_call():
    out = _run_script(DEBUG_NANS)
    expected = "loaded" if HAVE_COMPILER else "no-compiler"
    assert f"raised: {expected} invalid value (nan) encountered in mul" in out


def test_the_package_ships_and_builds_every_kernel_source():
    import fnmatch

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    shipped = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    patterns = shipped["package-data"]["jcnn.native"]
    here = Path(native.__file__).parent
    on_disk = sorted(p.name for p in here.iterdir() if p.suffix in (".cc", ".h"))
    assert on_disk == sorted(p.name for p in native.SOURCES + native.HEADERS)
    for name in on_disk:
        assert any(fnmatch.fnmatch(name, pattern) for pattern in patterns), name
