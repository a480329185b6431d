"""One input rule for every layer: arrays of values are real floating point.

Integer inputs used to give wrong numbers silently (batchnorm normalised in integer
arithmetic: [-1, 0, 1, 2] where float32 gives [-1.342, -0.447, 0.447, 1.342]), and complex
ones a lexicographic maximum in max pooling; every layer now refuses them in one line that
names the argument.
"""

from __future__ import annotations

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jcnn._validate
import jcnn.layers as L
from jcnn import native
from jcnn.models import AirbenchNet, ThreeLayerConvNet, VGGNet

BAD_DTYPES = [jnp.int32, jnp.uint8, jnp.bool_, jnp.complex64]


def _ones(shape, dtype=jnp.float32):
    return jnp.ones(shape, dtype)


def _calls(x):
    """Each layer called with ``x`` as its values (the other operands float32)."""
    d4 = x.reshape(2, 3, 2, 2)
    d2 = x.reshape(4, 6)
    f = jnp.float32
    return {
        "conv2d": lambda: L.conv2d(d4, _ones((2, 3, 1, 1)), _ones((2,)), stride=1, pad=0),
        "affine": lambda: L.affine(d2, _ones((6, 2)), _ones((2,))),
        "batchnorm": lambda: L.batchnorm(
            d2, _ones(6), _ones(6), jnp.zeros(6, f), _ones(6), train=True
        ),
        "spatial_batchnorm": lambda: L.spatial_batchnorm(
            d4, _ones(3), _ones(3), jnp.zeros(3, f), _ones(3), train=False
        ),
        "max_pool2d": lambda: L.max_pool2d(d4, pool_height=2, pool_width=2, stride=2),
        "relu": lambda: L.relu(d2),
        "gelu": lambda: L.gelu(d2),
        "dropout": lambda: L.dropout(d2, jax.random.key(0), rate=0.5, train=False),
        "softmax_loss": lambda: L.softmax_loss(d2, jnp.zeros(4, jnp.int32)),
        "svm_loss": lambda: L.svm_loss(d2, jnp.zeros(4, jnp.int32)),
    }


@pytest.mark.parametrize("dtype", BAD_DTYPES, ids=lambda d: jnp.dtype(d).name)
@pytest.mark.parametrize("layer", sorted(_calls(jnp.ones(24)).keys()))
def test_every_layer_refuses_values_that_are_not_real_floating(layer, dtype):
    call = _calls(jnp.arange(24).astype(dtype))[layer]
    argument = "scores" if layer.endswith("loss") else "x"
    with pytest.raises(ValueError, match=rf"^{argument} must be a real floating-point array"):
        call()


@pytest.mark.parametrize("layer", sorted(_calls(jnp.ones(24)).keys()))
def test_every_layer_takes_float32_values(layer):
    out = _calls(jnp.arange(24, dtype=jnp.float32) / 24)[layer]()
    assert all(np.all(np.isfinite(v)) for v in jax.tree_util.tree_leaves(out))


def test_batchnorm_parameters_follow_the_same_rule():
    x = jnp.ones((4, 2), jnp.float32)
    with pytest.raises(ValueError, match=r"^running_var must be a real floating-point array"):
        L.batchnorm(x, _ones(2), _ones(2), _ones(2), jnp.ones(2, jnp.int32), train=True)
    with pytest.raises(ValueError, match=r"^w must be a real floating-point array"):
        L.affine(x, jnp.ones((2, 3), jnp.int32), _ones((3,)))


def test_a_convolution_too_large_for_memory_is_refused_naming_pad():
    """pad=10**6 built a lazy (2, 4, 2000004, 2000004) result that aborted the process when
    read; it is refused before any work."""
    x, w = jnp.ones((2, 3, 6, 6)), jnp.ones((4, 3, 3, 3))
    with pytest.raises(ValueError, match=r"^pad=1000000 makes the padded input .* GiB of memory"):
        L.conv2d(x, w, jnp.zeros(4), stride=1, pad=10**6)
    assert L.conv2d(x, w, jnp.zeros(4), stride=1, pad=100).shape == (2, 4, 204, 204)


