"""Every layer's gradient is the same called eagerly (operation by operation, as a cs231n
notebook calls it) as under ``jax.jit``. The other layer tests prove each VJP under jit, where
it compiles once; this proves the eager path once per layer and implementation, the native
kernels (float32, channels-last) included."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jcnn.layers as L
from jcnn.gradcheck import rel_error
from jcnn.layers.batchnorm_relu import batchnorm_relu
from tests.helpers import normal

F32 = jnp.float32


def _bn(d, dtype=jnp.float64):
    """gamma, beta, running mean, running variance of ``d`` channels."""
    return (normal(1, d, dtype=dtype) * 0.5 + 1.0, normal(2, d, dtype=dtype),
            normal(3, d, dtype=dtype) * 0.1, jnp.abs(normal(4, d, dtype=dtype)) + 0.5)  # fmt: skip


def _cases():
    """name -> (function of the differentiated arrays, those arrays)."""
    x2, w2, b2 = normal(5, 4, 6), normal(6, 6, 3), normal(7, 3)
    x4, w4, b4 = normal(8, 2, 3, 6, 6), normal(9, 4, 3, 3, 3), normal(10, 4)
    nhwc = jnp.transpose(x4, (0, 2, 3, 1)).astype(F32)
    y = jnp.array([0, 2, 1, 2])
    key = jax.random.key(0)
    cases = {
        "affine": (L.affine, (x2, w2, b2)),
        "affine_relu": (L.affine_relu, (x2, w2, b2)),
        "affine_bn_relu": (lambda *a: L.affine_bn_relu(*a, train=True)[0], (x2, w2, b2, *_bn(3))),
        "batchnorm": (lambda *a: L.batchnorm(*a, train=True)[0], (x2, *_bn(6))),
        "batchnorm_relu": (
            lambda *a: batchnorm_relu(*a, train=True, momentum=0.9, eps=1e-5, axis=1)[0],
            (x2, *_bn(6)),
        ),
        "spatial_batchnorm": (lambda *a: L.spatial_batchnorm(*a, train=True)[0], (x4, *_bn(3))),
        "spatial_batchnorm NHWC float32": (
            lambda *a: L.spatial_batchnorm(*a, train=True, layout="NHWC")[0],
            (nhwc, *_bn(3, F32)),
        ),
        "batchnorm_gelu": (lambda *a: L.batchnorm_gelu(*a, train=True)[0], (x4, *_bn(3)[1:])),
        "batchnorm_gelu NHWC float32": (
            lambda *a: L.batchnorm_gelu(*a, train=True, layout="NHWC")[0],
            (nhwc, *_bn(3, F32)[1:]),
        ),
        "conv_relu": (lambda *a: L.conv_relu(*a, pad=1), (x4, w4, b4)),
        "conv_relu_pool": (lambda *a: L.conv_relu_pool(*a, pad=1), (x4, w4, b4)),
        "conv_bn_relu": (
            lambda *a: L.conv_bn_relu(*a, train=True, pad=1)[0],
            (x4, w4, b4, *_bn(4)),
        ),
        "conv_bn_relu NHWC float32": (
            lambda *a: L.conv_bn_relu(*a, train=True, pad=1, layout="NHWC")[0],
            (nhwc, w4.astype(F32), b4.astype(F32), *_bn(4, F32)),
        ),
        "dropout": (lambda x: L.dropout(x, key, rate=0.5, train=True), (x2,)),
        "gelu": (L.gelu, (x2,)),
        "relu": (L.relu, (x2,)),
        "residual_add": (L.residual_add, (x2, normal(11, 4, 6))),
        "softmax_loss": (lambda s: L.softmax_loss(s, y), (w2[:4],)),
        "svm_loss": (lambda s: L.svm_loss(s, y), (w2[:4],)),
    }
    for impl in ("xla", "im2col", "naive"):
        cases[f"conv2d {impl}"] = (lambda *a, i=impl: L.conv2d(*a, pad=1, impl=i), (x4, w4, b4))
    cases["conv2d NHWC float32"] = (
        lambda *a: L.conv2d(*a, pad=1, layout="NHWC"),
        (nhwc, w4.astype(F32), b4.astype(F32)),
    )
    for impl in ("fast", "naive"):
        cases[f"max_pool2d {impl}"] = (lambda x, i=impl: L.max_pool2d(x, impl=i), (x4,))
    return cases


@pytest.mark.parametrize("name", sorted(_cases()))
def test_the_gradient_is_the_same_eager_as_jitted(name):
    f, args = _cases()[name]
    out = jax.eval_shape(f, *args)
    dout = normal(99, *out.shape, dtype=out.dtype)
    grad = jax.grad(lambda *a: jnp.sum(f(*a) * dout), argnums=tuple(range(len(args))))
    for eager, jitted in zip(grad(*args), jax.jit(grad)(*args), strict=True):
        if out.dtype == jnp.float64:
            assert rel_error(eager, jitted) < 1e-12
        else:  # float32: eager and fused code round differently
            scale = float(jnp.max(jnp.abs(jitted)))
            np.testing.assert_allclose(eager, jitted, rtol=1e-4, atol=1e-5 * scale)
