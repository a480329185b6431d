"""Second order through every layer and model, native kernels included: Hessian-vector
products (``jvp`` of ``grad``), gradient penalties (``grad`` of a gradient norm, w.r.t. the
parameters and the input), ``jax.hessian`` and ``vmap`` of these equal the autodiff twins'
(and, in float64, centred differences of the gradient)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jcnn.layers as L
import jcnn.reference as R
from jcnn import native
from jcnn.models import AirbenchNet, ThreeLayerConvNet, VGGNet
from jcnn.parallel import mixed_precision_loss
from tests.helpers import normal as _normal64

CONV_TARGETS = ("jcnn_conv_forward", "jcnn_conv_backward_data", "jcnn_conv_backward_weights")
needs_onednn = pytest.mark.skipif(
    not native.available("onednn"), reason="oneDNN's kernels are not available here"
)


def normal(seed: int, *shape: int, dtype=jnp.float64) -> jax.Array:
    """The same values whatever the dtype (drawn in float32, then cast), so that a float32
    problem and its float64 truth are one problem."""
    return _normal64(seed, *shape, dtype=jnp.float32).astype(dtype)


def _first(out):
    return out[0] if isinstance(out, tuple) else out


def _scalar(f, cotangent_seed: int = 7):
    """``Σ sin(f(*args))·c`` for a fixed random c: a loss whose first and second derivatives
    reach every output (through a nonlinearity, so that a linear layer's HVP is not 0)."""

    def loss(*args):
        out = _first(f(*args))
        c = normal(cotangent_seed, *out.shape, dtype=out.dtype)
        return jnp.sum(jnp.sin(out) * c)

    return loss


def _hvp(f, args, directions):
    grad = jax.grad(_scalar(f), argnums=tuple(range(len(args))))
    return jax.jit(lambda a, v: jax.jvp(grad, a, v)[1])(args, directions)


def _hvp_and_penalty_grad(f, args, directions):
    """The HVP along ``directions`` and ``∇ ‖∇ loss‖²`` (reverse over reverse, w.r.t. every
    argument), in one program: one compile instead of two."""
    argnums = tuple(range(len(args)))
    grad = jax.grad(_scalar(f), argnums=argnums)

    def penalty(*a):
        return sum(jnp.sum(g**2) for g in grad(*a))

    def both(a, v):
        return jax.jvp(grad, a, v)[1], jax.grad(penalty, argnums=argnums)(*a)

    return jax.jit(both)(args, directions)


def _directions(args, seed: int = 3):
    return tuple(normal(seed + i, *a.shape, dtype=a.dtype) for i, a in enumerate(args))


def _global_error(got, want) -> float:
    """max over leaves of ‖got − want‖, over the largest ‖want‖: per-leaf relative errors
    mean nothing for a leaf whose exact value is ~0 (a bias before a batchnorm)."""
    got, want = jax.tree.leaves(got), jax.tree.leaves(want)
    scale = max(float(jnp.linalg.norm(w.astype(jnp.float64))) for w in want) or 1.0
    diffs = [
        jnp.linalg.norm(g.astype(jnp.float64) - w.astype(jnp.float64))
        for g, w in zip(got, want, strict=True)
    ]
    return max(float(d) for d in diffs) / scale


# ------------------------------------------------------------------------------- layers

RM, RV = jnp.zeros(5, jnp.float64), jnp.full(5, 1.5, jnp.float64)
Y = jnp.array([0, 3, 1, 4, 2, 2])
KEY = jax.random.PRNGKey(5)


def _layer_cases():
    """``(name, layer, twin, args)`` in float64; each layer at each of its formulations."""
    x_nchw, x_nhwc, x2 = normal(0, 3, 2, 6, 6), normal(1, 3, 6, 6, 2), normal(2, 6, 5)
    w, b = normal(3, 5, 2, 3, 3), normal(4, 5)
    g5, b5 = normal(5, 5) + 1.0, normal(6, 5)
    cases = [
        ("affine", L.affine, R.affine, (x2, normal(7, 5, 4), normal(8, 4))),
        ("relu", L.relu, R.relu, (x2,)),
        ("gelu", L.gelu, R.gelu, (x2,)),
        ("residual_add", L.residual_add, R.residual_add, (x2, normal(13, 6, 5))),
        ("softmax_loss", lambda s: L.softmax_loss(s, Y), lambda s: R.softmax_loss(s, Y), (x2,)),
        ("svm_loss", lambda s: L.svm_loss(s, Y), lambda s: R.svm_loss(s, Y), (x2,)),
        (
            "dropout",
            lambda x: L.dropout(x, KEY, rate=0.3, train=True),
            lambda x: R.dropout(x, KEY, rate=0.3, train=True),
            (x2,),
        ),
        (
            "batchnorm",
            lambda x, g, b: L.batchnorm(x, g, b, RM, RV, train=True),
            lambda x, g, b: R.batchnorm(x, g, b, RM, RV, train=True),
            (normal(9, 6, 5), g5, b5),
        ),
        (
            "spatial_batchnorm",
            lambda x, g, b: L.spatial_batchnorm(x, g, b, RM[:2], RV[:2], train=True),
            lambda x, g, b: R.spatial_batchnorm(x, g, b, RM[:2], RV[:2], train=True),
            (x_nchw, g5[:2], b5[:2]),
        ),
        (
            "batchnorm_gelu",
            lambda x, b: L.batchnorm_gelu(x, b, RM, RV, train=True, layout="NHWC"),
            lambda x, b: R.batchnorm_gelu(x, b, RM, RV, train=True, layout="NHWC"),
            (normal(10, 3, 4, 4, 5), b5),
        ),
        (
            # training-mode batchnorm → relu: the compiled kernels (features last)
            "affine_bn_relu",
            lambda x, w, b, g, be: L.affine_bn_relu(x, w, b, g, be, RM, RV, train=True),
            lambda x, w, b, g, be: R.affine_bn_relu(x, w, b, g, be, RM, RV, train=True),
            (x2, normal(11, 5, 5), normal(12, 5), g5, b5),
        ),
        (
            "conv_bn_relu NHWC",
            lambda x, w, b, g, be: L.conv_bn_relu(
                x, w, b, g, be, RM, RV, train=True, pad=1, layout="NHWC"
            ),
            lambda x, w, b, g, be: R.conv_bn_relu(
                x, w, b, g, be, RM, RV, train=True, pad=1, layout="NHWC"
            ),
            (x_nhwc, w, b, g5, b5),
        ),
    ]
    for impl in ("naive", "im2col", "xla"):
        cases.append(
            (
                f"conv2d {impl}",
                lambda x, w, b, impl=impl: L.conv2d(x, w, b, stride=2, pad=1, impl=impl),
                lambda x, w, b: R.conv2d(x, w, b, stride=2, pad=1),
                (x_nchw[:, :, :5, :5], w, b),
            )
        )
        cases.append(
            (
                f"max_pool2d {impl}",
                lambda x, impl=impl: L.max_pool2d(x, impl="naive" if impl == "naive" else "fast"),
                lambda x: R.max_pool2d(x),
                (x_nchw,),
            )
        )
    cases.append(
        (
            "conv2d NHWC",
            lambda x, w, b: L.conv2d(x, w, b, pad=1, layout="NHWC"),
            lambda x, w, b: R.conv2d(x, w, b, pad=1, layout="NHWC"),
            (x_nhwc, w, b),
        )
    )
    cases.append(
        (
            "conv_relu_pool",
            lambda x, w, b: L.conv_relu_pool(x, w, b, pad=1),
            lambda x, w, b: R.conv_relu_pool(x, w, b, pad=1),
            (x_nchw, w, b),
        )
    )
    return cases


LAYER_CASES = _layer_cases()
LAYER_IDS = [case[0] for case in LAYER_CASES]


@pytest.mark.parametrize("name, layer, twin, args", LAYER_CASES, ids=LAYER_IDS)
def test_layer_hvps_and_gradient_penalties_equal_the_twins_and_centred_differences(
    name, layer, twin, args
):
    # Third derivatives (the penalty's) of two formulations of one function differ by round-off
    # of ~1e-8 in float64 (GELU through erf, max pools through their windows); a wrong rule
    # is off by O(1).
    v = _directions(args)
    (hvp, penalty), (hvp_twin, penalty_twin) = (
        _hvp_and_penalty_grad(f, args, v) for f in (layer, twin)
    )
    assert _global_error(hvp, hvp_twin) < 1e-7
    assert _global_error(penalty, penalty_twin) < 1e-7
    # jcnn's HVP (from the program above) against centred differences of jcnn's gradient.
    grad = jax.jit(jax.grad(_scalar(layer), argnums=tuple(range(len(args)))))
    h = 1e-6
    plus = grad(*(a + h * d for a, d in zip(args, v, strict=True)))
    minus = grad(*(a - h * d for a, d in zip(args, v, strict=True)))
    numeric = [(p - m) / (2 * h) for p, m in zip(plus, minus, strict=True)]
    assert _global_error(hvp, numeric) < 1e-6


@pytest.mark.parametrize(
    "name", ["conv2d NHWC", "conv_bn_relu NHWC", "affine_bn_relu", "batchnorm_gelu"]
)
def test_layer_hessian_and_vmapped_hvps_equal_the_twins(name):
    _, layer, twin, args = LAYER_CASES[LAYER_IDS.index(name)]
    x, rest = args[0], args[1:]

    def hessian(f):
        return jax.jit(jax.hessian(lambda x: _scalar(f)(x, *rest)))(x)

    assert _global_error(hessian(layer), hessian(twin)) < 1e-10
    # vmap over three directions at once: the kernels' batching rules, batched and unbatched
    # operands mixed.
    grad = jax.grad(lambda x: _scalar(layer)(x, *rest))
    directions = jnp.stack([normal(20 + i, *x.shape) for i in range(3)])
    batched = jax.jit(jax.vmap(lambda v: jax.jvp(grad, (x,), (v,))[1]))(directions)
    for i in range(3):
        one = _hvp(lambda x: layer(x, *rest), (x,), (directions[i],))[0]
        np.testing.assert_allclose(batched[i], one, rtol=1e-10, atol=1e-12)


def _conv32(seed: int = 0, dtype=jnp.float32):
    x = normal(seed, 4, 9, 9, 6, dtype=dtype)
    w = normal(seed + 1, 8, 6, 3, 3, dtype=dtype) * 0.3
    return x, w, normal(seed + 2, 8, dtype=dtype)


@needs_onednn
@pytest.mark.parametrize("stride, pad", [(1, 1), (2, 1), (1, 0), (3, 0)])
def test_second_order_through_onednn_stays_on_onednn_and_equals_the_twin(stride, pad):
    args = _conv32()

    def layer(x, w, b):
        return L.conv2d(x, w, b, stride=stride, pad=pad, layout="NHWC")

    def twin(x, w, b):
        return R.conv2d(x, w, b, stride=stride, pad=pad, layout="NHWC")

    v = _directions(args)
    (hvp, penalty), (hvp_twin, penalty_twin) = (
        _hvp_and_penalty_grad(f, args, v) for f in (layer, twin)
    )
    assert _global_error(hvp, hvp_twin) < 2e-6
    assert _global_error(penalty, penalty_twin) < 2e-6
    grad = jax.grad(_scalar(layer), argnums=(0, 1, 2))
    hvp = jax.jit(lambda a, v: jax.jvp(grad, a, v)[1])
    hlo = hvp.lower(args, v).compile().as_text()
    assert all(target in hlo for target in CONV_TARGETS)
    assert " convolution(" not in hlo  # no XLA convolution left
    # vmap over two directions: the kernels' batching rule (unbatched x, w broadcast).
    directions = jax.tree.map(lambda d: jnp.stack([d, -0.5 * d]), v)
    batched = jax.jit(jax.vmap(lambda d: jax.jvp(grad, args, d)[1]))
    assert all(t in batched.lower(directions).compile().as_text() for t in CONV_TARGETS)
    for got, want in zip(batched(directions), hvp(args, v), strict=True):
        np.testing.assert_allclose(got[0], want, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(got[1], -0.5 * want, rtol=1e-5, atol=1e-5)


@needs_onednn
def test_second_order_through_onednn_in_bfloat16_is_the_float32_result_to_bfloat16_precision():
    args16 = _conv32(dtype=jnp.bfloat16)
    args32 = tuple(a.astype(jnp.float32) for a in args16)

    def layer(x, w, b):
        return L.conv2d(x, w, b, pad=1, layout="NHWC")

    v16 = _directions(args16)
    v32 = tuple(d.astype(jnp.float32) for d in v16)
    assert _global_error(_hvp(layer, args16, v16), _hvp(layer, args32, v32)) < 2e-2


# ------------------------------------------------------------------------------- models

MODELS = {
    "ThreeLayerConvNet": ThreeLayerConvNet,
    "VGGNet": VGGNet,
    "AirbenchNet": AirbenchNet,
}


# Narrower and shallower than the defaults (VGG: one conv per stage, one hidden layer;
# AirbenchNet: two blocks, a third repeats the second's layers), to keep second-order
# compilation short; every other setting (layers, layout, kernels, batchnorm, dropout) is
# the default.
SIZES = {
    "ThreeLayerConvNet": {},
    "VGGNet": {"num_filters": (16, 32), "blocks": (1, 1), "hidden_dims": (32,)},
    "AirbenchNet": {"widths": (16, 32)},
}


def _model_problem(name: str, dtype, n: int = 6):
    """The model at its default settings (or its autodiff twin), float32 or float64."""
    jcnn_model = MODELS[name](dtype=dtype, **SIZES[name])
    twin = MODELS[name](dtype=dtype, layers="reference", **SIZES[name])
    params, state = MODELS[name](dtype=jnp.float64, **SIZES[name]).init(jax.random.PRNGKey(0))
    params = jax.tree.map(lambda a: a.astype(dtype), params)
    state = jax.tree.map(lambda a: a.astype(dtype), state)
    x = normal(1, n, *jcnn_model.input_shape, dtype=dtype)
    y = jnp.arange(n) % 10
    return jcnn_model, twin, params, state, x, y


def _model_second_order(model, params, state, x, y):
    """An HVP in the parameters, the gradient of a parameter-gradient penalty, and the
    gradient of an input-gradient penalty."""
    key = jax.random.PRNGKey(2)

    def loss(p, x):
        return model.loss(p, state, x, y, key=key)[0]

    grad_p, grad_x = jax.grad(loss, argnums=0), jax.grad(loss, argnums=1)
    v = jax.tree.map(lambda a: normal(3, *a.shape, dtype=a.dtype), params)

    def penalty_p(p):
        return sum(jnp.sum(g.astype(jnp.float32) ** 2) for g in jax.tree.leaves(grad_p(p, x)))

    def penalty_x(p):
        return jnp.sum(grad_x(p, x) ** 2)

    def all_three(p, v):  # one program: a third of the compiles
        hvp = jax.jvp(lambda p: grad_p(p, x), (p,), (v,))[1]
        return hvp, jax.grad(penalty_p)(p), jax.grad(penalty_x)(p)

    return jax.jit(all_three)(params, v)


@pytest.mark.parametrize("name", list(MODELS))
def test_model_second_order_at_default_settings_equals_the_twins(name):
    """In float64 jcnn's HVP and penalty gradients equal the autodiff twin's; in float32
    (native kernels on: oneDNN's convolutions, the batchnorm kernels) they are within 1e-3 of
    that float64 truth (second order through batchnorm in float32 is ill-conditioned: the
    twin's own float32 results are ~1e-4 off; a wrong rule is off by O(1))."""
    jcnn64, twin64, *problem64 = _model_problem(name, jnp.float64)
    truth = _model_second_order(twin64, *problem64)
    for got, want in zip(_model_second_order(jcnn64, *problem64), truth, strict=True):
        assert _global_error(got, want) < 1e-9
    jcnn32, _, *problem32 = _model_problem(name, jnp.float32)
    for got, want in zip(_model_second_order(jcnn32, *problem32), truth, strict=True):
        assert _global_error(got, want) < 1e-3


# The first layer's vector that the loss depends on (a bias before a batchnorm does not).
FIRST_VECTOR = {
    "ThreeLayerConvNet": ("conv1", "b"),
    "VGGNet": ("conv1_1", "beta"),
    "AirbenchNet": ("norm1_1", "beta"),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_model_hessian_of_a_first_layer_vector_equals_the_twins(name):
    """``jax.hessian`` (forward over reverse, ``vmap`` of ``jvp``) through the whole net."""
    jcnn32, twin32, params, state, x, y = _model_problem(name, jnp.float32, n=4)
    layer, leaf = FIRST_VECTOR[name]

    def hessian(model):
        def loss(b):
            p = {**params, layer: {**params[layer], leaf: b}}
            return model.loss(p, state, x, y, key=jax.random.PRNGKey(2))[0]

        return jax.jit(jax.hessian(loss))(params[layer][leaf])

    got, want = hessian(jcnn32), hessian(twin32)
    assert got.shape == (params[layer][leaf].size,) * 2
    assert _global_error(got, want) < 1e-3


@needs_onednn
def test_model_hvp_in_bfloat16_runs_on_the_kernels_and_points_where_autodiffs_does():
    """In bfloat16 the HVP is as close to float32's as the autodiff twin's bfloat16 HVP is.
    (Second order through batchnorm in bfloat16 is noisy: the twin's cosine to float32 is
    0.7-0.9 depending on the random draw; a wrong rule would be near 0.)"""
    model, twin, params, state, x, y = _model_problem("AirbenchNet", jnp.float32, n=8)
    key = jax.random.PRNGKey(2)
    v = jax.tree.map(lambda a: normal(3, *a.shape, dtype=a.dtype), params)

    def hvp_of(loss_fn):
        grad = jax.grad(lambda p: loss_fn(p, state, x, y, key=key)[0])
        return jax.jit(lambda p, v: jax.jvp(grad, (p,), (v,))[1])

    def flat(tree):
        return jnp.concatenate([a.ravel() for a in jax.tree.leaves(tree)])

    def cosine(a, b):
        return float(jnp.dot(a, b) / (jnp.linalg.norm(a) * jnp.linalg.norm(b)))

    ours = hvp_of(mixed_precision_loss(model, "bfloat16"))
    assert all(t in ours.lower(params, v).compile().as_text() for t in CONV_TARGETS)
    want = flat(hvp_of(model.loss)(params, v))
    got, baseline = (
        flat(ours(params, v)),
        flat(hvp_of(mixed_precision_loss(twin, "bfloat16"))(params, v)),
    )
    assert got.dtype == jnp.float32
    assert cosine(got, want) > 0.5 and cosine(got, want) >= cosine(baseline, want) - 0.02


@pytest.mark.parametrize("name", list(MODELS))
def test_model_gradient_under_checkpoint_and_per_example_vmap_runs_on_the_kernels(name):
    """``jax.checkpoint`` (rematerialisation) and ``vmap`` of ``grad`` over single examples
    give the plain gradient, and the compiled programs keep the kernels."""
    model, _, params, state, x, y = _model_problem(name, jnp.float32, n=4)
    key = jax.random.PRNGKey(2)

    def loss(p, x, y):
        return model.loss(p, state, x, y, key=key)[0]

    plain = jax.jit(jax.grad(loss))(params, x, y)
    remat = jax.jit(jax.grad(jax.checkpoint(loss)))
    assert _global_error(remat(params, x, y), plain) < 1e-6
    assert "jcnn_conv_forward" in remat.lower(params, x, y).compile().as_text() or not (
        native.available("onednn")
    )

    def example_loss(p, x, y):  # test mode: batchnorm would normalise one example alone
        scores, _ = model.apply(p, state, x[None], train=False)
        return model.data_loss(scores, y[None])

    per_example = jax.jit(jax.vmap(jax.grad(example_loss), in_axes=(None, 0, 0)))(params, x, y)
    for i in range(2):
        one = jax.jit(jax.grad(example_loss))(params, x[i], y[i])
        assert _global_error(jax.tree.map(lambda g, i=i: g[i], per_example), one) < 1e-5
