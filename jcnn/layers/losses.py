"""Classification losses: softmax cross-entropy and multiclass SVM (hinge), mean over the batch.

Labels are checked before any work: shapes and dtypes always (they are static), the values
whenever ``y`` is concrete. A traced ``y`` (under ``jit``) cannot be checked; there a label
outside ``[0, K)`` makes the loss NaN and its example's row of the gradient NaN, in these
layers and in their twins in :mod:`jcnn.reference` alike, so that a bad label stops training
(:mod:`jcnn.nonfinite`) rather than adding a wrong but finite term to the loss.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jcnn.layers._binding import cache_dataclass, with_vjp
from jcnn.layers._checks import check_cache, check_cotangent, check_labels, static_number


@cache_dataclass(static=("label_smoothing",))
class SoftmaxCache:
    """What :func:`softmax_loss_backward` needs from the forward pass.

    Attributes:
        probs: the softmax probabilities ``(N, K)``.
        y: the integer labels ``(N,)``.
        label_smoothing: the smoothing ε in [0, 1) (static).
    """

    probs: jax.Array
    y: jax.Array
    label_smoothing: float = 0.0


@cache_dataclass()
class SvmCache:
    """What :func:`svm_loss_backward` needs from the forward pass.

    Attributes:
        positive: boolean ``(N, K)``, True where a margin (j ≠ yₙ) is > 0.
        y: the integer labels ``(N,)``.
    """

    positive: jax.Array
    y: jax.Array


def valid_labels(y: jax.Array, num_classes: int) -> jax.Array:
    """``(N,)`` bool: which labels are class indices, ``0 <= y < num_classes`` (shared with
    the reference twins, which poison the same rows).

    Args:
        y: integer labels ``(N,)``.
        num_classes: K, the number of classes.

    Returns:
        Boolean ``(N,)``, True where ``0 <= y < num_classes``.
    """
    return (y >= 0) & (y < num_classes)


def _nan_unless_valid(loss: jax.Array, y: jax.Array, num_classes: int) -> jax.Array:
    return jnp.where(jnp.all(valid_labels(y, num_classes)), loss, jnp.nan)


def _nan_rows_of_invalid(dscores: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.where(valid_labels(y, dscores.shape[1])[:, None], dscores, jnp.nan)


def _one_hot(y: jax.Array, num_classes: int, dtype) -> jax.Array:
    return (y[:, None] == jnp.arange(num_classes)[None, :]).astype(dtype)


def check_label_smoothing(label_smoothing: float) -> float:
    """``label_smoothing`` as a float in [0, 1), or ValueError naming it.

    Args:
        label_smoothing: the smoothing ε, a static Python number.

    Returns:
        ``float(label_smoothing)``.

    Raises:
        ValueError: naming ``label_smoothing`` if it is not a Python number in [0, 1).
    """
    return static_number("label_smoothing", label_smoothing, "in [0, 1)", lambda v: 0 <= v < 1)


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
    of the one-hot label: L = −(1/N) Σₙ Σₖ qₙₖ log softmax(scoresₙ)ₖ. NaN if a (traced) label
    is outside ``[0, K)``.

    Args:
        scores: class scores ``(N, K)``.
        y: integer labels ``(N,)``, each in ``[0, K)``.
        label_smoothing: ε in [0, 1), the share of the target spread evenly over the K classes.

    Returns:
        ``(loss, cache)``: the scalar mean loss (shape ``()``) and the :class:`SoftmaxCache`
            for :func:`softmax_loss_backward`.

    Raises:
      ValueError: as :func:`softmax_loss`.
    """
    check_labels(scores, y)
    label_smoothing = check_label_smoothing(label_smoothing)
    shifted = scores - jnp.max(scores, axis=1, keepdims=True)
    log_probs = shifted - jnp.log(jnp.sum(jnp.exp(shifted), axis=1, keepdims=True))
    targets = _targets(y, scores.shape[1], scores.dtype, label_smoothing)
    loss = _nan_unless_valid(-jnp.sum(log_probs * targets) / scores.shape[0], y, scores.shape[1])
    return loss, SoftmaxCache(jnp.exp(log_probs), y, label_smoothing)


def _loss_cotangent(dloss, dtype) -> jax.Array:
    """``dloss`` as a scalar array: a Python number (``1.0``, as cs231n passes) in ``dtype``, or
    a floating array of shape ``()``; ValueError naming it otherwise."""
    if isinstance(dloss, (int, float)) and not isinstance(dloss, bool):
        return jnp.asarray(dloss, dtype)
    check_cotangent("dloss", dloss, (), why="the loss is a scalar")
    return dloss


def softmax_loss_backward(dloss: jax.Array, cache: SoftmaxCache):
    """dscores = (softmax(scores) − q) / N · dL, q the (smoothed) one-hot targets, since
    Σₖ qₖ = 1; labels get no gradient. Rows whose label is outside ``[0, K)`` are NaN.

    Args:
        dloss: upstream gradient of the scalar loss: shape ``()``, or a Python number.
        cache: the :class:`SoftmaxCache` from :func:`softmax_loss_forward`.

    Returns:
        dscores (jax.Array): ``(softmax(scores) − q)·dloss/N``, shape ``(N, K)``.
        dy (None): None: the labels get no gradient.

    Raises:
        TypeError: naming ``cache`` if it is not the forward pass's cache.
        ValueError: naming ``dloss`` if it is not a scalar.
    """
    check_cache(cache, SoftmaxCache)
    probs, y = cache.probs, cache.y
    dloss = _loss_cotangent(dloss, probs.dtype)
    targets = _targets(y, probs.shape[1], probs.dtype, cache.label_smoothing)
    dscores = (probs - targets) * (dloss / probs.shape[0])
    return _nan_rows_of_invalid(dscores, y), None


