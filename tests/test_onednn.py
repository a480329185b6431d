"""jcnn.native.onednn: oneDNN's convolutions equal XLA's in every direction (float32 tightly,
bfloat16 to bfloat16's precision), under jit and vmap and inside whole models, and jcnn falls
back to XLA wherever they cannot run."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jcnn.layers as L
from jcnn import native
from jcnn.layers._conv_common import lax_dw, lax_dx
from jcnn.layers.conv_onednn import KERNELS
from jcnn.layers.conv_onednn import forward as onednn_forward
from jcnn.models import AirbenchNet, VGGNet
from jcnn.native import onednn
from jcnn.native._library import Library, Unavailable
from jcnn.parallel import mixed_precision_loss
from tests.test_native import HAVE_COMPILER, _run_script

LOADED = native.load("onednn")
needs_onednn = pytest.mark.skipif(not LOADED, reason=f"oneDNN kernels: {native.status('onednn')}")

# (N, H, C, F, K, stride, pad): odd and single batches (one half), strides that tile, 1x1.
GEOMETRIES = [
    (5, 9, 3, 4, 3, 1, 1),
    (4, 8, 6, 5, 2, 2, 0),
    (3, 7, 4, 8, 3, 2, 1),
    (1, 6, 3, 2, 2, 1, 0),
    (6, 10, 16, 32, 3, 1, 1),
    (2, 5, 7, 3, 1, 1, 0),
    (4, 4, 8, 8, 5, 1, 2),
]


CONV_TARGETS = ("jcnn_conv_forward", "jcnn_conv_backward_data", "jcnn_conv_backward_weights")


def _operands(n, h, c, f, k, stride, pad, seed=0):
    keys = jax.random.split(jax.random.key(seed), 3)
    x = jax.random.normal(keys[0], (n, h, h, c), jnp.float32)
    w = jax.random.normal(keys[1], (f, c, k, k), jnp.float32)
    ho = (h + 2 * pad - k) // stride + 1
    dout = jax.random.normal(keys[2], (n, ho, ho, f), jnp.float32)
    return x, w, dout


def _xla(x, w, dout, stride, pad):
    """The three directions by XLA's convolutions (jcnn's fallbacks)."""
    out = jax.lax.conv_general_dilated(
        x, w, (stride, stride), ((pad, pad), (pad, pad)), dimension_numbers=("NHWC", "OIHW", "NHWC")
    )
    dx = lax_dx(dout, w, stride=stride, pad=pad, x_shape=x.shape)
    dw = lax_dw(dout, x, stride=stride, pad=pad, w_shape=w.shape)
    return out, dx, dw


def _kernels(x, w, dout, stride, pad):
    """The three directions as the conv layer computes them (oneDNN where loaded)."""
    out = onednn_forward(x, w, jnp.zeros(w.shape[0], x.dtype), stride=stride, pad=pad)
    dx = KERNELS.conv_backward_data(dout, w, x.shape, stride=stride, pad=pad)
    dw = KERNELS.conv_backward_weights(dout, x, w.shape, stride=stride, pad=pad)
    return out[0], dx, dw


def _relative(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.abs(got - want).max() / np.abs(want).max())


@needs_onednn
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=str)
def test_each_direction_equals_xla_in_float32(geometry):
    *shape, stride, pad = geometry
    x, w, dout = _operands(*shape, stride, pad)
    got = jax.jit(_kernels, static_argnums=(3, 4))(x, w, dout, stride, pad)
    want = jax.jit(_xla, static_argnums=(3, 4))(x, w, dout, stride, pad)
    for name, g, r in zip(("out", "dx", "dw"), got, want, strict=True):
        assert g.dtype == jnp.float32 and g.shape == r.shape, name
        assert _relative(g, r) < 2e-6, name


@needs_onednn
@pytest.mark.parametrize("geometry", GEOMETRIES[:5], ids=str)
def test_each_direction_in_bfloat16_is_xla_to_bfloat16_precision(geometry):
    *shape, stride, pad = geometry
    x, w, dout = (a.astype(jnp.bfloat16) for a in _operands(*shape, stride, pad))
    got = jax.jit(_kernels, static_argnums=(3, 4))(x, w, dout, stride, pad)
    # XLA on the same bfloat16 values, computed in float32: the exact products, summed.
    exact = jax.jit(_xla, static_argnums=(3, 4))(
        *(a.astype(jnp.float32) for a in (x, w, dout)), stride, pad
    )
    for name, g, r in zip(("out", "dx", "dw"), got, exact, strict=True):
        assert g.dtype == jnp.bfloat16, name
        # float32 accumulation, one rounding to bfloat16 (2^-8 relative) at the end
        assert _relative(g, r) < 2**-8, name


@needs_onednn
def test_the_compiled_step_calls_the_three_kernels():
    x, w, dout = _operands(4, 8, 3, 5, 3, 1, 1)

    def loss(x, w):
        return jnp.sum(L.conv2d(x, w, jnp.zeros(5, x.dtype), pad=1, layout="NHWC") * dout)

    hlo = jax.jit(jax.value_and_grad(loss, argnums=(0, 1))).lower(x, w).compile().as_text()
    for target in onednn.TARGETS:
        assert target in hlo, target
    nchw = jax.jit(jax.grad(lambda x, w: jnp.sum(L.conv2d(x, w, jnp.zeros(5, x.dtype), pad=1))))
    assert "jcnn_conv" not in nchw.lower(jnp.moveaxis(x, 3, 1), w).compile().as_text()


@needs_onednn
def test_vmap_runs_each_problem_as_its_own_convolution():
    xs = jax.random.normal(jax.random.key(2), (3, 4, 8, 8, 5), jnp.float32)
    ws = jax.random.normal(jax.random.key(3), (3, 6, 5, 3, 3), jnp.float32)
    douts = jax.random.normal(jax.random.key(4), (3, 4, 8, 8, 6), jnp.float32)
    batched = jax.jit(jax.vmap(lambda x, w, d: _kernels(x, w, d, 1, 1)))
    assert "jcnn_conv_backward_weights" in batched.lower(xs, ws, douts).compile().as_text()
    got = batched(xs, ws, douts)
    for i in range(3):
        for g, r in zip(got, _xla(xs[i], ws[i], douts[i], 1, 1), strict=True):
            assert _relative(g[i], r) < 2e-6
    # one side batched, the other not (vmap broadcasts it)
    shared = jax.vmap(lambda x: _kernels(x, ws[0], douts[0], 1, 1)[0])(xs)
    assert _relative(shared[1], _xla(xs[1], ws[0], douts[0], 1, 1)[0]) < 2e-6


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float16])
def test_other_dtypes_take_xla(dtype):
    x, w, dout = (a.astype(dtype) for a in _operands(3, 6, 2, 4, 3, 1, 1))
    f = jax.jit(_kernels, static_argnums=(3, 4))
    assert "jcnn_conv" not in f.lower(x, w, dout, 1, 1).compile().as_text()
    for g, r in zip(f(x, w, dout, 1, 1), _xla(x, w, dout, 1, 1), strict=True):
        assert g.dtype == dtype
        np.testing.assert_array_equal(np.asarray(g), np.asarray(r))


def _grads(model, params, state, X, y, compute_dtype=None):
    loss = mixed_precision_loss(model, compute_dtype)
    f = jax.jit(jax.value_and_grad(lambda p: loss(p, state, X, y)[0]))
    return f, f(params)


def _leaf_errors(g, g_ref):
    """``max|g − g_ref| / max|g_ref|`` per leaf, leaving out structurally zero leaves (a conv
    bias before batchnorm: float32 round-off on both sides)."""
    out = {}
    pairs = zip(jax.tree.leaves_with_path(g), jax.tree.leaves_with_path(g_ref), strict=True)
    for (path, a), (_, b) in pairs:
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        if max(np.abs(a).max(), np.abs(b).max()) < 1e-6:
            continue
        out[jax.tree_util.keystr(path)] = float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))
    return out


MODELS = {
    "airbench": AirbenchNet(input_dim=(3, 16, 16), widths=(8, 16, 16)),
    "vgg": VGGNet(
        input_dim=(3, 16, 16), num_filters=(8, 16), blocks=(2, 1), hidden_dims=(16,),
        use_batchnorm=True, layout="NHWC",
    ),
}  # fmt: skip


def _setup(name):
    model = MODELS[name]
    rng = np.random.default_rng(0)
    X = rng.normal(size=(8, *model.input_dim)).astype(np.float32)
    y = rng.integers(0, 10, 8)
    if name == "airbench":
        params, state = model.init_with_data(jax.random.key(1), X)
    else:
        params, state = model.init(jax.random.key(1))
    return model, params, state, X, y


@needs_onednn
@pytest.mark.parametrize("name", sorted(MODELS))
def test_whole_model_gradient_equals_the_reference_twin_in_float32(name):
    model, params, state, X, y = _setup(name)
    f, (loss, g) = _grads(model, params, state, X, y)
    assert "jcnn_conv_backward_weights" in f.lower(params).compile().as_text()
    twin = dataclasses.replace(model, layers="reference")
    _, (loss_ref, g_ref) = _grads(twin, params, state, X, y)
    assert abs(float(loss) - float(loss_ref)) < 1e-5 * abs(float(loss_ref))
    for leaf, error in _leaf_errors(g, g_ref).items():
        assert error < 1e-4, (leaf, error)


def _flat(tree):
    return np.concatenate([np.ravel(np.asarray(a, np.float64)) for a in jax.tree.leaves(tree)])


def _without_onednn(monkeypatch):
    """Makes the oneDNN library unavailable in this process (as if its wheels were missing)."""

    def missing():
        raise Unavailable("no-onednn")

    stand_in = dataclasses.replace(native.LIBRARIES["onednn"], requirements=missing)
    monkeypatch.setitem(native.LIBRARIES, "onednn", stand_in)
    for target in onednn.TARGETS:
        monkeypatch.setitem(native.TARGETS, target, stand_in)
    for kernel in (KERNELS.forward, KERNELS.backward_data, KERNELS.backward_weights):
        monkeypatch.setattr(kernel, "library", stand_in)


@needs_onednn
@pytest.mark.parametrize("name", sorted(MODELS))
def test_whole_model_gradient_in_bfloat16_is_as_close_to_float32_as_xlas(name, monkeypatch):
    model, params, state, X, y = _setup(name)
    f, (loss, g) = _grads(model, params, state, X, y, "bfloat16")
    assert "jcnn_conv_backward_data" in f.lower(params).compile().as_text()
    _, (loss32, g32) = _grads(model, params, state, X, y)
    _without_onednn(monkeypatch)
    f_xla, (_, g_xla) = _grads(model, params, state, X, y, "bfloat16")
    assert "jcnn_conv" not in f_xla.lower(params).compile().as_text()
    assert abs(float(loss) - float(loss32)) < 0.02 * abs(float(loss32))
    ours, xla, exact = _flat(g), _flat(g_xla), _flat(g32)
    # bfloat16 activations through a dozen layers of an untrained net are off by several
    # percent whoever computes them; oneDNN's must be no further off than XLA's.
    error, xla_error = (np.linalg.norm(v - exact) / np.linalg.norm(exact) for v in (ours, xla))
    assert error < 1.1 * xla_error + 1e-3, (error, xla_error)
    assert ours @ exact / (np.linalg.norm(ours) * np.linalg.norm(exact)) > 0.98


def test_without_onednn_the_library_reports_it_and_xla_runs(monkeypatch):
    _without_onednn(monkeypatch)
    x, w, dout = _operands(3, 6, 2, 4, 3, 1, 1)
    f = jax.jit(_kernels, static_argnums=(3, 4))
    assert "jcnn_conv" not in f.lower(x, w, dout, 1, 1).compile().as_text()
    assert native.status("onednn") == "no-onednn"
    for g, r in zip(f(x, w, dout, 1, 1), _xla(x, w, dout, 1, 1), strict=True):
        np.testing.assert_array_equal(np.asarray(g), np.asarray(r))


def test_requirements_name_the_missing_wheel(monkeypatch):
    monkeypatch.setattr(onednn, "LIBRARY_DIST", "no-such-distribution-jcnn")
    with pytest.raises(Unavailable, match="no-onednn"):
        onednn.requirements()


def test_status_names_the_libraries_it_knows():
    with pytest.raises(
        ValueError, match=r"library must be one of \['kernels', 'onednn'\], got 'x'"
    ):
        native.status("x")
    assert isinstance(native.LIBRARIES["onednn"], Library)


PROBE = """
import json
import jax, jax.numpy as jnp, numpy as np
import jcnn.layers as L
from jcnn import native
x = jax.random.normal(jax.random.key(0), (4, 6, 6, 3))
w = jax.random.normal(jax.random.key(1), (5, 3, 3, 3))
dims = ("NHWC", "OIHW", "NHWC")
want = jax.lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=dims)
if len(jax.devices()) > 1:  # the batch split over the devices
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    x = jax.device_put(x, NamedSharding(Mesh(np.array(jax.devices()), ("data",)), P("data")))
f = jax.jit(lambda x, w: L.conv2d(x, w, jnp.zeros(5), pad=1, layout="NHWC"))
hlo = f.lower(x, w).compile().as_text()
custom_call = "jcnn_conv_forward" in hlo
native.to_channel_major(x).block_until_ready()
try:
    L.conv2d(x, w, jnp.zeros(5), pad=1, impl="onednn", layout="NHWC")
    refusal = None