def test_im2col_s_columns_count_against_memory(monkeypatch):
    """im2col builds a (N, C·HH·WW, H'·W') matrix, HH·WW times the input: a pad whose
    padded input fit passed the check, and the columns killed the process (out of memory).
    On a machine of 1 GiB (the check's view), traced only (no array is made)."""
    monkeypatch.setattr(jcnn._validate, "memory_bytes", lambda: 2**30)
    x, w, b = jnp.ones((2, 3, 8, 8)), jnp.ones((4, 3, 3, 3)), jnp.zeros(4)
    shape = jax.eval_shape(lambda: L.conv2d(x, w, b, pad=1200, impl="xla")).shape
    assert shape == (2, 4, 2406, 2406)  # the padded input and the output fit
    with pytest.raises(ValueError, match=r"^pad=1200 makes .* im2col's columns \(2, 27, 5788836\)"):
        jax.eval_shape(lambda: L.conv2d(x, w, b, pad=1200, impl="im2col"))


def test_im2col_counts_its_padded_input_too(monkeypatch):
    """pad=5000: columns 20.1 GiB and output 3.0 GiB passed on a 23.5 GiB machine, and the
    padded input (2.2 GiB) and the rest killed the process. On 24 GiB as the check sees it."""
    monkeypatch.setattr(jcnn._validate, "memory_bytes", lambda: 24 * 2**30)
    x, w, b = jnp.ones((2, 3, 8, 8)), jnp.ones((4, 3, 3, 3)), jnp.zeros(4)
    with pytest.raises(
        ValueError, match=r"^pad=5000 makes the padded input \(2, 3, 10008, 10008\)"
    ):
        jax.eval_shape(lambda: L.conv_forward_im2col(x, w, b, pad=5000)[0])


def test_memory_is_what_is_available_not_what_the_machine_has(monkeypatch):
    """The checks compared with the machine's physical memory, whatever was in use: the
    least of the kernel's MemAvailable and a container's limit left is what a call may use."""
    monkeypatch.setattr(jcnn._validate, "_meminfo_available", lambda: 8 * 2**30)
    monkeypatch.setattr(jcnn._validate, "_cgroup_left", lambda: None)
    assert jcnn._validate.memory_bytes() == 8 * 2**30
    monkeypatch.setattr(jcnn._validate, "_cgroup_left", lambda: 2**30)
    assert jcnn._validate.memory_bytes() == 2**30
    monkeypatch.setattr(jcnn._validate, "_meminfo_available", lambda: None)
    monkeypatch.setattr(jcnn._validate, "_cgroup_left", lambda: None)
    assert jcnn._validate.memory_bytes() > 0  # the physical memory


@pytest.mark.parametrize(
    "make, named",
    [(lambda: VGGNet(hidden_dims=(10**9,)), "hidden_dims=(1000000000,)"),
     (lambda: AirbenchNet(widths=(64, 10**6, 10**6)), "widths=(64, 1000000, 1000000)"),
     (lambda: ThreeLayerConvNet(hidden_dim=10**10), "hidden_dim=10000000000")],
)  # fmt: skip
def test_a_model_whose_weights_cannot_fit_is_refused_naming_its_sizes(make, named):
    """--hidden_dims=1000000000 gave a 79-line traceback (an integer overflow inside JAX's
    init); a model is refused when built, naming its size fields."""
    with pytest.raises(
        jcnn._validate.MemoryLimitError, match=re.escape(named) + r".* weights need"
    ):
        make()


def _calls_on_a_list(values):
    """Each layer called with ``values`` (not an array) in the place of its input."""
    f32 = jnp.float32
    return {
        "conv2d": lambda: L.conv2d(values, _ones((2, 3, 1, 1)), _ones((2,))),
        "conv2d (its bias)": lambda: L.conv2d(_ones((2, 3, 2, 2)), _ones((2, 3, 1, 1)), values),
        "affine": lambda: L.affine(values, _ones((6, 2)), _ones((2,))),
        "batchnorm": lambda: L.batchnorm(
            values, _ones(6), _ones(6), jnp.zeros(6, f32), _ones(6), train=True
        ),
        "max_pool2d": lambda: L.max_pool2d(values),
        "relu": lambda: L.relu(values),
        "gelu": lambda: L.gelu(values),
        "dropout": lambda: L.dropout(values, jax.random.key(0), rate=0.5, train=True),
        "softmax_loss": lambda: L.softmax_loss(values, jnp.zeros(4, jnp.int32)),
        "batchnorm_forward": lambda: L.batchnorm_forward(
            values, _ones(6), _ones(6), jnp.zeros(6, f32), _ones(6), train=True
        ),
        "batchnorm_gelu": lambda: L.batchnorm_gelu(
            values, _ones(6), jnp.zeros(6, f32), _ones(6), train=True
        ),
        "batchnorm_gelu_forward": lambda: L.batchnorm_gelu_forward(
            values, _ones(6), jnp.zeros(6, f32), _ones(6), train=True, eps=1e-5, axis=1
        ),
    }


