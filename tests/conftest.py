"""Gradient checks run in float64; enable it before any test builds an array.

jcnn's compiled CPU kernel is built into a temporary cache for the session (``JCNN_CACHE_DIR``).

Hypothesis profiles (property tests, e.g. tests/layers/test_fuzz.py): ``jcnn`` (default: a
few hundred examples in all, no deadline: each new shape compiles) and ``long`` (40 times as
many), chosen with ``HYPOTHESIS_PROFILE=long``.
"""

import os
import shutil
import tempfile

_MADE_HERE: list[str] = []


def _fresh_folder(variable: str, prefix: str) -> None:
    """``variable`` names a new temporary folder unless it is set already (by the pytest-xdist
    controller, whose environment its workers inherit, or by the user)."""
    if variable not in os.environ:
        os.environ[variable] = tempfile.mkdtemp(prefix=prefix)
        _MADE_HERE.append(os.environ[variable])


# The files that take longest (CPU seconds of a whole run, `pytest -n 2 --durations=40`), run
# first: `--dist loadfile` hands files to the two workers in collection order, so one of
# these started last kept one worker busy for a minute after the other had finished.
_LONGEST_FIRST = (
    "tests/test_transformations.py",
    "tests/experiments/test_parallel_apps.py",
    "tests/experiments/test_benchmark.py",
    "tests/test_onednn.py",
    "tests/test_parallel.py",
    "tests/experiments/test_airbench_app.py",
    "tests/models/test_airbench.py",
    "tests/layers/test_conv.py",
    "tests/test_readme.py",
    "tests/test_train.py",
    "tests/experiments/test_predict.py",
    "tests/layers/test_input_rule.py",
    "tests/layers/test_pool.py",
    "tests/test_native.py",
)


def pytest_collection_modifyitems(items) -> None:
    """The longest files first (:data:`_LONGEST_FIRST`); the rest in their order."""
    rank = {name: i for i, name in enumerate(_LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))


def pytest_sessionfinish(session) -> None:
    """The process that made the temporary folders removes them once every test has run (the
    pytest-xdist controller, after its workers)."""
    if not hasattr(session.config, "workerinput"):
        for folder in _MADE_HERE:
            shutil.rmtree(folder, ignore_errors=True)


# jcnn's CPU kernels (jcnn/native) are compiled on first use: into a fresh cache for the test
# session, inherited by the subprocesses that tests start.
_fresh_folder("JCNN_CACHE_DIR", "jcnn-test-cache-")

# Compiling is most of a test's time (small programs, run once or twice), so for the test
# session and its subprocesses:
# - XLA compiles for speed of compiling: LLVM's expensive passes off, LLVM at -O1, XLA's
#   older loop emitters for fusions (the slowest second-order test 25 -> 18 s alone, random
#   draws' kernels 6x faster to compile; the HLO passes, which tests inspect, run as usual,
#   and the code runs within ~20% of the default's: -O0 runs ~8x slower, which the
#   finite-difference tests feel);
# - JAX's persistent compilation cache is on, in a fresh folder, so the apps and workers that
#   tests start, and the two pytest-xdist workers, compile each program once between them;
#   every program, however quick to compile: each subprocess would otherwise compile the
#   same hundreds of small ones again (the app tests: 13% less CPU).
_FAST_COMPILE = (
    "--xla_llvm_disable_expensive_passes=true",
    "--xla_backend_optimization_level=1",
    "--xla_cpu_use_fusion_emitters=false",
)
_given = os.environ.get("XLA_FLAGS", "")
os.environ["XLA_FLAGS"] = " ".join(
    [_given] + [f for f in _FAST_COMPILE if f.split("=")[0] not in _given]
).strip()
_fresh_folder("JAX_COMPILATION_CACHE_DIR", "jcnn-test-xla-")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

try:
    from hypothesis import HealthCheck, settings
except ImportError:  # pragma: no cover - hypothesis is in the test extra
    pass
else:
    _slow = [HealthCheck.too_slow, HealthCheck.data_too_large]
    settings.register_profile("jcnn", max_examples=25, deadline=None, suppress_health_check=_slow)
    settings.register_profile("long", max_examples=1000, deadline=None, suppress_health_check=_slow)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "jcnn"))