except ValueError as e:
    refusal = str(e).splitlines()[0]
print(json.dumps({"refusal": refusal,
    "onednn": native.status("onednn"), "kernels": native.status("kernels"),
    "custom_call": custom_call, "all_gathers": hlo.count("all-gather"),
    "close": bool(np.allclose(f(x, w), want, rtol=1e-5, atol=1e-5)), "devices": len(jax.devices()),
}))
"""


def _probe(**env):
    return json.loads(_run_script(PROBE, **env).strip().splitlines()[-1])


def test_opting_out_of_onednn_alone_keeps_the_other_kernels():
    result = _probe(JCNN_ONEDNN="0")
    assert result["onednn"] == "opted-out" and not result["custom_call"] and result["close"]
    assert result["kernels"] == ("loaded" if HAVE_COMPILER else "no-compiler")
    # impl='auto' (above) falls back to XLA; asking for oneDNN by name is refused, saying why.
    assert result["refusal"] == (
        "impl='onednn': oneDNN's kernels are not available here (opted-out); use impl='auto' "
        "or impl='xla'"
    )


@needs_onednn
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_each_impl_name_says_what_runs_and_all_compute_the_same(dtype):
    """'auto' and 'onednn' run oneDNN's three kernels, 'xla' none of them; the values and
    gradients agree to the dtype's round-off."""
    x, w, dout = _operands(4, 8, 3, 5, 3, 1, 1)
    x, w, dout = x.astype(dtype), w.astype(dtype), dout.astype(dtype)
    b = jnp.zeros(5, dtype)

    def vjp(impl):
        def f(x, w):
            out, pull = jax.vjp(
                lambda x, w: L.conv2d(x, w, b, pad=1, impl=impl, layout="NHWC"), x, w
            )
            return (out, *pull(dout))

        f = jax.jit(f)
        hlo = f.lower(x, w).compile().as_text()
        return f(x, w), sum(t in hlo for t in CONV_TARGETS)

    want, xla_kernels = vjp("xla")
    assert xla_kernels == 0
    tol = 1e-5 if dtype == jnp.float32 else 2e-2
    for impl in ("auto", "onednn"):
        got, kernels = vjp(impl)
        assert kernels == 3, impl
        for g, v in zip(got, want, strict=True):
            assert _relative(g, v) < tol, impl


