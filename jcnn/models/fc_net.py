"""The cs231n fully connected net.

``{affine - [batchnorm] - relu - [dropout]} × (L − 1) - affine - softmax``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp

from jcnn.layers.losses import check_label_smoothing
from jcnn.models import _common as C


@dataclasses.dataclass(frozen=True)
class FullyConnectedNet(C.Model):
    """A fully connected net with ``len(hidden_dims)`` hidden layers.

    ``input_dim`` is the number of input features ``D`` (an int; inputs ``(N, d1, ..., dk)``
    are flattened, so CIFAR images with ``input_dim=3*32*32`` work as they are) or the shape
    of one example, e.g. ``(3, 32, 32)``.

    Parameters and state (``init`` returns ``(params, state)``)::

        params['fc{k}'] = {'w': (D_in, hidden_dims[k-1]), 'b', 'gamma', 'beta'}  # k = 1..K
        params['out']   = {'w': (hidden_dims[-1], num_classes), 'b'}
        state['fc{k}']  = {'running_mean', 'running_var'}

    (``gamma``/``beta`` and the state only with ``use_batchnorm``.) Dropout with
    probability ``dropout`` follows every hidden relu, layer ``k`` drawing its mask from
    ``jax.random.fold_in(key, k)``.
    """

    hidden_dims: tuple[int, ...]
    input_dim: int | tuple[int, ...] = 3 * 32 * 32
    num_classes: int = 10
    dropout: float = 0.0
    use_batchnorm: bool = False
    reg: float = 0.0
    weight_scale: float | str = 1e-2
    dtype: Any = jnp.float32
    layers: str = "jcnn"
    bn_momentum: float = 0.9
    bn_eps: float = 1e-5

    label_smoothing: float = 0.0

    def __post_init__(self):
        C.set_field(
            self, "hidden_dims", C.int_tuple("hidden_dims", self.hidden_dims, allow_empty=True)
        )
        if isinstance(self.input_dim, (tuple, list)):
            C.set_field(self, "input_dim", C.int_tuple("input_dim", self.input_dim))
        else:
            C.set_field(self, "input_dim", C.positive_int("input_dim", self.input_dim))
        C.set_field(self, "num_classes", C.positive_int("num_classes", self.num_classes))
        C.set_field(self, "dropout", C.dropout_rate("dropout", self.dropout))
        if not isinstance(self.use_batchnorm, bool):
            raise ValueError(f"use_batchnorm must be a bool, got {self.use_batchnorm!r}")
        C.set_field(self, "reg", C.nonnegative_float("reg", self.reg))
        C.set_field(self, "label_smoothing", check_label_smoothing(self.label_smoothing))
        C.set_field(self, "weight_scale", C.weight_scale_value("weight_scale", self.weight_scale))
        C.set_field(self, "dtype", C.float_dtype("dtype", self.dtype))
        C.choice("layers", self.layers, C.LAYERS)
        C.check_batchnorm_fields(self)
        C.check_weights_fit(self, ("hidden_dims",))

    @property
    def num_features(self) -> int:
        """``D``, the number of features of one example: ``input_dim`` or its product."""
        d = self.input_dim
        return d if isinstance(d, int) else math.prod(d)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The shape of one example: ``(D,)`` for an int ``input_dim``, else ``input_dim``."""
        d = self.input_dim
        return (d,) if isinstance(d, int) else d

    def check_input(self, X: Any, name: str = "X") -> None:
        """``X`` must be ``(N, ...)`` with ``prod(X.shape[1:]) == D`` when ``input_dim`` is an
        int ``D``, or exactly ``(N, *input_dim)`` when it is a shape.

        Args:
            X: array-like batch of inputs.
            name: the name the error message gives ``X``.

        Raises:
            ValueError: naming ``name``, if ``X`` does not have that shape.
        """
        if not isinstance(self.input_dim, int):
            return super().check_input(X, name)
        shape = tuple(jnp.shape(X))
        if len(shape) < 2 or math.prod(shape[1:]) != self.input_dim:
            raise ValueError(
                f"{name} has shape {shape} but FullyConnectedNet expects (N, d1, ..., dk) with "
                f"d1·...·dk = input_dim = {self.input_dim}"
            )

    def layer_names(self) -> list[str]:
        """The hidden layers' names, ``['fc1', ..., 'fcK']`` for ``K = len(hidden_dims)``."""
        return [f"fc{k}" for k in range(1, len(self.hidden_dims) + 1)]

    def weight_shapes(self) -> dict[str, tuple[int, ...]]:
        """``{layer name: shape of its 'w'}`` in forward order.

        Returns:
            ``{'fc1': (D, hidden_dims[0]), 'fc2': (hidden_dims[0], hidden_dims[1]), ...,
            'out': (hidden_dims[-1], num_classes)}`` (``'out': (D, num_classes)`` with no hidden
            layer), ``D`` being :attr:`num_features`.
        """
        shapes: dict[str, tuple[int, ...]] = {}
        d_in = self.num_features
        for name, d in zip(self.layer_names(), self.hidden_dims, strict=True):
            shapes[name] = (d_in, d)
            d_in = d
        shapes["out"] = (d_in, self.num_classes)
        return shapes

    def batchnorm_layers(self) -> tuple[str, ...]:
        """Names of the layers followed by batchnorm: every hidden layer with ``use_batchnorm``.

        Returns:
            ``('fc1', ..., 'fcK')`` with ``use_batchnorm``, else ``()``.
        """
        return tuple(self.layer_names()) if self.use_batchnorm else ()

    def apply(self, params, state, X, *, train: bool = False, key=None):
        """Class scores ``(N, num_classes)`` and the new state (updated running statistics
        when ``train``; unchanged otherwise). ``key`` drives dropout when ``train``.

        Args:
            params: the parameters, as :meth:`init` returns them.
            state: the batchnorm running statistics, as :meth:`init` returns them.
            X: inputs ``(N, d1, ..., dk)`` with ``d1·...·dk = D`` (int ``input_dim``) or
                ``(N, *input_dim)``, flattened to ``(N, D)`` and cast to the parameters' dtype.
            train: training mode: dropout on (if ``dropout > 0``), batchnorm on batch statistics.
            key: a JAX PRNG key; needed only when ``train`` and ``dropout > 0``; hidden layer ``k``
                uses ``jax.random.fold_in(key, k)``.

        Returns:
            ``(scores, new_state)``: ``scores`` ``(N, num_classes)``; ``new_state[name] =
            {'running_mean': (M,), 'running_var': (M,)}`` per hidden layer with ``use_batchnorm``
            (``{}`` without).

        Raises:
            ValueError: if ``train`` with ``dropout > 0`` and ``key`` is None;
                if ``X`` does not have the shape above (:meth:`check_input`); from the layers if
                ``params`` or ``state`` hold arrays of the wrong shapes.
            KeyError: if ``params`` or ``state`` lacks a layer.
            TypeError: from ``jax.random.fold_in`` if ``train`` with ``dropout > 0`` and
                ``key`` is not a PRNG key.
        """
        key = self._dropout_key(key, train, self.dropout)
        x = self._prepare(params, X)
        x = x.reshape(x.shape[0], math.prod(x.shape[1:]))  # not -1: a batch may be empty
        new_state: dict[str, dict[str, jax.Array]] = {}
        scores = C.dense_head(
            self, params, state, x, self.layer_names(), new_state, train=train, key=key
        )
        return scores, new_state
