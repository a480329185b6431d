"""Classification losses: softmax cross-entropy and multiclass SVM (hinge), mean over the batch."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jcnn.layers._binding import cache_dataclass, with_vjp
from jcnn.layers._checks import check_labels


@cache_dataclass()
class SoftmaxCache:
    probs: jax.Array
    y: jax.Array


@cache_dataclass()
class SvmCache:
    positive: jax.Array
    y: jax.Array


def _one_hot(y: jax.Array, num_classes: int, dtype) -> jax.Array:
    return (y[:, None] == jnp.arange(num_classes)[None, :]).astype(dtype)


def softmax_loss_forward(scores: jax.Array, y: jax.Array) -> tuple[jax.Array, SoftmaxCache]:
    """scores ``(N, K)``, integer labels y ``(N,)`` -> L = −(1/N) Σₙ log softmax(scoresₙ)[yₙ]."""
    check_labels(scores, y)
    shifted = scores - jnp.max(scores, axis=1, keepdims=True)
    log_probs = shifted - jnp.log(jnp.sum(jnp.exp(shifted), axis=1, keepdims=True))
    onehot = _one_hot(y, scores.shape[1], scores.dtype)
    loss = -jnp.sum(log_probs * onehot) / scores.shape[0]
    return loss, SoftmaxCache(jnp.exp(log_probs), y)


def softmax_loss_backward(dloss: jax.Array, cache: SoftmaxCache):
    """dscores = (softmax(scores) − onehot(y)) / N · dL; labels get no gradient."""
    probs, y = cache.probs, cache.y
    onehot = _one_hot(y, probs.shape[1], probs.dtype)
    dscores = (probs - onehot) * (dloss / probs.shape[0])
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


def softmax_loss(scores: jax.Array, y: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy of ``scores (N, K)`` against integer labels ``y (N,)``."""
    return _softmax_loss(scores, y)


def svm_loss(scores: jax.Array, y: jax.Array) -> jax.Array:
    """Mean multiclass hinge loss (margin 1) of ``scores (N, K)`` against labels ``y (N,)``."""
    return _svm_loss(scores, y)