@pytest.mark.parametrize("values", [[[1.0, 2.0]], None], ids=["a list", "None"])
@pytest.mark.parametrize("layer", sorted(_calls_on_a_list(None)))
def test_every_layer_refuses_what_is_not_an_array_in_one_line_naming_it(layer, values):
    """A list or None gave AttributeError ('list' object has no attribute 'ndim') or
    'got dtype None'."""
    name = "b" if "bias" in layer else "scores" if layer.endswith("loss") else "x"
    with pytest.raises(ValueError, match=rf"^{name} must be a JAX or NumPy array, got "):
        _calls_on_a_list(values)[layer]()


def _calls_with_train(train):
    x2, x4, f32 = _ones((4, 3)), _ones((2, 3, 2, 2)), jnp.float32
    stats = (_ones(3), _ones(3), jnp.zeros(3, f32), _ones(3))
    return {
        "batchnorm": lambda: L.batchnorm(x2, *stats, train=train),
        "spatial_batchnorm": lambda: L.spatial_batchnorm(x4, *stats, train=train),
        "batchnorm_gelu": lambda: L.batchnorm_gelu(x4, *stats[1:], train=train),
        "affine_bn_relu": lambda: L.affine_bn_relu(
            x2, _ones((3, 3)), _ones(3), *stats, train=train
        ),
        "conv_bn_relu": lambda: L.conv_bn_relu(
            x4, _ones((3, 3, 1, 1)), _ones(3), *stats, train=train
        ),
        "dropout": lambda: L.dropout(x2, jax.random.key(0), rate=0.5, train=train),
        "batchnorm_forward": lambda: L.batchnorm_forward(x2, *stats, train=train),
        "batchnorm_gelu_forward": lambda: L.batchnorm_gelu_forward(
            x2, *stats[1:], train=train, eps=1e-5, axis=1
        ),
    }


def _calls_with_hyperparameter():
    """``{'layer argument': (argument, call(value))}``: each layer's static numbers."""
    x2, key, f32 = _ones((4, 3)), jax.random.key(0), jnp.float32
    stats = (_ones(3), _ones(3), jnp.zeros(3, f32), _ones(3))
    return {
        "batchnorm eps": ("eps", lambda v: L.batchnorm(x2, *stats, train=True, eps=v)),
        "batchnorm momentum": (
            "momentum", lambda v: L.batchnorm(x2, *stats, train=True, momentum=v)
        ),
        "batchnorm_forward eps": (
            "eps", lambda v: L.batchnorm_forward(x2, *stats, train=True, eps=v)
        ),
        "batchnorm_gelu_forward eps": ("eps", lambda v: L.batchnorm_gelu_forward(
            x2, *stats[1:], train=True, eps=v, axis=1)),
        "batchnorm_relu_forward eps": ("eps", lambda v: L.batchnorm_relu_forward(
            x2, *stats[:2], eps=v)),
        "affine_bn_relu momentum": ("momentum", lambda v: L.affine_bn_relu(
            x2, _ones((3, 3)), _ones(3), *stats, train=True, momentum=v)),
        "dropout rate": ("rate", lambda v: L.dropout(x2, key, rate=v, train=True)),
        "dropout_forward rate": ("rate", lambda v: L.dropout_forward(x2, key, rate=v)),
        "softmax_loss label_smoothing": ("label_smoothing", lambda v: L.softmax_loss(
            x2, jnp.arange(4) % 3, label_smoothing=v)),
    }  # fmt: skip


