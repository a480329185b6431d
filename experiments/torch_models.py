"""PyTorch eager twins of :class:`jcnn.models.ThreeLayerConvNet`, :class:`jcnn.models.VGGNet`
and :class:`jcnn.models.AirbenchNet`.

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

:class:`AirbenchNet` is airbench94's net (Jordan, 2024) as :class:`jcnn.models.AirbenchNet`
computes it, with its own conventions rather than the cs231n ones above:

* a 2x2 whitening conv with bias (no padding), GELU, then per block of ``widths[s]`` filters
  conv3x3 (no bias) - 2x2 max pool (floor) - batchnorm - GELU - conv3x3 (no bias) -
  batchnorm - GELU; a max pool over the whole final map, a linear head without bias, its
  scores times ``head_scale`` (1/9); GELU is the exact one (:class:`~torch.nn.GELU`);
* batchnorm shifts only: :class:`~torch.nn.BatchNorm2d` with its weight fixed at 1
  (``requires_grad=False``), ``eps=1e-12``; jcnn's ``bn_momentum=0.6`` (the weight of the old
  running statistics) is torch's ``momentum=0.4``;
* the loss is the mean cross-entropy with ``label_smoothing=0.2``
  (:func:`torch.nn.functional.cross_entropy`'s smoothing is jcnn's: targets
  ``(1 − ε)·onehot + ε/K``), plus the L2 term when ``reg > 0`` (0 in airbench);
* PyTorch's default weights (uniform ``±1/√fan_in``) with the first ``min(F, C_in)``
  filters of every 3x3 conv set to the identity, zero biases and shifts, as jcnn's ``init``;
  the whitening filters stay random unless loaded (airbench computes them from the data) and
  are frozen (``requires_grad=False``) unless ``train_whiten=True``;
* :func:`make_sgd_nesterov` builds the benchmark's optimiser for it: SGD with Nesterov
  momentum (airbench's 0.85) over every parameter that requires a gradient, one learning
  rate, no weight decay (airbench's parameter groups and schedule are left out: a step costs
  its forward and backward pass); :func:`load_jcnn_airbench_params` loads jcnn's parameters.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "AirbenchNet",
    "ThreeLayerConvNet",
    "VGGNet",
    "load_jcnn_airbench_params",
    "load_jcnn_params",
    "make_adam",
    "make_sgd_nesterov",
    "train_step",
]


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
    """Mixin: ``loss(x, y)`` = softmax cross-entropy (with ``label_smoothing``, 0 unless set)
    + ``0.5·reg·Σ W²`` over :meth:`weights`."""

    reg: float
    label_smoothing: float = 0.0

    def weights(self) -> list[torch.Tensor]:
        """The tensors the L2 penalty applies to: conv and affine weights only."""
        return [m.weight for m in self.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        data_loss = F.cross_entropy(self(x), y, label_smoothing=self.label_smoothing)
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


class AirbenchNet(_L2Loss):
    """whitening conv - gelu - [conv - pool - BN(shift) - gelu - conv - BN(shift) - gelu] x 3
    - global max pool - linear (no bias) x head_scale (module docs).

    The arguments are :class:`jcnn.models.AirbenchNet`'s (``bn_momentum`` in jcnn's
    convention, the weight of the old running statistics), plus ``train_whiten``: True to
    train the whitening filters too (airbench freezes them). Modules: ``whiten``,
    ``convs['conv{s}_{a}']``, ``norms['norm{s}_{a}']`` (jcnn's parameter names), ``out``.
    """

    def __init__(
        self,
        input_dim: Sequence[int] = (3, 32, 32),
        widths: Sequence[int] = (64, 256, 256),
        whiten_kernel: int = 2,
        num_classes: int = 10,
        head_scale: float = 1.0 / 9.0,
        bn_momentum: float = 0.6,
        bn_eps: float = 1e-12,
        label_smoothing: float = 0.2,
        reg: float = 0.0,
        train_whiten: bool = False,
    ):
        super().__init__()
        if len(widths) != 3:
            raise ValueError(f"widths must have 3 entries (one per block), got {widths!r}")
        c, h, w = input_dim
        k = whiten_kernel
        self.reg = reg
        self.label_smoothing = label_smoothing
        self.head_scale = head_scale
        c_in = 2 * c * k * k
        self.whiten = nn.Conv2d(c, c_in, k, bias=True)
        self.convs = nn.ModuleDict()
        self.norms = nn.ModuleDict()
        h, w = h - k + 1, w - k + 1
        for s, width in enumerate(widths, start=1):
            if h < 2 or w < 2:
                raise ValueError(f"input_dim={tuple(input_dim)} is too small for block {s}")
            h, w = h // 2, w // 2
            for a, fan_in in ((1, c_in), (2, width)):
                self.convs[f"conv{s}_{a}"] = nn.Conv2d(fan_in, width, 3, padding=1, bias=False)
                bn = nn.BatchNorm2d(width, eps=bn_eps, momentum=1.0 - bn_momentum)
                bn.weight.requires_grad_(False)
                self.norms[f"norm{s}_{a}"] = bn
            c_in = width
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
        self.head_pool = nn.MaxPool2d(kernel_size=(h, w))
        self.out = nn.Linear(c_in, num_classes, bias=False)
        self.act = nn.GELU()
        with torch.no_grad():
            nn.init.zeros_(self.whiten.bias)
            for conv in self.convs.values():
                n = min(conv.out_channels, conv.in_channels)
                nn.init.dirac_(conv.weight[:n])
        self.whiten.weight.requires_grad_(train_whiten)

    def _conv_norm(self, x: torch.Tensor, s: int, a: int) -> torch.Tensor:
        x = self.convs[f"conv{s}_{a}"](x)
        if a == 1:
            x = self.pool(x)
        return self.act(self.norms[f"norm{s}_{a}"](x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.whiten(x))
        for s in (1, 2, 3):
            x = self._conv_norm(self._conv_norm(x, s, 1), s, 2)
        return self.out(torch.flatten(self.head_pool(x), 1)) * self.head_scale


def _put(param: torch.Tensor, value) -> None:
    """Copy ``value`` (anything :func:`numpy.asarray` accepts) into ``param``, shapes equal."""
    value = torch.from_numpy(np.array(value)).to(dtype=param.dtype, device=param.device)
    if value.shape != param.shape:
        raise ValueError(f"shape {tuple(value.shape)} does not fit {tuple(param.shape)}")
    param.data.copy_(value)


def load_jcnn_params(model: nn.Module, layers: Sequence[dict]) -> None:
    """Copy jcnn parameters into ``model``, in place.

    ``layers`` holds one dict per conv/affine layer, in network order (for a jcnn ThreeLayerConvNet
    ``[params['conv1'], params['fc1'], params['out']]``; for a VGGNet the entries of
    ``layer_names()`` and then ``'out'``), each with ``'w'``, ``'b'`` and, for a layer followed by
    batchnorm, ``'gamma'`` and ``'beta'``. Affine weights ``(D, M)`` are transposed to torch's
    ``(M, D)``. Arrays may be numpy or anything :func:`numpy.asarray` accepts.
    """
    weighted = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    norms = iter(m for m in model.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)))
    if len(weighted) != len(layers):
        raise ValueError(f"{len(layers)} parameter dicts for {len(weighted)} conv/affine layers")

    with torch.no_grad():
        for module, p in zip(weighted, layers, strict=True):
            w = np.asarray(p["w"])
            _put(module.weight, w.T if isinstance(module, nn.Linear) else w)
            _put(module.bias, p["b"])
            if "gamma" in p:
                bn = next(norms)
                _put(bn.weight, p["gamma"])
                _put(bn.bias, p["beta"])


def load_jcnn_airbench_params(
    model: AirbenchNet, params: Mapping[str, Mapping], state: Mapping[str, Mapping] | None = None
) -> None:
    """Copy the parameters (and running statistics) of a :class:`jcnn.models.AirbenchNet`
    into its twin ``model``, in place.

    Args:
        model: the twin, built with the jcnn model's sizes.
        params: jcnn's parameters: ``whiten`` (``w``, ``b``), ``conv{s}_{a}`` (``w``),
            ``norm{s}_{a}`` (``beta``), ``out`` (``w``, ``(D, M)``: transposed to torch's
            ``(M, D)``); numpy arrays or anything :func:`numpy.asarray` accepts.
        state: jcnn's state (``norm{s}_{a}``: ``running_mean``, ``running_var``), or None to
            leave the twin's running statistics as they are.

    Raises:
        ValueError: ``params`` does not name exactly the twin's layers, or an array's shape
            does not fit.
    """
    want = {"whiten", "out", *model.convs, *model.norms}
    if set(params) != want:
        raise ValueError(f"params has layers {sorted(params)}, the twin {sorted(want)}")
    with torch.no_grad():
        _put(model.whiten.weight, params["whiten"]["w"])
        _put(model.whiten.bias, params["whiten"]["b"])
        for name, conv in model.convs.items():
            _put(conv.weight, params[name]["w"])
        for name, bn in model.norms.items():
            _put(bn.bias, params[name]["beta"])
            if state is not None:
                _put(bn.running_mean, state[name]["running_mean"])
                _put(bn.running_var, state[name]["running_var"])
        _put(model.out.weight, np.asarray(params["out"]["w"]).T)


def make_adam(model: nn.Module, learning_rate: float) -> torch.optim.Adam:
    """Adam with optax's defaults: betas (0.9, 0.999), eps 1e-8, no weight decay."""
    return torch.optim.Adam(model.parameters(), lr=learning_rate, betas=(0.9, 0.999), eps=1e-8)


def make_sgd_nesterov(
    model: nn.Module, learning_rate: float, momentum: float = 0.85
) -> torch.optim.SGD:
    """SGD with Nesterov momentum, no weight decay, over the parameters that require a gradient
    (for :class:`AirbenchNet`: all but the whitening filters and the batchnorm weights).

    Args:
        model: the model.
        learning_rate: the one learning rate.
        momentum: the Nesterov momentum (airbench's 0.85).

    Returns:
        The optimiser; its update is optax's ``sgd(learning_rate, momentum, nesterov=True)``.
    """
    trainable = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.SGD(trainable, lr=learning_rate, momentum=momentum, nesterov=True)


def train_step(
    model: _L2Loss, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    """One training step as a user writes it: zero_grad, forward, backward, step."""
    optimizer.zero_grad(set_to_none=True)
    loss = model.loss(x, y)
    loss.backward()
    optimizer.step()
    return loss