def svm_loss_forward(scores: jax.Array, y: jax.Array) -> tuple[jax.Array, SvmCache]:
    """L = (1/N) Σₙ Σ_{j≠yₙ} max(0, sₙⱼ − sₙ,yₙ + 1); NaN if a (traced) label is outside
    ``[0, K)``.

    Args:
        scores: class scores ``(N, K)``.
        y: integer labels ``(N,)``, each in ``[0, K)``.

    Returns:
        ``(loss, cache)``: the scalar mean hinge loss (shape ``()``) and the :class:`SvmCache`
            for :func:`svm_loss_backward`.

    Raises:
      ValueError: as :func:`svm_loss`.
    """
    check_labels(scores, y)
    onehot = _one_hot(y, scores.shape[1], scores.dtype)
    correct = jnp.sum(scores * onehot, axis=1, keepdims=True)
    margins = jnp.where(onehot > 0, 0, jnp.maximum(0, scores - correct + 1))
    loss = _nan_unless_valid(jnp.sum(margins) / scores.shape[0], y, scores.shape[1])
    return loss, SvmCache(margins > 0, y)


def svm_loss_backward(dloss: jax.Array, cache: SvmCache):
    """dsⱼ = [marginⱼ > 0]/N for j ≠ y; ds_y = −(number of positive margins)/N; times dL.
    Rows whose label is outside ``[0, K)`` are NaN.

    Args:
        dloss: upstream gradient of the scalar loss: shape ``()``, or a Python number.
        cache: the :class:`SvmCache` from :func:`svm_loss_forward`.

    Returns:
        dscores (jax.Array): shape ``(N, K)``, as above.
        dy (None): None: the labels get no gradient.

    Raises:
        TypeError: naming ``cache`` if it is not the forward pass's cache.
        ValueError: naming ``dloss`` if it is not a scalar.
    """
    check_cache(cache, SvmCache)
    dloss = _loss_cotangent(dloss, jnp.result_type(float))
    dtype = dloss.dtype
    positive = cache.positive.astype(dtype)
    onehot = _one_hot(cache.y, positive.shape[1], dtype)
    dscores = positive - onehot * jnp.sum(positive, axis=1, keepdims=True)
    return _nan_rows_of_invalid(dscores * (dloss / positive.shape[0]), cache.y), None


_softmax_loss = with_vjp(softmax_loss_forward, softmax_loss_backward)
_svm_loss = with_vjp(svm_loss_forward, svm_loss_backward)


def softmax_loss(scores: jax.Array, y: jax.Array, *, label_smoothing: float = 0.0) -> jax.Array:
    """Mean softmax cross-entropy of ``scores (N, K)`` against integer labels ``y (N,)``;
    ``label_smoothing`` ε in [0, 1) mixes ε/K of every class into each one-hot target.

    Under ``jit`` with a traced ``y`` the label values cannot be checked: a label outside
    ``[0, K)`` (negative, or ``>= K``) then makes the loss NaN and that example's row of the
    gradient NaN (the other rows are unaffected); no error is raised.

    Args:
        scores: class scores ``(N, K)``.
        y: integer labels ``(N,)``, each in ``[0, K)``.
        label_smoothing: ε in [0, 1), the share of each target spread evenly over the K
            classes (0: the plain cs231n loss).

    Returns:
        The scalar mean loss, shape ``()``; its VJP is :func:`softmax_loss_backward`.

    Raises:
      ValueError: naming ``scores`` if it is not ``(N, K)`` or is empty (N = 0 or K = 0);
        naming ``y`` if it is not ``(N,)``, not of an integer dtype, or (when concrete) holds
        a label outside ``[0, K)`` (the message gives the range and the first bad index);
        naming ``label_smoothing`` if it is not a float in [0, 1).
    """
    check_labels(scores, y)
    label_smoothing = check_label_smoothing(label_smoothing)
    if label_smoothing == 0.0:  # the cs231n loss, one compiled VJP for every caller
        return _softmax_loss(scores, y)
    return _softmax_loss(scores, y, label_smoothing=label_smoothing)


def svm_loss(scores: jax.Array, y: jax.Array) -> jax.Array:
    """Mean multiclass hinge loss (margin 1) of ``scores (N, K)`` against labels ``y (N,)``.

    Under ``jit`` with a traced ``y`` the label values cannot be checked: a label outside
    ``[0, K)`` (negative, or ``>= K``) then makes the loss NaN and that example's row of the
    gradient NaN (the other rows are unaffected); no error is raised.

    Args:
        scores: class scores ``(N, K)``.
        y: integer labels ``(N,)``, each in ``[0, K)``.

    Returns:
        The scalar mean loss, shape ``()``; its VJP is :func:`svm_loss_backward`.

    Raises:
      ValueError: naming ``scores`` if it is not ``(N, K)`` or is empty (N = 0 or K = 0);
        naming ``y`` if it is not ``(N,)``, not of an integer dtype, or (when concrete) holds
        a label outside ``[0, K)`` (the message gives the range and the first bad index).
    """
    check_labels(scores, y)
    return _svm_loss(scores, y)
