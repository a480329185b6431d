"""jcnn: convolutional networks in JAX with hand-written, proven backward passes.

Importing jcnn sets one thing for the process: it adds an option to ``XLA_FLAGS``, if JAX
has not started yet, which changes only which code XLA runs convolutions with on the CPU
(:mod:`jcnn._xla_flags`; ``JCNN_XLA_FLAGS=0`` opts out; :data:`XLA_FLAGS_STATUS`).

Import leaves the process's memory alone. Tuning it for fast CPU training (huge pages for
the malloc heap on Linux/glibc, which changes how the whole process allocates and frees
memory) is an explicit call, ``import jcnn.cpu; jcnn.cpu.tune()`` (:func:`jcnn.cpu.tune`).
"""

from jcnn._xla_flags import apply_xla_flags as _apply_xla_flags

XLA_FLAGS_STATUS = _apply_xla_flags()

__version__ = "0.1.0"
