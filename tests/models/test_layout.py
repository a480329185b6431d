"""The activation layout inside a model (NCHW or NHWC) changes nothing but speed."""

import jax
import numpy as np
import pytest

from jcnn.gradcheck import rel_error
from jcnn.models import ThreeLayerConvNet, VGGNet
from tests.models.util import ZERO_GRAD, float64_batch, leaves, loss_grad


def _same(a, b, tol):
    """Equal up to ``tol`` relative to the leaf's scale (elementwise relative error is
    meaningless for entries that are round-off around 0, e.g. biases before batchnorm)."""
    scale = max(np.abs(a).max(), np.abs(b).max())
    return scale < ZERO_GRAD or np.abs(np.asarray(a) - np.asarray(b)).max() / scale < tol


VGG = dict(
    input_dim=(3, 8, 8), num_filters=(3, 4), blocks=(2, 1), hidden_dims=(5,), dropout=0.3,
    reg=0.1, weight_scale=0.3, dtype="float64",
)  # fmt: skip
THREE = dict(
    input_dim=(3, 8, 8), num_filters=3, filter_size=3, hidden_dim=6, reg=0.1, weight_scale=0.3,
    dtype="float64",
)  # fmt: skip


@pytest.mark.parametrize("cls,kw", [(VGGNet, VGG), (ThreeLayerConvNet, THREE)])
def test_nhwc_inside_gives_the_same_loss_state_and_gradients_as_nchw(cls, kw):
    nchw, nhwc = cls(**kw, layout="NCHW"), cls(**kw, layout="NHWC")
    params, state = nchw.init(jax.random.key(0))
    X, y = float64_batch(nchw.input_dim, 6, seed=1)
    key = jax.random.key(2)
    (l1, s1), g1 = loss_grad(nchw, params, state, X, y, key)
    (l2, s2), g2 = loss_grad(nhwc, params, state, X, y, key)
    assert rel_error(l1, l2) < 1e-12
    for name, leaf in leaves(g1).items():
        assert _same(leaf, leaves(g2)[name], 1e-10), name
    for name, leaf in leaves(s1).items():
        assert rel_error(leaf, leaves(s2)[name]) < 1e-12, name
    ref = cls(**kw, layout="NHWC", layers="reference")
    (l3, _), g3 = loss_grad(ref, params, state, X, y, key)
    for name, leaf in leaves(g2).items():
        assert _same(leaf, leaves(g3)[name], 1e-8), name


def test_auto_layout_is_nhwc_only_where_the_impls_support_it():
    assert VGGNet(**VGG).layout == "NHWC"
    assert VGGNet(**VGG, conv_impl="im2col").layout == "NCHW"
    assert ThreeLayerConvNet(**THREE, pool_impl="naive").layout == "NCHW"
    assert VGGNet(**VGG, conv_impl="xla").layout == "NHWC"
    assert VGGNet(**VGG, conv_impl="onednn").layout == "NHWC"
    with pytest.raises(ValueError, match="layout='NHWC' needs conv_impl 'auto', 'onednn' or"):
        VGGNet(**VGG, conv_impl="naive", layout="NHWC")
    with pytest.raises(ValueError, match="conv_impl='onednn' runs channels-last"):
        VGGNet(**VGG, conv_impl="onednn", pool_impl="naive")
    with pytest.raises(ValueError, match="layout must be one of"):
        ThreeLayerConvNet(**THREE, layout="CHWN")
