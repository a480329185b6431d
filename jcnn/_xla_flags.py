"""XLA settings jcnn applies when it is imported, before JAX starts its backend.

On the CPU, jaxlib 0.10 sends float32 convolutions to YNNPACK, which is several times slower
than XLA's own (Eigen) path for the convolutions of these networks; the flag below takes
only convolutions away from YNNPACK (see docs/performance.md). It is applied only when

- the user's ``XLA_FLAGS`` does not mention the same option (theirs wins, untouched),
- ``JCNN_XLA_FLAGS`` is not ``0`` (the opt-out),
- the installed jaxlib is one the flag was measured on (an unknown XLA flag aborts the
  process at start-up, so it is never set on other versions), and
- JAX's backend has not started yet; otherwise a warning says so, once.
"""

from __future__ import annotations

import importlib.metadata
import os
import sys
import warnings

CPU_FLAG = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"
_OPTION = CPU_FLAG.split("=")[0].lstrip("-")
MEASURED_JAXLIB = ("0.10.",)  # version prefixes whose XLA knows the option
OPT_OUT = "JCNN_XLA_FLAGS"


def _jaxlib_version() -> str | None:
    try:
        return importlib.metadata.version("jaxlib")
    except importlib.metadata.PackageNotFoundError:
        return None


def _backend_started() -> bool:
    if "jax" not in sys.modules:
        return False
    try:
        from jax._src import xla_bridge

        return bool(getattr(xla_bridge, "_backends", {}))
    except Exception:  # a private detail; if it moves, assume the worst
        return True


def apply_xla_flags() -> str:
    """Add :data:`CPU_FLAG` to ``XLA_FLAGS`` if it is safe and useful; returns what happened:
    ``'applied'``, ``'user'``, ``'opted-out'``, ``'unsupported-jaxlib'`` or ``'too-late'``."""
    if os.environ.get(OPT_OUT, "1") == "0":
        return "opted-out"
    current = os.environ.get("XLA_FLAGS", "")
    if _OPTION in current:
        return "user"
    version = _jaxlib_version()
    if version is None or not version.startswith(MEASURED_JAXLIB):
        return "unsupported-jaxlib"
    if _backend_started():
        warnings.warn(
            "jcnn was imported after JAX started its backend, so it could not set "
            f"XLA_FLAGS={CPU_FLAG} (convolutions on the CPU may be several times slower). "
            "Import jcnn before using JAX, or set that flag yourself; "
            f"{OPT_OUT}=0 silences this.",
            RuntimeWarning,
            stacklevel=3,
        )
        return "too-late"
    os.environ["XLA_FLAGS"] = f"{current} {CPU_FLAG}".strip()
    return "applied"
