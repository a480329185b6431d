"""PyTorch eager twins of :class:`jcnn.models.ThreeLayerConvNet` and :class:`jcnn.models.VGGNet`.

They exist so that :mod:`experiments.benchmark` can time the same network, the same loss and
the same optimiser in PyTorch. ``torch`` is an optional dependency: this module imports it at
the top, so import this module only where torch is wanted (the benchmark does so lazily, inside
its torch worker).

What "the same" means here:

* NCHW images, filters ``(F, C, HH, WW)``, "same" padding ``(HH - 1) // 2``, stride 1, 2x2 max-pool
  with stride 2, exactly the layer sequence of the jcnn models.
* Batchnorm ``momentum=0.1`` in torch's convention (``running = 0.9·running + 0.1·batch``), which is
  jcnn's ``momentum=0.9``; ``eps=1e-5``.
* Weights drawn from ``N(0, weight_scale²)``, biases zero, batchnorm ``gamma=1, beta=0``
  (the cs231n initialisation).
* The loss is the mean softmax cross-entropy plus ``0.5·reg·Σ W²`` over the conv and affine
  weights only (not biases, not batchnorm parameters), added to the loss explicitly. This is
  *not* the same as ``weight_decay`` in :class:`torch.optim.Adam`, which adds ``reg·W`` to the
  gradient before Adam's normalisation; here the L2 term is differentiated like any other term,
  as jcnn does.
* :func:`make_adam` builds ``Adam(lr, betas=(0.9, 0.999), eps=1e-8)``, optax's defaults.

Two differences, neither of which changes the loss, the gradients or the cost of a step:
an affine weight is ``(D, M)`` in jcnn (``x @ w``) and ``(M, D)`` in torch's
:class:`~torch.nn.Linear` (:func:`load_jcnn_params` transposes); and torch updates the running
variance with the unbiased batch variance, jcnn (like cs231n) with the biased one.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ThreeLayerConvNet", "VGGNet", "load_jcnn_params", "make_adam", "train_step"]


def _init_(module: nn.Module, weight_scale: float) -> None:
    """cs231n initialisation: N(0, weight_scale²) weights, zero biases, BN gamma 1 / beta 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.normal_(m.weight, mean=0.0, std=weight_scale)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class _L2Loss(nn.Module):
    """Mixin: ``loss(x, y)`` = softmax cross-entropy + ``0.5·reg·Σ W²`` over :meth:`weights`."""

    reg: float

    def weights(self) -> list[torch.Tensor]:
        """The tensors the L2 penalty applies to: conv and affine weights only."""
        return [m.weight for m in self.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        data_loss = F.cross_entropy(self(x), y)
        if not self.reg:
            return data_loss
        return data_loss + 0.5 * self.reg * sum(w.pow(2).sum() for w in self.weights())


class ThreeLayerConvNet(_L2Loss):
    """conv - relu - 2x2 max pool - affine - relu - affine - softmax."""

    def __init__(
        self,
        input_dim: Sequence[int] = (3, 32, 32),
        num_filters: int = 32,
        filter_size: int = 7,
        hidden_dim: int = 100,
        num_classes: int = 10,
        weight_scale: float = 1e-3,
        reg: float = 0.0,
    ):
        super().__init__()
        c, h, w = input_dim
        self.reg = reg
        pad = (filter_size - 1) // 2
        self.conv = nn.Conv2d(c, num_filters, filter_size, padding=pad)
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
        h, w = (h + 2 * pad - filter_size + 1) // 2, (w + 2 * pad - filter_size + 1) // 2
        self.fc1 = nn.Linear(num_filters * h * w, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, num_classes)
        _init_(self, weight_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.conv(x)))
        x = F.relu(self.fc1(torch.flatten(x, 1)))
        return self.fc2(x)