@pytest.mark.parametrize(
    "value", ["0.5", np.array([0.5, 0.5]), jnp.float32(0.5), True, "traced"], ids=repr
)
@pytest.mark.parametrize("call", sorted(_calls_with_hyperparameter()))
def test_a_layer_s_hyper_parameters_are_static_python_numbers(call, value):
    """eps/momentum/rate given as a traced value raised JAX's ConcretizationTypeError, an
    array NumPy's TypeError, and a string such as '0.5' was read as a number."""
    argument, layer = _calls_with_hyperparameter()[call]
    with pytest.raises(ValueError, match=rf"^{argument} must be a Python number "):
        if isinstance(value, str) and value == "traced":
            jax.jit(layer)(0.5)
        else:
            layer(value)
    layer(np.float32(0.5))  # a NumPy scalar is a number


@pytest.mark.parametrize("train", ["no", "False", None, 1], ids=repr)
@pytest.mark.parametrize("layer", sorted(_calls_with_train(True)))
def test_train_must_be_true_or_false(layer, train):
    """train='no' used to run in training mode (a non-empty string is true)."""
    with pytest.raises(ValueError, match=rf"^train must be True or False, got {train!r}"):
        _calls_with_train(train)[layer]()
    for flag in (True, False, np.bool_(False)):
        _calls_with_train(flag)[layer]()


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda x, p: L.batchnorm_forward(x, *p, train=True, axis=5), r"^axis must be an int in"),
        (lambda x, p: L.batchnorm_forward(x, *p, train=True, axis=-5), r"^axis must be an int"),
        (lambda x, p: L.batchnorm_forward(x, *p, train=True, axis=1.0), r"^axis must be an int"),
        (lambda x, p: L.batchnorm_forward(x, *p, train=True, eps=-1.0), r"^eps must be a finite"),
        (lambda x, p: L.batchnorm_forward(x.astype(int), *p, train=True), r"^x must be a real"),
        (lambda x, p: L.batchnorm_relu_forward(x, *p[:2], axis=7), r"^axis must be an int"),
        (lambda x, p: L.batchnorm_relu_forward(x, *p[:2], eps=0.0), r"^eps must be a finite"),
        (lambda x, p: L.batchnorm_forward(x, *p, train=True, eps=np.inf), r"^eps must be a finite"),
        (lambda x, p: L.batchnorm_relu_forward(x, p[0][:2], p[1]), r"^gamma must have shape"),
    ],
)  # fmt: skip
def test_the_cs231n_batchnorm_functions_follow_the_layers_rule(call, match):
    """batchnorm_forward took an int x (returning zeros), eps=-1 (NaN) and an axis out of
    range (IndexError), batchnorm_relu_forward axis=7: each is refused naming the argument,
    as batchnorm() refuses them."""
    x, p = jnp.ones((4, 3)), (_ones(3), _ones(3), _ones(3), _ones(3))
    with pytest.raises(ValueError, match=match):
        call(x, p)


@pytest.mark.parametrize("impl", ["naive", "im2col", "xla"])
def test_a_convolution_s_backward_pass_refuses_a_dout_or_cache_of_another_forward(impl):
    """conv_backward_naive returned a gradient for a dout of the wrong shape and an
    AttributeError for a cache of None."""
    x, w, b = jnp.ones((2, 3, 8, 8)), jnp.ones((4, 3, 3, 3)), jnp.zeros(4)
    out, cache = L.conv_forward(x, w, b, pad=1, impl=impl)
    backward = {"naive": L.conv_backward_naive, "im2col": L.conv_backward_im2col}.get(
        impl, lambda dout, cache: L.conv_backward(dout, cache, impl=impl)
    )
    with pytest.raises(ValueError, match=r"^dout must be shaped like the forward pass's output"):
        backward(jnp.ones((2, 4, 7, 7)), cache)
    with pytest.raises(ValueError, match=r"got \(2, 4, 8, 8\) in int32"):
        backward(jnp.ones(out.shape, jnp.int32), cache)
    with pytest.raises(TypeError, match=r"^cache must be the ConvCache"):
        backward(jnp.ones(out.shape), None)
    assert [g.shape for g in backward(jnp.ones(out.shape), cache)] == [x.shape, w.shape, b.shape]


def _bn_params(d: int) -> tuple[jax.Array, ...]:
    return jnp.ones(d), jnp.zeros(d), jnp.zeros(d), jnp.ones(d)


