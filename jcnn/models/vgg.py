"""A VGG-like ConvNet (the seed's ``VGGlikeConvNet``).

``[(conv - spatial batchnorm - relu) × blocks[s] - 2×2 max pool]`` for each stage ``s``,
then ``(affine - batchnorm - relu - dropout)`` per hidden dim, then affine - softmax.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from jcnn.layers.losses import check_label_smoothing
from jcnn.models import _common as C


@dataclasses.dataclass(frozen=True)
class VGGNet(C.Model):
    """VGG-style net on NCHW images of shape ``input_dim``.

    Stage ``s`` (1-based) has ``blocks[s-1]`` convolutions of ``num_filters[s-1]`` filters,
    ``filter_size`` square, stride 1, 'same' padding ``(filter_size − 1) // 2``; each is
    followed by spatial batchnorm (if ``use_batchnorm``) and relu, and the stage ends with a
    2×2 max pool. ``blocks`` is the seed's ``As``.

    Parameters and state (``init`` returns ``(params, state)``)::

        params['conv{s}_{a}'] = {'w': (F, C, k, k), 'b': (F,), 'gamma': (F,), 'beta': (F,)}
        params['fc{k}']       = {'w': (D, hidden_dims[k-1]), 'b', 'gamma', 'beta'}
        params['out']         = {'w': (hidden_dims[-1], num_classes), 'b'}
        state['conv{s}_{a}']  = state['fc{k}'] = {'running_mean', 'running_var'}

    (``gamma``/``beta`` and the state entries only with ``use_batchnorm``.) Dropout with
    probability ``dropout`` follows every hidden relu; hidden layer ``k`` draws its mask from
    ``jax.random.fold_in(key, k)``.
    """

    input_dim: tuple[int, int, int] = (3, 32, 32)
    num_filters: tuple[int, ...] = (64, 128, 256, 512, 512)
    filter_size: int = 3
    blocks: tuple[int, ...] = (2, 2, 3, 3, 3)
    hidden_dims: tuple[int, ...] = (1024, 1024)
    num_classes: int = 10
    weight_scale: float | str = 1e-2
    reg: float = 1e-3
    use_batchnorm: bool = True
    dropout: float = 0.0
    dtype: Any = jnp.float32
    layers: str = "jcnn"
    conv_impl: str = "auto"
    pool_impl: str = "fast"
    layout: str = "auto"
    bn_momentum: float = 0.9
    bn_eps: float = 1e-5

    label_smoothing: float = 0.0

    def __post_init__(self):
        input_dim = C.int_tuple("input_dim", self.input_dim)
        if len(input_dim) != 3:
            raise ValueError(f"input_dim must be (C, H, W), got {self.input_dim!r}")
        C.set_field(self, "input_dim", input_dim)
        num_filters = C.int_tuple("num_filters", self.num_filters)
        blocks = C.int_tuple("blocks", self.blocks)
        if len(blocks) != len(num_filters):
            raise ValueError(
                f"blocks and num_filters must have one entry per stage: blocks={blocks} has "
                f"{len(blocks)}, num_filters={num_filters} has {len(num_filters)}"
            )
        C.set_field(self, "num_filters", num_filters)
        C.set_field(self, "blocks", blocks)
        C.set_field(self, "filter_size", C.positive_int("filter_size", self.filter_size))
        C.set_field(
            self, "hidden_dims", C.int_tuple("hidden_dims", self.hidden_dims, allow_empty=True)
        )
        C.set_field(self, "num_classes", C.positive_int("num_classes", self.num_classes))
        C.set_field(self, "weight_scale", C.weight_scale_value("weight_scale", self.weight_scale))
        C.set_field(self, "reg", C.nonnegative_float("reg", self.reg))
        C.set_field(self, "label_smoothing", check_label_smoothing(self.label_smoothing))
        if not isinstance(self.use_batchnorm, bool):
            raise ValueError(f"use_batchnorm must be a bool, got {self.use_batchnorm!r}")
        C.set_field(self, "dropout", C.dropout_rate("dropout", self.dropout))
        C.set_field(self, "dtype", C.float_dtype("dtype", self.dtype))
        C.choice("layers", self.layers, C.LAYERS)
        C.choice("conv_impl", self.conv_impl, C.CONV_IMPLS)
        C.choice("pool_impl", self.pool_impl, C.POOL_IMPLS)
        C.set_field(self, "layout", C.resolve_layout(self.layout, self.conv_impl, self.pool_impl))
        C.check_batchnorm_fields(self)
        _ = self.stage_shapes  # raises if a stage leaves nothing to pool
        C.check_weights_fit(self, ("num_filters", "blocks", "hidden_dims"))

    @property
    def pad(self) -> int:
        """The convs' zero padding per side, ``(filter_size − 1) // 2``."""
        return (self.filter_size - 1) // 2

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The shape of one example: ``input_dim``, ``(C, H, W)``."""
        return self.input_dim

    @property
    def stage_shapes(self) -> tuple[tuple[int, int, int], ...]:
        """``(F, H, W)`` after each stage's pool.

        Raises:
            ValueError: if a stage would max-pool a map smaller than 2 × 2 (checked when the model
                is built).
        """
        _, h, w = self.input_dim
        shrink = self.filter_size - 1 - 2 * self.pad  # 0 for odd filter sizes
        shapes = []
        for s, (f, a) in enumerate(zip(self.num_filters, self.blocks, strict=True), start=1):
            h, w = h - a * shrink, w - a * shrink
            if h < 2 or w < 2:
                raise ValueError(
                    f"input_dim={self.input_dim} is too small for {len(self.blocks)} stages: "
                    f"stage {s} would max-pool a {max(h, 0)}x{max(w, 0)} map to nothing "
                    "(use fewer blocks/num_filters entries or larger images)"
                )
            h, w = h // 2, w // 2
            shapes.append((f, h, w))
        return tuple(shapes)

    def layer_names(self) -> tuple[list[str], list[str]]:
        """``(['conv1_1', ...], ['fc1', ...])``.

        Returns:
            ``(convs, fcs)``: ``conv{s}_{a}`` for stage ``s`` and block ``a`` (both from 1), and
            ``fc{k}`` for each hidden dim.
        """
        convs = [f"conv{s}_{a}" for s, n in enumerate(self.blocks, 1) for a in range(1, n + 1)]
        fcs = [f"fc{k}" for k in range(1, len(self.hidden_dims) + 1)]
        return convs, fcs

    def weight_shapes(self) -> dict[str, tuple[int, ...]]:
        """``{layer name: shape of its 'w'}`` in forward order.

        Returns:
            ``{'conv{s}_{a}': (num_filters[s-1], C_in, filter_size, filter_size), ...,
            'fc{k}': (D_in, hidden_dims[k-1]), ..., 'out': (D_in, num_classes)}``, where
            ``C_in`` is the previous conv's filters (the image channels first) and the first
            ``D_in`` is ``F·H·W`` of the last stage (:attr:`stage_shapes`).
        """
        convs, fcs = self.layer_names()
        names = iter(convs)
        shapes: dict[str, tuple[int, ...]] = {}
        c_in, k = self.input_dim[0], self.filter_size
        for f, a in zip(self.num_filters, self.blocks, strict=True):
            for _ in range(a):
                shapes[next(names)] = (f, c_in, k, k)
                c_in = f
        f, h, w = self.stage_shapes[-1]
        d_in = f * h * w
        for name, d in zip(fcs, self.hidden_dims, strict=True):
            shapes[name] = (d_in, d)
            d_in = d
        shapes["out"] = (d_in, self.num_classes)
        return shapes

    def batchnorm_layers(self) -> tuple[str, ...]:
        """Names of the layers followed by (spatial) batchnorm: every conv and hidden layer with
        ``use_batchnorm``.

        Returns:
            ``(*convs, *fcs)`` of :meth:`layer_names` with ``use_batchnorm``, else ``()``.
        """
        convs, fcs = self.layer_names()
        return (*convs, *fcs) if self.use_batchnorm else ()

    def apply(self, params, state, X, *, train: bool = False, key=None):
        """Class scores ``(N, num_classes)`` and the new state (updated running statistics
        when ``train``; unchanged otherwise). ``key`` drives dropout when ``train``.

        Args:
            params: the parameters, as :meth:`init` returns them.
            state: the batchnorm running statistics, as :meth:`init` returns them.
            X: images ``(N, C, H, W)`` (``(N, *input_dim)``, NCHW whatever ``layout``), cast to
                the parameters' dtype.
            train: training mode: dropout on (if ``dropout > 0``), batchnorm on batch statistics.
            key: a JAX PRNG key; needed only when ``train`` and ``dropout > 0``; hidden layer ``k``
                uses ``jax.random.fold_in(key, k)``.

        Returns:
            ``(scores, new_state)``: ``scores`` ``(N, num_classes)``; ``new_state[name] =
            {'running_mean': (M,), 'running_var': (M,)}`` per conv and hidden layer with
            ``use_batchnorm`` (``{}`` without), ``M`` its filters or hidden units.

        Raises:
            ValueError: if ``train`` with ``dropout > 0`` and ``key`` is None;
                if ``X`` is not ``(N, *input_dim)`` (:meth:`check_input`); from the layers if
                ``params`` or ``state`` hold arrays of the wrong shapes.
            KeyError: if ``params`` or ``state`` lacks a layer.
            TypeError: from ``jax.random.fold_in`` if ``train`` with ``dropout > 0`` and
                ``key`` is not a PRNG key.
        """
        L = self.L
        key = self._dropout_key(key, train, self.dropout)
        x = C.to_layout(self._prepare(params, X), self.layout)
        bn = dict(train=bool(train), momentum=self.bn_momentum, eps=self.bn_eps)
        conv = dict(stride=1, pad=self.pad, impl=self.conv_impl, layout=self.layout)
        new_state: dict[str, dict[str, jax.Array]] = {}
        convs, fcs = self.layer_names()
        names = iter(convs)
        for a in self.blocks:
            for _ in range(a):
                name = next(names)
                p = params[name]
                if self.use_batchnorm:
                    s = state[name]
                    x, rm, rv = L.conv_bn_relu(
                        x, p["w"], p["b"], p["gamma"], p["beta"], s["running_mean"],
                        s["running_var"], **conv, **bn,
                    )  # fmt: skip
                    new_state[name] = {"running_mean": rm, "running_var": rv}
                else:
                    x = L.conv_relu(x, p["w"], p["b"], **conv)
            x = L.max_pool2d(
                x, pool_height=2, pool_width=2, stride=2, impl=self.pool_impl, layout=self.layout
            )
        x = C.from_layout(x, self.layout)
        scores = C.dense_head(self, params, state, x, fcs, new_state, train=train, key=key)
        return scores, new_state