class VGGNet(_L2Loss):
    """[(conv-spatialBN-relu) x blocks[i] - 2x2 max pool] per stage
    - (affine-BN-relu-dropout) per hidden layer - affine - softmax."""

    def __init__(
        self,
        input_dim: Sequence[int] = (3, 32, 32),
        num_filters: Sequence[int] = (64, 128, 256, 512, 512),
        filter_size: int = 3,
        blocks: Sequence[int] = (2, 2, 3, 3, 3),
        hidden_dims: Sequence[int] = (1024, 1024),
        num_classes: int = 10,
        weight_scale: float = 1e-2,
        reg: float = 1e-3,
        use_batchnorm: bool = True,
        dropout: float = 0.0,
    ):
        super().__init__()
        if len(num_filters) != len(blocks):
            raise ValueError(f"num_filters {num_filters} and blocks {blocks} differ in length")
        c, h, w = input_dim
        self.reg = reg
        pad = (filter_size - 1) // 2
        shrink = filter_size - 1 - 2 * pad  # 0 for odd filter sizes
        layers: list[nn.Module] = []
        for f, n in zip(num_filters, blocks, strict=True):
            for _ in range(n):
                layers.append(nn.Conv2d(c, f, filter_size, padding=pad))
                if use_batchnorm:
                    layers.append(nn.BatchNorm2d(f, eps=1e-5, momentum=0.1))
                layers.append(nn.ReLU())
                c = f
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            h, w = (h - n * shrink) // 2, (w - n * shrink) // 2
        self.features = nn.Sequential(*layers)
        head: list[nn.Module] = [nn.Flatten(1)]
        d = c * h * w
        for hidden in hidden_dims:
            head.append(nn.Linear(d, hidden))
            if use_batchnorm:
                head.append(nn.BatchNorm1d(hidden, eps=1e-5, momentum=0.1))
            head.append(nn.ReLU())
            if dropout > 0:
                head.append(nn.Dropout(p=dropout))
            d = hidden
        head.append(nn.Linear(d, num_classes))
        self.classifier = nn.Sequential(*head)
        _init_(self, weight_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def load_jcnn_params(model: nn.Module, layers: Sequence[dict]) -> None:
    """Copy jcnn parameters into ``model``, in place.

    ``layers`` holds one dict per conv/affine layer, in network order (for a jcnn ThreeLayerConvNet
    ``[params['conv1'], params['fc1'], params['out']]``; for a VGGNet the entries of
    ``layer_names()`` and then ``'out'``), each with ``'w'``, ``'b'`` and, for a layer followed by
    batchnorm, ``'gamma'`` and ``'beta'``. Affine weights ``(D, M)`` are transposed to torch's
    ``(M, D)``. Arrays may be numpy or anything :func:`numpy.asarray` accepts.
    """
    import numpy as np

    weighted = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    norms = iter(m for m in model.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)))
    if len(weighted) != len(layers):
        raise ValueError(f"{len(layers)} parameter dicts for {len(weighted)} conv/affine layers")

    def put(param: torch.Tensor, value) -> None:
        value = torch.from_numpy(np.array(value)).to(dtype=param.dtype, device=param.device)
        if value.shape != param.shape:
            raise ValueError(f"shape {tuple(value.shape)} does not fit {tuple(param.shape)}")
        param.data.copy_(value)

    with torch.no_grad():
        for module, p in zip(weighted, layers, strict=True):
            w = np.asarray(p["w"])
            put(module.weight, w.T if isinstance(module, nn.Linear) else w)
            put(module.bias, p["b"])
            if "gamma" in p:
                bn = next(norms)
                put(bn.weight, p["gamma"])
                put(bn.bias, p["beta"])


def make_adam(model: nn.Module, learning_rate: float) -> torch.optim.Adam:
    """Adam with optax's defaults: betas (0.9, 0.999), eps 1e-8, no weight decay."""
    return torch.optim.Adam(model.parameters(), lr=learning_rate, betas=(0.9, 0.999), eps=1e-8)


def train_step(
    model: _L2Loss, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    """One training step as a user writes it: zero_grad, forward, backward, step."""
    optimizer.zero_grad(set_to_none=True)
    loss = model.loss(x, y)
    loss.backward()
    optimizer.step()
    return loss