_WINDOW = {"pool_height": 2, "pool_width": 2, "stride": 2}
# Every cs231n forward half but the convolution's (above): (name, forward(x) -> (out, cache),
# backward(dout, cache)). For the fused batchnorms the output is (out, mean, var).
BACKWARD_HALVES = [
    ("affine", lambda x: L.affine_forward(x, jnp.ones((48, 5)), jnp.zeros(5)), L.affine_backward),
    ("relu", L.relu_forward, L.relu_backward),
    ("gelu", L.gelu_forward, L.gelu_backward),
    ("dropout", lambda x: L.dropout_forward(x, jax.random.key(0), rate=0.5), L.dropout_backward),
    ("residual_add", lambda x: L.residual_add_forward(x, x), L.residual_add_backward),
    ("batchnorm", lambda x: L.batchnorm_forward(x, *_bn_params(3), train=True),
     L.batchnorm_backward),
    ("batchnorm_graph", lambda x: L.batchnorm_forward(x, *_bn_params(3), train=True),
     L.batchnorm_backward_graph),
    ("max_pool_naive", lambda x: L.max_pool_forward_naive(x, **_WINDOW), L.max_pool_backward_naive),
    ("max_pool_fast", lambda x: L.max_pool_forward_fast(x, **_WINDOW), L.max_pool_backward_fast),
]  # fmt: skip


@pytest.mark.parametrize("forward, backward", [c[1:] for c in BACKWARD_HALVES],
                         ids=[c[0] for c in BACKWARD_HALVES])  # fmt: skip
def test_every_backward_half_refuses_a_dout_or_cache_of_another_forward(forward, backward):
    """relu_backward, max_pool_backward_naive and the rest broadcast a dout of another shape
    into a gradient (a (1,) dout gave a full-size dx), and read any object as their cache."""
    x = jax.random.normal(jax.random.key(1), (2, 3, 4, 4))
    if backward is L.batchnorm_backward or backward is L.batchnorm_backward_graph:
        x = x.reshape(32, 3)
    out, cache = forward(x)
    with pytest.raises(ValueError, match=r"^dout must be shaped like the forward pass's output"):
        backward(jnp.ones((1,)), cache)
    with pytest.raises(ValueError, match=r"^dout must be .* in int32"):
        backward(jnp.ones(out.shape, jnp.int32), cache)
    with pytest.raises(TypeError, match=r"^cache must be the \w+Cache the forward pass returned"):
        backward(jnp.ones(out.shape), None)
    assert all(g is None or g.shape for g in backward(jnp.ones(out.shape), cache))


@pytest.mark.parametrize("fused", ["relu", "gelu"])
def test_a_fused_batchnorm_s_backward_half_checks_each_of_its_three_cotangents(fused):
    x, (gamma, beta, mean, var) = jnp.ones((8, 3, 2, 2)), _bn_params(3)
    if fused == "relu":
        (out, *_), cache = L.batchnorm_relu_forward(x, gamma, beta)
        backward = L.batchnorm_relu_backward
    else:
        (out, *_), cache = L.batchnorm_gelu_forward(
            x, beta, mean, var, train=True, eps=1e-5, axis=1
        )
        backward = L.batchnorm_gelu_backward
    good = (jnp.ones(out.shape), jnp.zeros(3), jnp.zeros(3))
    with pytest.raises(ValueError, match=r"^douts must be the tuple \(dout, dmean, dvar\)"):
        backward(good[0], cache)
    with pytest.raises(ValueError, match=r"^dmean must be shaped .* \(3,\)"):
        backward((good[0], jnp.zeros(4), good[2]), cache)
    with pytest.raises(ValueError, match=r"^dout must be shaped"):
        backward((jnp.ones((1,)), *good[1:]), cache)
    with pytest.raises(TypeError, match=r"^cache must be the BatchnormReluCache|^cache must be"):
        backward(good, object())
    assert backward(good, cache)[0].shape == x.shape


@pytest.mark.parametrize("loss", ["softmax", "svm"])
def test_a_loss_s_backward_half_takes_a_scalar_dloss_or_a_python_number(loss):
    forward, backward = {
        "softmax": (L.softmax_loss_forward, L.softmax_loss_backward),
        "svm": (L.svm_loss_forward, L.svm_loss_backward),
    }[loss]
    scores, y = jax.random.normal(jax.random.key(2), (4, 5)), jnp.array([0, 1, 2, 3])
    _, cache = forward(scores, y)
    from_array = backward(jnp.asarray(1.0, scores.dtype), cache)[0]
    np.testing.assert_allclose(backward(1.0, cache)[0], from_array)
    with pytest.raises(ValueError, match=r"^dloss must be shaped like .* \(the loss is a scalar\)"):
        backward(jnp.ones(4), cache)
    with pytest.raises(TypeError, match=r"^cache must be the"):
        backward(1.0, None)


