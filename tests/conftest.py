"""Gradient checks run in float64; enable it before any test builds an array.

jcnn's compiled CPU kernel is built into a temporary cache for the session (``JCNN_CACHE_DIR``).

Hypothesis profiles (property tests, e.g. tests/layers/test_fuzz.py): ``jcnn`` (default: a
few hundred examples in all, no deadline: each new shape compiles) and ``long`` (40 times as
many), chosen with ``HYPOTHESIS_PROFILE=long``.
"""

import os
import tempfile

# jcnn's CPU kernel (jcnn/native) is compiled on first use: into a fresh cache for the test
# session, inherited by the subprocesses that tests start.
os.environ.setdefault("JCNN_CACHE_DIR", tempfile.mkdtemp(prefix="jcnn-test-cache-"))

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
