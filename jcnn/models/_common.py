"""Pieces shared by the models: hyper-parameter checks, weight init, L2, the loss.

A model is a frozen dataclass of hyper-parameters (hashable, so it can be a static argument
of :func:`jax.jit`) that subclasses :class:`Model`. Subclasses describe their layers
(``weight_shapes``, ``batchnorm_layers``) and implement ``apply(params, state, X, *, train,
key)``; :class:`Model` provides ``init``, ``loss`` (softmax cross-entropy + ``0.5·reg·Σ W²``
over every leaf named ``w``), input checks and the switch between the hand-written layers
and their autodiff twins.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from types import ModuleType
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from jcnn._validate import check_count_fits, choice, positive_int
from jcnn.layers.conv import IMPLS as CONV_IMPLS  # noqa: F401 - the models check their field against it
from jcnn.precision import cast_floating, resolve_compute_dtype

LAYERS = ("jcnn", "reference")
POOL_IMPLS = ("naive", "fast")
LAYOUTS = ("auto", "NCHW", "NHWC")
# The fields that choose which code computes a model, not what it computes: a checkpoint made
# with one choice resumes with any other (the Solver does not compare them).
IMPLEMENTATION_FIELDS = ("layers", "conv_impl", "pool_impl", "layout")


def resolve_layout(layout: str, conv_impl: str, pool_impl: str) -> str:
    """The activation layout a conv model uses inside (its input and weights stay NCHW/OIHW).

    ``'auto'`` is NHWC whenever the chosen impls support it (``conv_impl`` ``'auto'``,
    ``'onednn'`` or ``'xla'``, ``pool_impl='fast'``): oneDNN's and XLA's CPU convolutions are
    channels-last, so NCHW activations cost a transpose around every layer (see
    docs/performance.md). An explicit ``'NHWC'`` with an NCHW-only impl, and
    ``conv_impl='onednn'`` (channels-last only) with NCHW, are ValueErrors.
    """
    choice("layout", layout, LAYOUTS)
    nhwc_ok = conv_impl in ("auto", "onednn", "xla") and pool_impl == "fast"
    if layout == "auto":
        layout = "NHWC" if nhwc_ok else "NCHW"
    if layout == "NHWC" and not nhwc_ok:
        raise ValueError(
            f"layout='NHWC' needs conv_impl 'auto', 'onednn' or 'xla' and pool_impl='fast', "
            f"got conv_impl={conv_impl!r}, pool_impl={pool_impl!r}"
        )
    if layout == "NCHW" and conv_impl == "onednn":
        raise ValueError(
            "conv_impl='onednn' runs channels-last activations: it needs pool_impl='fast' and "
            f"layout 'auto' or 'NHWC', got pool_impl={pool_impl!r}, layout={layout!r}"
        )
    return layout


# ------------------------------------------------------------------------- field checks


def int_tuple(name: str, value: Any, *, allow_empty: bool = False) -> tuple[int, ...]:
    """A sequence of positive ints as a tuple (hashable), or ValueError naming ``name``."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence | np.ndarray):
        raise ValueError(f"{name} must be a sequence of positive ints, got {value!r}")
    out = tuple(positive_int(f"{name}[{i}]", v) for i, v in enumerate(value))
    if not out and not allow_empty:
        raise ValueError(f"{name} must not be empty")
    return out


