"""A model exported with jax.export at its default settings (native kernels on) holds no
jcnn custom call and runs in an interpreter that cannot import jcnn, with the same output."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jcnn.models import AirbenchNet, ThreeLayerConvNet, VGGNet

WITHOUT_JCNN = textwrap.dedent(
    """
    import sys
    sys.modules["jcnn"] = None  # any import of jcnn now fails
    import jax, numpy as np
    try:
        import jcnn  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("jcnn was importable")
    exported = jax.export.deserialize(open(sys.argv[1], "rb").read())
    images = np.load(sys.argv[2])
    np.save(sys.argv[3], np.asarray(exported.call(images)))
    """
)


# Each model's layers at their defaults, narrower and (VGG) shallower: size proves nothing here.
MODELS = [
    ThreeLayerConvNet(),
    VGGNet(num_filters=(16, 32), blocks=(1, 1), hidden_dims=(32,)),
    AirbenchNet(widths=(16, 32, 32)),
]


@pytest.mark.parametrize("model", MODELS, ids=lambda m: type(m).__name__)
def test_exported_inference_runs_without_jcnn_and_predicts_the_same(model, tmp_path):
    params, state = model.init(jax.random.PRNGKey(0))

    def predict(images):
        return jax.nn.softmax(model.apply(params, state, images, train=False)[0])

    images = np.random.default_rng(0).standard_normal((3, *model.input_shape)).astype(np.float32)
    batch = jax.export.symbolic_shape("b")[0]
    spec = jax.ShapeDtypeStruct((batch, *model.input_shape), jnp.float32)
    exported = jax.export.export(jax.jit(predict))(spec)
    assert "@jcnn_" not in exported.mlir_module()  # no custom call of jcnn's
    (tmp_path / "model.bin").write_bytes(exported.serialize())
    np.save(tmp_path / "images.npy", images)
    (tmp_path / "load.py").write_text(WITHOUT_JCNN)
    done = subprocess.run(
        [sys.executable, "load.py", "model.bin", "images.npy", "out.npy"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    want = np.asarray(jax.jit(predict)(images))
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), want, rtol=1e-4, atol=1e-6)


def test_an_exported_training_step_holds_the_hand_written_backward_as_xla_code():
    model = AirbenchNet(widths=(8, 8, 8))
    params, state = model.init(jax.random.PRNGKey(0))
    images = jnp.zeros((4, *model.input_shape), jnp.float32)
    labels = jnp.zeros(4, jnp.int32)

    def grads(params, images, labels):
        return jax.grad(lambda p: model.loss(p, state, images, labels)[0])(params)

    exported = jax.export.export(jax.jit(grads))(params, images, labels)
    assert "@jcnn_" not in exported.mlir_module()  # no custom call of jcnn's
    restored = jax.export.deserialize(exported.serialize())
    got, want = restored.call(params, images, labels), jax.jit(grads)(params, images, labels)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6)
