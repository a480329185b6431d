"""The cs231n three-layer ConvNet: conv - relu - 2×2 max pool - affine - relu - affine - softmax."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

from jcnn.layers.losses import check_label_smoothing
from jcnn.models import _common as C


@dataclasses.dataclass(frozen=True)
class ThreeLayerConvNet(C.Model):
    """conv (stride 1, 'same' padding ``(filter_size − 1) // 2``) - relu - 2×2 max pool -
    affine - relu - affine - softmax, on NCHW images of shape ``input_dim``.

    Parameters (``init`` returns ``(params, state)``, ``state`` is ``{}``)::

        params['conv1'] = {'w': (num_filters, C, filter_size, filter_size), 'b': (num_filters,)}
        params['fc1']   = {'w': (num_filters·H'·W', hidden_dim), 'b': (hidden_dim,)}
        params['out']   = {'w': (hidden_dim, num_classes), 'b': (num_classes,)}

    ``weight_scale`` is the std of the Gaussian weights or ``'he'`` (``sqrt(2 / fan_in)``).
    ``layers='reference'`` builds the same net on the autodiff twins. ``layout`` is the
    activation layout inside (``'auto'``: NHWC when the impls allow, see
    :func:`jcnn.models._common.resolve_layout`); inputs and parameters do not depend on it.
    """

    input_dim: tuple[int, int, int] = (3, 32, 32)
    num_filters: int = 32
    filter_size: int = 7
    hidden_dim: int = 100
    num_classes: int = 10
    weight_scale: float | str = 1e-3
    reg: float = 0.0
    dtype: Any = jnp.float32
    layers: str = "jcnn"
    conv_impl: str = "auto"
    pool_impl: str = "fast"
    layout: str = "auto"

    label_smoothing: float = 0.0

    def __post_init__(self):
        input_dim = C.int_tuple("input_dim", self.input_dim)
        if len(input_dim) != 3:
            raise ValueError(f"input_dim must be (C, H, W), got {self.input_dim!r}")
        C.set_field(self, "input_dim", input_dim)
        C.set_field(self, "num_filters", C.positive_int("num_filters", self.num_filters))
        C.set_field(self, "filter_size", C.positive_int("filter_size", self.filter_size))
        C.set_field(self, "hidden_dim", C.positive_int("hidden_dim", self.hidden_dim))
        C.set_field(self, "num_classes", C.positive_int("num_classes", self.num_classes))
        C.set_field(self, "weight_scale", C.weight_scale_value("weight_scale", self.weight_scale))
        C.set_field(self, "reg", C.nonnegative_float("reg", self.reg))
        C.set_field(self, "label_smoothing", check_label_smoothing(self.label_smoothing))
        C.set_field(self, "dtype", C.float_dtype("dtype", self.dtype))
        C.choice("layers", self.layers, C.LAYERS)
        C.choice("conv_impl", self.conv_impl, C.CONV_IMPLS)
        C.choice("pool_impl", self.pool_impl, C.POOL_IMPLS)
        C.set_field(self, "layout", C.resolve_layout(self.layout, self.conv_impl, self.pool_impl))
        _, h, w = input_dim
        for name, size in (("H", h), ("W", w)):
            conv = size + 2 * self.pad - self.filter_size + 1
            if conv < 2:
                raise ValueError(
                    f"filter_size={self.filter_size} leaves a {name} of {max(conv, 0)} after the "
                    f"conv on input_dim={input_dim}: the 2x2 pool needs at least 2"
                )
        C.check_weights_fit(self, ("num_filters", "filter_size", "hidden_dim"))

    @property
    def pad(self) -> int:
        """The conv's zero padding per side, ``(filter_size − 1) // 2``."""
        return (self.filter_size - 1) // 2

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The shape of one example: ``input_dim``, ``(C, H, W)``."""
        return self.input_dim

    @property
    def pooled_shape(self) -> tuple[int, int, int]:
        """``(num_filters, H', W')`` after conv and pool."""
        _, h, w = self.input_dim
        conv_h = h + 2 * self.pad - self.filter_size + 1
        conv_w = w + 2 * self.pad - self.filter_size + 1
        return self.num_filters, conv_h // 2, conv_w // 2

    def weight_shapes(self) -> dict[str, tuple[int, ...]]:
        """``{layer name: shape of its 'w'}`` in forward order.

        Returns:
            ``{'conv1': (num_filters, C, filter_size, filter_size), 'fc1': (num_filters·H'·W',
            hidden_dim), 'out': (hidden_dim, num_classes)}``, ``(num_filters, H', W')`` being
            :attr:`pooled_shape`.
        """
        c = self.input_dim[0]
        f, hp, wp = self.pooled_shape
        k = self.filter_size
        return {
            "conv1": (f, c, k, k),
            "fc1": (f * hp * wp, self.hidden_dim),
            "out": (self.hidden_dim, self.num_classes),
        }

    def apply(self, params, state, X, *, train: bool = False, key=None):
        """Class scores ``(N, num_classes)`` and the (unchanged) state; ``train`` and ``key``
        are accepted for a uniform interface (this net has no dropout or batchnorm).

        Args:
            params: the parameters, as :meth:`init` returns them.
            state: the state, ``{}`` from :meth:`init`; returned as it is.
            X: images ``(N, C, H, W)`` (``(N, *input_dim)``), cast to the parameters' dtype.
            train: ignored.
            key: ignored.

        Returns:
            ``(scores, state)``: ``scores`` ``(N, num_classes)`` in the parameters' dtype.

        Raises:
            ValueError: if ``X`` is not ``(N, *input_shape)`` (:meth:`check_input`); from the
                layers if ``params`` hold arrays of the wrong shapes.
            KeyError: if ``params`` lacks a layer.
        """
        L = self.L
        x = self._prepare(params, X)
        p = params["conv1"]
        a = L.conv_relu_pool(
            C.to_layout(x, self.layout), p["w"], p["b"], stride=1, pad=self.pad,
            impl=self.conv_impl, pool_impl=self.pool_impl, layout=self.layout,
        )  # fmt: skip
        a = L.affine_relu(C.from_layout(a, self.layout), params["fc1"]["w"], params["fc1"]["b"])
        scores = L.affine(a, params["out"]["w"], params["out"]["b"])
        return scores, state