def test_onednn_by_name_refuses_what_it_cannot_run_in_one_line():
    x, w, b = jnp.zeros((1, 5, 5, 3)), jnp.zeros((2, 3, 3, 3)), jnp.zeros(2)
    with pytest.raises(ValueError, match="impl='onednn': .* not layout='NCHW'"):
        L.conv2d(x.transpose(0, 3, 1, 2), w, b, impl="onednn")
    f64 = [a.astype(jnp.float64) for a in (x, w, b)]
    with pytest.raises(ValueError, match="impl='onednn': .*float32 or bfloat16, not float64"):
        L.conv2d(*f64, impl="onednn", layout="NHWC")
    # 'auto' takes XLA's convolution for what oneDNN cannot run.
    assert L.conv2d(*f64, layout="NHWC").dtype == jnp.float64


@needs_onednn
def test_with_several_devices_onednn_convolves_each_devices_rows():
    result = _probe(XLA_FLAGS="--xla_force_host_platform_device_count=2")
    assert result["devices"] == 2 and result["custom_call"] and result["close"]
    assert result["all_gathers"] == 0 and result["onednn"] == "loaded"


@needs_onednn
def test_the_openmp_thread_count_of_the_process_is_left_alone():
    import ctypes

    gomp = ctypes.CDLL("libgomp.so.1")
    before = gomp.omp_get_max_threads()
    x, w, dout = _operands(4, 8, 3, 5, 3, 1, 1)
    jax.block_until_ready(jax.jit(_kernels, static_argnums=(3, 4))(x, w, dout, 1, 1))
    assert gomp.omp_get_max_threads() == before


