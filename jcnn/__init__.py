"""jcnn: convolutional networks in JAX with hand-written, proven backward passes.

Importing jcnn sets one XLA option for fast CPU convolutions if JAX has not started yet
(see :mod:`jcnn._xla_flags`; ``JCNN_XLA_FLAGS=0`` opts out).
"""

from jcnn._xla_flags import apply_xla_flags as _apply_xla_flags

XLA_FLAGS_STATUS = _apply_xla_flags()

__version__ = "0.1.0"