def nonnegative_float(name: str, value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a non-negative float, got {value!r}") from None
    if not (math.isfinite(v) and v >= 0.0):
        raise ValueError(f"{name} must be a finite float >= 0, got {value!r}")
    return v


def dropout_rate(name: str, value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a float in [0, 1), got {value!r}") from None
    if not 0.0 <= v < 1.0:
        raise ValueError(f"{name} must be in [0, 1) (the probability of dropping), got {value!r}")
    return v


def weight_scale_value(name: str, value: Any) -> float | str:
    """A positive float (Gaussian std) or the string ``'he'``."""
    if isinstance(value, str):
        if value.lower() != "he":
            raise ValueError(f"{name} must be a positive float or 'he', got {value!r}")
        return "he"
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive float or 'he', got {value!r}") from None
    if not (math.isfinite(v) and v > 0.0):
        raise ValueError(f"{name} must be a positive float or 'he', got {value!r}")
    return v


def float_dtype(name: str, value: Any) -> np.dtype:
    try:
        dt = jnp.dtype(value)
    except TypeError:
        raise ValueError(f"{name} must be a floating-point dtype, got {value!r}") from None
    if not jnp.issubdtype(dt, jnp.floating):
        raise ValueError(f"{name} must be a floating-point dtype, got {value!r}")
    return dt


def check_batchnorm_fields(model: Any) -> None:
    """Validate and normalise ``bn_momentum`` (in [0, 1]) and ``bn_eps`` (> 0) in place."""
    momentum = float(model.bn_momentum)
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"bn_momentum must be in [0, 1], got {model.bn_momentum!r}")
    set_field(model, "bn_momentum", momentum)
    eps = float(model.bn_eps)
    if not eps > 0.0:
        raise ValueError(f"bn_eps must be > 0, got {model.bn_eps!r}")
    set_field(model, "bn_eps", eps)


def to_layout(x: jax.Array, layout: str) -> jax.Array:
    """NCHW input to the model's inside layout (one transpose at the model's edge)."""
    return x.transpose(0, 2, 3, 1) if layout == "NHWC" else x


def from_layout(x: jax.Array, layout: str) -> jax.Array:
    """Back to NCHW before flattening, so the fc weights' row order never depends on layout."""
    return x.transpose(0, 3, 1, 2) if layout == "NHWC" else x


def set_field(obj: Any, name: str, value: Any) -> None:
    """Normalise a field of a frozen dataclass in ``__post_init__``."""
    object.__setattr__(obj, name, value)


def check_weights_fit(model: Any, sizes: Sequence[str]) -> None:
    """MemoryLimitError (a ValueError) naming the model's size fields ``sizes`` when its
    weights alone need more memory than this machine has (``hidden_dims=(10**9,)`` failed
    in ``init`` with an integer overflow deep in JAX)."""
    total = sum(math.prod(shape) for shape in model.weight_shapes().values())
    named = ", ".join(f"{name}={getattr(model, name)!r}" for name in sizes)
    check_count_fits(named, "weights", total, model.dtype)


# --------------------------------------------------------------------------------- init


def weight_std(shape: tuple[int, ...], weight_scale: float | str) -> float:
    """``weight_scale``, or ``sqrt(2 / fan_in)`` for ``'he'``, where ``fan_in`` is every axis
    but the output one: ``D`` for an affine ``(D, M)`` matrix, ``C·HH·WW`` for a
    ``(F, C, HH, WW)`` filter bank."""
    if weight_scale == "he":
        fan_in = shape[0] if len(shape) == 2 else math.prod(shape[1:])
        return math.sqrt(2.0 / fan_in)
    return float(weight_scale)


def init_weight(key: jax.Array, shape: tuple[int, ...], weight_scale: float | str, dtype):
    """Gaussian weights of std :func:`weight_std` (``weight_scale`` or He)."""
    return weight_std(shape, weight_scale) * jax.random.normal(key, shape, dtype)


def init_weights(
    key: jax.Array, shapes: dict[str, tuple[int, ...]], weight_scale: float | str, dtype
) -> dict[str, jax.Array]:
    """Gaussian weights for several layers from one draw.

    One ``jax.random.normal`` of the total size is sliced in the order of ``shapes`` and
    each slice scaled by :func:`weight_std` (one random kernel to compile per model, not
    one per layer shape).
    """
    total = sum(math.prod(s) for s in shapes.values())
    z = jax.random.normal(key, (total,), dtype)
    out, start = {}, 0
    for name, shape in shapes.items():
        n = math.prod(shape)
        out[name] = weight_std(shape, weight_scale) * z[start : start + n].reshape(shape)
        start += n
    return out


def layer_params(w: jax.Array, *, batchnorm: bool) -> dict[str, jax.Array]:
    """``{'w', 'b'}`` (zero bias, one per output unit/filter), plus ``'gamma', 'beta'`` with
    batchnorm."""
    d = w.shape[0] if w.ndim == 4 else w.shape[1]
    p = {"w": w, "b": jnp.zeros((d,), w.dtype)}
    if batchnorm:
        p.update(bn_params(d, w.dtype))
    return p


def bn_params(d: int, dtype) -> dict[str, jax.Array]:
    return {"gamma": jnp.ones((d,), dtype), "beta": jnp.zeros((d,), dtype)}


def bn_state(d: int, dtype) -> dict[str, jax.Array]:
    """Running statistics start at mean 0, variance 1 (test mode is then the identity)."""
    return {"running_mean": jnp.zeros((d,), dtype), "running_var": jnp.ones((d,), dtype)}


# ----------------------------------------------------------------------------------- L2


def _is_weight(path) -> bool:
    last = path[-1] if path else None
    return isinstance(last, jax.tree_util.DictKey) and last.key == "w"


def l2_penalty(params: Any, reg: float) -> jax.Array:
    """``0.5·reg·Σ W²`` over every leaf whose key is ``'w'`` (weights and filters only;
    biases and batchnorm ``gamma``/``beta`` are not regularised)."""
    leaves = [
        leaf for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0] if _is_weight(path)
    ]
    if not leaves or reg == 0.0:
        return jnp.zeros((), leaves[0].dtype if leaves else jnp.float32)
    squares = sum((jnp.sum(jnp.square(w)) for w in leaves), start=jnp.zeros((), leaves[0].dtype))
    return 0.5 * reg * squares


