"""The layer library: pure functions whose backward passes are written by hand.

Every layer family keeps the cs231n pair ``xxx_forward(...) -> (out, cache)`` /
``xxx_backward(dout, cache) -> grads`` and exposes one differentiable function built from
that pair with :func:`jax.custom_vjp`. Nothing here calls automatic differentiation.

>>> import jcnn.layers as L
>>> out = L.conv2d(x, w, b, stride=1, pad=1)          # doctest: +SKIP
"""

from jcnn.layers.affine import affine, affine_backward, affine_forward
from jcnn.layers.batchnorm import (
    batchnorm,
    batchnorm_backward,
    batchnorm_backward_graph,
    batchnorm_forward,
    spatial_batchnorm,
)
from jcnn.layers.batchnorm_relu import batchnorm_relu_backward, batchnorm_relu_forward
from jcnn.layers.conv import (
    conv2d,
    conv_backward,
    conv_backward_im2col,
    conv_backward_naive,
    conv_backward_onednn,
    conv_backward_xla,
    conv_forward,
    conv_forward_im2col,
    conv_forward_naive,
    conv_forward_onednn,
    conv_forward_xla,
)
from jcnn.layers.dropout import dropout, dropout_backward, dropout_forward
from jcnn.layers.gelu import (
    batchnorm_gelu,
    batchnorm_gelu_backward,
    batchnorm_gelu_forward,
    gelu,
    gelu_backward,
    gelu_forward,
)
from jcnn.layers.losses import (
    softmax_loss,
    softmax_loss_backward,
    softmax_loss_forward,
    svm_loss,
    svm_loss_backward,
    svm_loss_forward,
)
from jcnn.layers.pool import (
    max_pool2d,
    max_pool_backward,
    max_pool_backward_fast,
    max_pool_backward_naive,
    max_pool_forward,
    max_pool_forward_fast,
    max_pool_forward_naive,
)
from jcnn.layers.relu import relu, relu_backward, relu_forward
from jcnn.layers.residual import residual_add, residual_add_backward, residual_add_forward
from jcnn.layers.sandwich import (
    affine_bn_relu,
    affine_relu,
    conv_bn_relu,
    conv_relu,
    conv_relu_pool,
)

__all__ = [
    "affine",
    "affine_backward",
    "affine_bn_relu",
    "affine_forward",
    "affine_relu",
    "batchnorm",
    "batchnorm_backward",
    "batchnorm_backward_graph",
    "batchnorm_forward",
    "batchnorm_gelu",
    "batchnorm_gelu_backward",
    "batchnorm_gelu_forward",
    "batchnorm_relu_backward",
    "batchnorm_relu_forward",
    "conv2d",
    "conv_backward",
    "conv_backward_im2col",
    "conv_backward_naive",
    "conv_backward_onednn",
    "conv_backward_xla",
    "conv_bn_relu",
    "conv_forward",
    "conv_forward_im2col",
    "conv_forward_naive",
    "conv_forward_onednn",
    "conv_forward_xla",
    "conv_relu",
    "conv_relu_pool",
    "dropout",
    "dropout_backward",
    "dropout_forward",
    "gelu",
    "gelu_backward",
    "gelu_forward",
    "max_pool2d",
    "max_pool_backward",
    "max_pool_backward_fast",
    "max_pool_backward_naive",
    "max_pool_forward",
    "max_pool_forward_fast",
    "max_pool_forward_naive",
    "relu",
    "relu_backward",
    "relu_forward",
    "residual_add",
    "residual_add_backward",
    "residual_add_forward",
    "softmax_loss",
    "softmax_loss_backward",
    "softmax_loss_forward",
    "spatial_batchnorm",
    "svm_loss",
    "svm_loss_backward",
    "svm_loss_forward",
]
