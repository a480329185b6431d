"""jcnn: convolutional networks in JAX with hand-written, proven backward passes.

Importing jcnn tunes the process for fast CPU training, each step with its own opt-out:

- one XLA option for fast CPU convolutions, if JAX has not started yet
  (:mod:`jcnn._xla_flags`; ``JCNN_XLA_FLAGS=0`` opts out; :data:`XLA_FLAGS_STATUS`);
- transparent huge pages for the malloc heap on Linux/glibc
  (:mod:`jcnn._hugepages`; ``JCNN_HUGEPAGES=0`` opts out; :data:`HUGEPAGES_STATUS`).
"""

from jcnn._hugepages import apply_hugepages as _apply_hugepages
from jcnn._xla_flags import apply_xla_flags as _apply_xla_flags

XLA_FLAGS_STATUS = _apply_xla_flags()
HUGEPAGES_STATUS = _apply_hugepages()

__version__ = "0.1.0"
