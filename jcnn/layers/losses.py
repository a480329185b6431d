"""Classification losses: softmax cross-entropy and multiclass SVM (hinge), mean over the batch."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jcnn.layers._binding import cache_dataclass, with_vjp
from jcnn.layers._checks import check_labels


@cache_dataclass(static=("label_smoothing",))
class SoftmaxCache:
    probs: jax.Array
    y: jax.Array
    label_smoothing: float = 0.0


@cache_dataclass()
class SvmCache:
    positive: jax.Array
    y: jax.Array


def _one_hot(y: jax.Array, num_classes: int, dtype) -> jax.Array:
    return (y[:, None] == jnp.arange(num_classes)[None, :]).astype(dtype)


def check_label_smoothing(label_smoothing: float) -> float:
    """``label_smoothing`` as a float in [0, 1), or ValueError naming it."""
    try:
        value = float(label_smoothing)
    except (TypeError, ValueError):
        raise ValueError(
            f"label_smoothing must be a float in [0, 1), got {label_smoothing!r}"
        ) from None
    if not 0.0 <= value < 1.0:
        raise ValueError(f"label_smoothing must be a float in [0, 1), got {label_smoothing!r}")
    return value


def _targets(y: jax.Array, num_classes: int, dtype, label_smoothing: float) -> jax.Array:
    """q = (1 − ε)·onehot(y) + ε/K (the one-hot labels when ε = 0)."""
    onehot = _one_hot(y, num_classes, dtype)
    if label_smoothing == 0.0:
        return onehot
    return (1.0 - label_smoothing) * onehot + label_smoothing / num_classes


def softmax_loss_forward(
    scores: jax.Array, y: jax.Array, *, label_smoothing: float = 0.0
) -> tuple[jax.Array, SoftmaxCache]:
    """scores ``(N, K)``, integer labels y ``(N,)`` -> L = −(1/N) Σₙ log softmax(scoresₙ)[yₙ].

    With ``label_smoothing`` ε the target of each row is q = (1 − ε)·onehot(y) + ε/K instead
    of the one-hot label: L = −(1/N) Σₙ Σₖ qₙₖ log softmax(scoresₙ)ₖ.
    """
    check_labels(scores, y)
    label_smoothing = check_label_smoothing(label_smoothing)
    shifted = scores - jnp.max(scores, axis=1, keepdims=True)
    log_probs = shifted - jnp.log(jnp.sum(jnp.exp(shifted), axis=1, keepdims=True))
    targets = _targets(y, scores.shape[1], scores.dtype, label_smoothing)
    loss = -jnp.sum(log_probs * targets) / scores.shape[0]
    return loss, SoftmaxCache(jnp.exp(log_probs), y, label_smoothing)


def softmax_loss_backward(dloss: jax.Array, cache: SoftmaxCache):
    """dscores = (softmax(scores) − q) / N · dL, q the (smoothed) one-hot targets, since
    Σₖ qₖ = 1; labels get no gradient."""
    probs, y = cache.probs, cache.y
    targets = _targets(y, probs.shape[1], probs.dtype, cache.label_smoothing)
    dscores = (probs - targets) * (dloss / probs.shape[0])
    return dscores, None


def svm_loss_forward(scores: jax.Array, y: jax.Array) -> tuple[jax.Array, SvmCache]:
    """L = (1/N) Σₙ Σ_{j≠yₙ} max(0, sₙⱼ − sₙ,yₙ + 1)."""
    check_labels(scores, y)
    onehot = _one_hot(y, scores.shape[1], scores.dtype)
    correct = jnp.sum(scores * onehot, axis=1, keepdims=True)
    margins = jnp.where(onehot > 0, 0, jnp.maximum(0, scores - correct + 1))
    loss = jnp.sum(margins) / scores.shape[0]
    return loss, SvmCache(margins > 0, y)


def svm_loss_backward(dloss: jax.Array, cache: SvmCache):
    """dsⱼ = [marginⱼ > 0]/N for j ≠ y; ds_y = −(number of positive margins)/N; times dL."""
    dtype = dloss.dtype
    positive = cache.positive.astype(dtype)
    onehot = _one_hot(cache.y, positive.shape[1], dtype)
    dscores = positive - onehot * jnp.sum(positive, axis=1, keepdims=True)
    return dscores * (dloss / positive.shape[0]), None


_softmax_loss = with_vjp(softmax_loss_forward, softmax_loss_backward)
_svm_loss = with_vjp(svm_loss_forward, svm_loss_backward)


def softmax_loss(scores: jax.Array, y: jax.Array, *, label_smoothing: float = 0.0) -> jax.Array:
    """Mean softmax cross-entropy of ``scores (N, K)`` against integer labels ``y (N,)``;
    ``label_smoothing`` ε in [0, 1) mixes ε/K of every class into each one-hot target."""
    if label_smoothing == 0.0:  # the cs231n loss, one compiled VJP for every caller
        return _softmax_loss(scores, y)
    return _softmax_loss(scores, y, label_smoothing=check_label_smoothing(label_smoothing))


def svm_loss(scores: jax.Array, y: jax.Array) -> jax.Array:
    """Mean multiclass hinge loss (margin 1) of ``scores (N, K)`` against labels ``y (N,)``."""
    return _svm_loss(scores, y)