SHARDED_TRANSFORMS = """
import json
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from jcnn import native
from jcnn.models import ThreeLayerConvNet, VGGNet
# The batchnorm kernels (statistics over the whole batch) give way to XLA's twin with several
# devices; keep them off on both sides, so that only the convolutions' split is compared.
native.LIBRARIES["kernels"].load = lambda: False
mesh = Mesh(np.array(jax.devices()), ("data",))
X = jax.random.normal(jax.random.key(1), (8, 3, 8, 8))
y = jnp.arange(8) % 10
Xs = jax.device_put(X, NamedSharding(mesh, P("data")))
out = {}
for model in (ThreeLayerConvNet(input_dim=(3, 8, 8), num_filters=6, filter_size=3,
                                hidden_dim=10, weight_scale="he"),
              VGGNet(input_dim=(3, 8, 8), num_filters=(4, 6), blocks=(1, 1), hidden_dims=(8,),
                     weight_scale="he")):
    params, state = model.init(jax.random.key(0))
    ps = jax.device_put(params, NamedSharding(mesh, P()))
    loss = lambda p, X: model.loss(p, state, X, y)[0]
    v = jax.tree.map(lambda a: jnp.full_like(a, 1e-2), params)
    steps = {
        "grad": jax.grad(loss),
        "grad_of_grad": jax.grad(lambda p, X: sum(
            jnp.sum(g ** 2) for g in jax.tree.leaves(jax.grad(loss)(p, X)))),
        "hvp": lambda p, X: jax.jvp(lambda q: jax.grad(loss)(q, X), (p,), (v,))[1],
        "per_example": lambda p, X: jax.vmap(lambda x, t: jax.grad(
            lambda q: model.loss(q, state, x[None], t[None])[0])(p))(X, y),
    }
    for name, step in steps.items():
        f = jax.jit(step)
        hlo = f.lower(ps, Xs).compile().as_text()
        sharded, single = f(ps, Xs), jax.jit(step)(params, X)
        err = max(float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(b)) + 1e-3))
                  for a, b in zip(jax.tree.leaves(sharded), jax.tree.leaves(single)))
        out[type(model).__name__ + " " + name] = {
            "err": err, "all_gathers": hlo.count("all-gather"),
            "targets": sorted({t for t in ("forward", "backward_data", "backward_weights")
                               if f'"jcnn_conv_{t}"' in hlo}),
        }
print(json.dumps(out))
"""


