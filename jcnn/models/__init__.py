"""Models: hyper-parameters in a frozen dataclass, weights and state in pytrees.

>>> model = VGGNet(num_filters=(64, 64, 128, 256), blocks=(2, 2, 3, 3), hidden_dims=(64, 64),
...                dropout=0.2, reg=1e-3)                                   # doctest: +SKIP
>>> params, state = model.init(key)                                        # doctest: +SKIP
>>> scores, state = model.apply(params, state, X)                          # doctest: +SKIP
>>> (loss, state), grads = jax.value_and_grad(model.loss, has_aux=True)(
...     params, state, X, y, key=key)                                      # doctest: +SKIP

Every model has ``init(key) -> (params, state)``, ``apply(params, state, X, *, train=False,
key=None) -> (scores, new_state)`` and ``loss(params, state, X, y, *, key=None) ->
(loss, new_state)`` (training mode: softmax cross-entropy, with ``label_smoothing`` ε mixed
into the one-hot targets if ε > 0, plus the L2 ``0.5·reg·Σ W²`` over the leaves named ``w``).
``layers='reference'`` builds the model on :mod:`jcnn.reference` (autodiff) instead of the
hand-written :mod:`jcnn.layers`.
"""

from jcnn.models._common import Model, init_weight, init_weights, l2_penalty
from jcnn.models.airbench import AirbenchNet, whitening_filters
from jcnn.models.fc_net import FullyConnectedNet
from jcnn.models.three_layer import ThreeLayerConvNet
from jcnn.models.vgg import VGGNet

__all__ = [
    "AirbenchNet",
    "FullyConnectedNet",
    "Model",
    "ThreeLayerConvNet",
    "VGGNet",
    "init_weight",
    "init_weights",
    "l2_penalty",
    "whitening_filters",
]