def test_affine_backward_gives_every_gradient_at_least_the_forward_s_precision():
    """A float16 dout after a float32 forward gave dx and dw in float32 but db in float16; a
    cache whose x had been replaced by integers gave a float64 dw."""
    f32 = jnp.float32
    x, w, b = jnp.ones((4, 3), f32), jnp.ones((3, 2), f32), jnp.zeros(2, f32)
    out, cache = L.affine_forward(x, w, b)
    grads = L.affine_backward(jnp.ones(out.shape, jnp.float16), cache)
    assert [g.dtype for g in grads] == [f32, f32, f32]
    with pytest.raises(ValueError, match=r"^cache.x must be a real floating-point array"):
        tampered = dataclasses.replace(cache, x=jnp.ones((4, 3), jnp.int32))
        L.affine_backward(jnp.ones(out.shape, f32), tampered)


def test_gelu_forward_takes_approximate_only_as_true_or_false():
    """gelu_forward(approximate='no') computed the tanh form (a non-empty string is true)."""
    for approximate in ("no", 1, None):
        with pytest.raises(ValueError, match=r"^approximate must be True or False"):
            L.gelu_forward(jnp.ones(3), approximate=approximate)
        with pytest.raises(ValueError, match=r"^approximate must be True or False"):
            L.batchnorm_gelu_forward(
                _ones((4, 3)), _ones(3), _ones(3), _ones(3), train=True, eps=1e-5, axis=1,
                approximate=approximate,
            )  # fmt: skip


def test_dropout_forward_refuses_a_rate_outside_0_1_as_dropout_does():
    """dropout_forward(rate=1.0) returned zeros and rate=-0.5 scaled every unit by 2/3, silently."""
    x = jnp.ones((2, 3))
    for rate in (1.0, -0.5, "half"):
        with pytest.raises(ValueError, match=r"^rate must be"):
            L.dropout_forward(x, jax.random.key(0), rate=rate)


@pytest.mark.skipif(not native.available("onednn"), reason="the oneDNN kernels are not built")
@pytest.mark.parametrize(
    "forward, backward",
    [("naive", "onednn"), ("xla", "onednn"), ("onednn", "naive"), ("onednn", "im2col")],
)
def test_a_convolution_s_backward_half_refuses_a_cache_of_another_layout(forward, backward):
    """An NCHW cache given to conv_backward_onednn ended in XLA's "inconsistent convolution
    shapes", an NHWC one given to conv_backward_naive in an einsum error."""
    f32 = jnp.float32  # oneDNN's kernels take float32
    x, w, b = jnp.ones((2, 3, 8, 8), f32), jnp.ones((4, 3, 3, 3), f32), jnp.zeros(4, f32)
    if forward == "onednn":
        x = x.transpose(0, 2, 3, 1)
    out, cache = getattr(L, f"conv_forward_{forward}")(x, w, b, pad=1)
    with pytest.raises(
        ValueError, match=rf"^cache is of an N\w+ forward pass, but conv_backward_{backward} takes"
    ):
        getattr(L, f"conv_backward_{backward}")(jnp.ones(out.shape), cache)


def test_an_empty_batch_gives_an_empty_result_in_the_affine_layers_as_in_the_others():
    """affine, affine_relu and affine_bn_relu ended in NumPy's "cannot reshape array of size 0
    into shape (0,newaxis)" where conv2d, relu and max_pool2d return empty results."""
    f32 = jnp.float32
    x, w, b = jnp.zeros((0, 2, 3), f32), jnp.ones((6, 4), f32), jnp.zeros(4, f32)
    assert L.affine(x, w, b).shape == (0, 4)
    assert L.affine_relu(x, w, b).shape == (0, 4)
    ones, zeros = jnp.ones(4, f32), jnp.zeros(4, f32)
    out, *_ = L.affine_bn_relu(x, w, b, ones, zeros, zeros, ones, train=False)
    assert out.shape == (0, 4)
    dw = jax.grad(lambda w: L.affine(x, w, b).sum())(w)
    np.testing.assert_array_equal(dw, jnp.zeros_like(w))
