"""jcnn: convolutional networks in JAX with hand-written, proven backward passes."""

__version__ = "0.1.0"