def dense_head(model: Any, params, state, x, names, new_state, *, train: bool, key):
    """The fully connected part of :class:`VGGNet` and :class:`FullyConnectedNet`:
    ``(affine - [batchnorm] - relu - [dropout]) × len(names) - affine``; the k-th hidden
    layer (from 1) drops out with ``fold_in(key, k)``. Fills ``new_state`` with the
    batchnorm statistics; returns the class scores."""
    L = model.L
    for k, name in enumerate(names, start=1):
        p = params[name]
        if model.use_batchnorm:
            s = state[name]
            x, rm, rv = L.affine_bn_relu(
                x, p["w"], p["b"], p["gamma"], p["beta"], s["running_mean"], s["running_var"],
                train=bool(train), momentum=model.bn_momentum, eps=model.bn_eps,
            )  # fmt: skip
            new_state[name] = {"running_mean": rm, "running_var": rv}
        else:
            x = L.affine_relu(x, p["w"], p["b"])
        if train and model.dropout > 0.0:
            x = L.dropout(x, jax.random.fold_in(key, k), rate=model.dropout, train=True)
    return L.affine(x, params["out"]["w"], params["out"]["b"])


# -------------------------------------------------------------------------------- model


class Model:
    """Mixin for the model dataclasses: layer switch, ``init``, input checks, ``loss``.

    Subclasses define the fields ``layers``, ``reg``, ``label_smoothing``, ``num_classes``,
    ``input_dim``, ``weight_scale``, ``dtype``, the property ``input_shape`` and the methods
    ``weight_shapes()``, ``batchnorm_layers()`` (if any) and
    ``apply(params, state, X, *, train=False, key=None) -> (scores, new_state)``.
    """

    # Fields that choose the code, not the function (a checkpoint resumes across them).
    IMPLEMENTATION_FIELDS: ClassVar[tuple[str, ...]] = IMPLEMENTATION_FIELDS
    layers: str
    reg: float
    label_smoothing: float
    num_classes: int
    weight_scale: float | str
    dtype: Any
    input_dim: Any

    def apply(
        self, params: Any, state: Any, X: Any, *, train: bool = False, key: jax.Array | None = None
    ) -> tuple[jax.Array, Any]:
        """Class scores ``(N, num_classes)`` and the new state (each model defines it).

        Args:
            params: the parameters, as :meth:`init` returns them (``{layer: {'w', 'b', ...}}``).
            state: the batchnorm running statistics, as :meth:`init` returns them.
            X: inputs ``(N, *input_shape)``, cast to the parameters' dtype.
            train: training mode: dropout on (if ``dropout > 0``), batchnorm on batch statistics.
            key: a JAX PRNG key for dropout; needed only when ``train`` and ``dropout > 0``.

        Returns:
            ``(scores, new_state)``: ``scores`` ``(N, num_classes)`` and a state of the structure
            of ``state``.

        Raises:
            NotImplementedError: always, here; the models override it.
        """
        raise NotImplementedError

    @property
    def L(self) -> ModuleType:
        """The layer module the model is built on: :mod:`jcnn.layers` or :mod:`jcnn.reference`.

        Returns:
            :mod:`jcnn.layers` when ``layers == 'jcnn'``, else :mod:`jcnn.reference`.
        """
        import jcnn.layers
        import jcnn.reference

        return jcnn.layers if self.layers == "jcnn" else jcnn.reference

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The shape of one example (``X.shape[1:]``).

        Returns:
            A tuple of ints, e.g. ``(3, 32, 32)``.

        Raises:
            NotImplementedError: here; the models override it.
        """
        raise NotImplementedError

    def weight_shapes(self) -> dict[str, tuple[int, ...]]:
        """``{layer name: shape of its 'w'}`` in forward order.

        Returns:
            A dict from layer name to the shape of its weights: ``(F, C, HH, WW)`` for a conv,
            ``(D, M)`` for an affine layer.

        Raises:
            NotImplementedError: here; the models override it.
        """
        raise NotImplementedError

    def batchnorm_layers(self) -> tuple[str, ...]:
        """Names of the layers followed by (spatial) batchnorm.

        Returns:
            A tuple of layer names (keys of :meth:`weight_shapes`); empty here.
        """
        return ()

    def init(self, key: jax.Array) -> tuple[dict, dict]:
        """``(params, state)``: Gaussian weights (``weight_scale`` std, or He), zero biases,
        batchnorm ``gamma = 1``, ``beta = 0``, running mean 0 and running variance 1, all in
        ``dtype``. Weights come from one normal draw (:func:`init_weights`).

        Args:
            key: a JAX PRNG key; the same key gives the same weights.

        Returns:
            ``(params, state)``: ``params[name] = {'w': weight_shapes()[name], 'b': (M,)}``
            for every layer, where ``M`` is the number of outputs (filters ``F`` of a conv,
            columns of an affine ``w``), plus ``'gamma'``, ``'beta'`` ``(M,)`` for the
            :meth:`batchnorm_layers`; ``state[name] = {'running_mean': (M,), 'running_var':
            (M,)}`` for those layers only.
        """
        ws = init_weights(key, self.weight_shapes(), self.weight_scale, self.dtype)
        bn = set(self.batchnorm_layers())
        params = {name: layer_params(w, batchnorm=name in bn) for name, w in ws.items()}
        state = {
            name: bn_state(params[name]["b"].shape[0], self.dtype) for name in ws if name in bn
        }
        return params, state

    def check_input(self, X: Any, name: str = "X") -> None:
        """ValueError unless ``X`` is a batch ``(N, *input_shape)``.

        Args:
            X: array-like batch of inputs.
            name: the name the error message gives ``X``.

        Raises:
            ValueError: naming ``name``, if ``X`` is not ``(N, *input_shape)``.
        """
        shape = tuple(np.shape(X))
        want = self.input_shape
        if len(shape) != len(want) + 1 or shape[1:] != want:
            raise ValueError(
                f"{name} has shape {shape} but {type(self).__name__} expects "
                f"(N, {', '.join(map(str, want))}) (input_dim={self.input_dim!r})"
            )

    def _prepare(self, params: Any, X: Any) -> jax.Array:
        """Check X's shape and cast it to the dtype of the parameters."""
        self.check_input(X)
        dtype = jax.tree_util.tree_leaves(params)[0].dtype
        return jnp.asarray(X).astype(dtype)

    def loss(
        self, params: Any, state: Any, X: Any, y: Any, *, key: jax.Array | None = None,
        compute_dtype: Any = None,
    ):  # fmt: skip
        """Training-mode loss (dropout on, batchnorm on batch statistics) and the new state.

        Returns ``(data_loss + 0.5·reg·Σ W², new_state)``, so that
        ``jax.value_and_grad(model.loss, has_aux=True)`` gives ``((loss, state), grads)``.

        Mixed precision (``compute_dtype``, e.g. ``'bfloat16'``): the floating parameters are
        cast to it inside, so the network (activations and the hand-written backward passes)
        runs in it; the scores are cast back to the parameters' dtype before the softmax
        loss, the L2 penalty uses the uncast parameters, and the new state keeps the old
        state's dtypes. The cast is differentiable, so the gradients arrive in the
        parameters' dtype.

        Args:
            params: the parameters, as :meth:`init` returns them.
            state: the batchnorm running statistics, as :meth:`init` returns them.
            X: inputs ``(N, *input_shape)``.
            y: integer labels ``(N,)`` in ``[0, num_classes)``.
            key: a JAX PRNG key for dropout; needed only when ``dropout > 0``.
            compute_dtype: the dtype the network computes in; None (or float32): the
                parameters' own (:func:`jcnn.precision.resolve_compute_dtype`).

        Returns:
            ``(loss, new_state)``: the scalar loss ``()`` in the parameters' dtype, and the state
            with the running statistics updated.

        Raises:
            ValueError: as :meth:`apply` with ``train=True`` (``X`` of the wrong shape; ``key``
                None with ``dropout > 0``), and as :meth:`data_loss` (``y``); naming
                ``compute_dtype`` if it is not a floating dtype.
            TypeError: as :meth:`apply`, if ``dropout > 0`` and ``key`` is not a PRNG key.
        """
        dtype = resolve_compute_dtype(compute_dtype)
        net_params = params if dtype is None else cast_floating(params, dtype)
        scores, new_state = self.apply(net_params, state, X, train=True, key=key)
        if dtype is not None:
            scores = scores.astype(jax.tree_util.tree_leaves(params)[0].dtype)
            new_state = jax.tree_util.tree_map(lambda n, o: n.astype(o.dtype), new_state, state)
        data_loss = self.data_loss(scores, y)
        return data_loss + l2_penalty(params, self.reg).astype(data_loss.dtype), new_state

    def data_loss(self, scores: jax.Array, y: Any) -> jax.Array:
        """Mean softmax cross-entropy of ``scores (N, num_classes)`` against ``y (N,)``,
        with the model's ``label_smoothing``.

        Args:
            scores: class scores ``(N, num_classes)``.
            y: integer labels ``(N,)`` in ``[0, num_classes)``.

        Returns:
            The scalar loss ``()``, without the L2 term.

        Raises:
            ValueError: if ``y`` is not ``(N,)``; as the layer's ``softmax_loss`` if ``y`` is not
                of an integer dtype or (when concrete) holds a label outside ``[0, num_classes)``.
        """
        y = jnp.asarray(y)
        if y.shape != (scores.shape[0],):
            raise ValueError(
                f"y must have shape ({scores.shape[0]},) to match X, got {tuple(y.shape)}"
            )
        return self.L.softmax_loss(scores, y, label_smoothing=self.label_smoothing)

    def _dropout_key(self, key, train: bool, rate: float):
        if train and rate > 0.0 and key is None:
            raise ValueError(
                f"key must be a jax.random key: {type(self).__name__} has dropout={rate} "
                "and train=True (loss() always trains)"
            )
        return key