@needs_onednn
def test_several_devices_run_every_transformation_on_onednn_per_shard():
    """A batch sharded over 2 devices: grad, grad-of-grad, HVP and per-example gradients
    convolve each device's rows on oneDNN (no gather of the batch) and agree with one device
    to float32 round-off. (The small VGG's batchnorm over 8 rows amplifies the round-off of
    the all-reduced sums to ~1e-4 in the gradient and ~2e-3 in grad-of-grad, the same with
    XLA's convolutions partitioned by XLA; a missing or doubled all-reduce would be O(1).)"""
    out = _run_script(SHARDED_TRANSFORMS, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    results = json.loads(out.strip().splitlines()[-1])
    assert len(results) == 8
    for what, r in results.items():
        assert r["all_gathers"] == 0, what
        # (the three-layer net's one convolution needs no data gradient)
        assert {"forward", "backward_weights"} <= set(r["targets"]), what
        assert "backward_data" in r["targets"] or what.startswith("ThreeLayer"), what
        tolerance = 2e-5 if what.startswith("ThreeLayer") else 1e-2
        assert r["err"] < tolerance, (what, r["err"])


@needs_onednn
def test_jax_debug_nans_names_the_convolution_that_made_the_nan():
    x, w, _ = _operands(2, 5, 3, 4, 3, 1, 1)
    f = jax.jit(lambda x, s: L.conv2d(x * s, w, jnp.zeros(4, x.dtype), pad=1, layout="NHWC"))
    with jax.debug_nans(True):
        f(x, 1.0).block_until_ready()
        # x * inf is ±inf, not nan; the convolution's sums of +inf and -inf are the nan.
        with pytest.raises(FloatingPointError, match=r"\(nan\) encountered in jcnn_conv_forward"):
            f(x, jnp.inf)
