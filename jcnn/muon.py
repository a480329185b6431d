"""Muon: momentum whose update is orthogonalised, for convolution filters and other matrices.

Muon (Jordan et al., 2024, "Muon: an optimizer for hidden layers in neural networks") takes
Nesterov momentum ``u`` of the gradient of a weight matrix ``W`` (a conv filter bank
``(F, C, kh, kw)`` read as ``F × C·kh·kw``) and steps along the nearest semi-orthogonal
matrix to ``u`` instead of ``u`` itself: with ``u = U S Vᵀ``, the step is ``U Vᵀ``, every
direction ``u`` moves in at the same rate. :func:`orthogonalize` approximates ``U Vᵀ`` with
a few Newton–Schulz iterations (matrix products only); :func:`muon` is the optax
transformation. airbench's Muon also renormalises each weight to Frobenius norm ``√F``
before the step, so the step size ``lr`` is relative to the weight's scale; weight decay
is not needed on such weights.

Example::

    tx = muon(learning_rate=0.24, momentum=0.6)
    state = tx.init(params)
    updates, state = tx.update(grads, state, params)   # params are required
    params = optax.apply_updates(params, updates)
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

__all__ = ["MuonState", "muon", "orthogonalize"]

# The quintic iteration X ← aX + (b·XXᵀ + c·(XXᵀ)²)X with coefficients chosen (by Muon's
# authors) for the steepest slope at 0: few iterations take small singular values far, at
# the price of not converging to exactly 1 (they end up roughly in [0.7, 1.2]).
_NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def orthogonalize(g: jax.Array, *, steps: int = 3, eps: float = 1e-7) -> jax.Array:
    """An approximation of ``U Vᵀ`` for ``g = U S Vᵀ``, a matrix ``(m, n)``, by ``steps``
    quintic Newton–Schulz iterations in ``g``'s dtype.

    ``X₀ = g / (‖g‖_F + eps)`` (every singular value ≤ 1), then
    ``Xₖ₊₁ = a·Xₖ + (b·A + c·A²)·Xₖ`` with ``A = Xₖ Xₖᵀ``, on the wide orientation
    (``m ≤ n``; a tall ``g`` is transposed and back) so ``A`` is the smaller Gram matrix.
    Each iteration maps every singular value ``σ`` through ``aσ + bσ³ + cσ⁵`` and keeps
    the singular vectors.

    Args:
      g: a 2-D array.
      steps: iterations, ≥ 1 (airbench uses 3, Muon for language models 5).
      eps: keeps an all-zero ``g`` at zero.

    Returns:
      An array like ``g``.

    Raises:
      ValueError: ``g`` is not 2-D, or ``steps < 1``.
    """
    if g.ndim != 2:
        raise ValueError(f"g must be a matrix (2-D), got shape {g.shape}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps!r}")
    a, b, c = _NS_COEFFICIENTS
    tall = g.shape[0] > g.shape[1]
    x = g.T if tall else g
    x = x / (jnp.linalg.norm(x) + eps)
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


class MuonState(NamedTuple):
    """:func:`muon`'s state: the updates done so far and the momentum buffers (like the params)."""

    iteration: jax.Array
    momentum: Any


def muon(
    learning_rate: float | optax.Schedule,
    momentum: float = 0.6,
    *,
    steps: int = 3,
    normalize_weights: bool = True,
) -> optax.GradientTransformation:
    """Muon with Nesterov momentum for weights whose first axis is the output axis.

    For each leaf ``W`` (``F`` outputs; read as the matrix ``F × rest``) with gradient ``g``
    and update ``t`` (0-based)::

        b ← μ·b + g                       (momentum buffer, starts at 0)
        u ← g + μ·b                       (Nesterov)
        W ← W · √F / ‖W‖_F                (normalize_weights; an all-zero W stays)
        W ← W − lr(t) · orthogonalize(u)

    The returned update is the new ``W`` minus the old, so it needs ``params``. The
    orthogonalised step is independent of the loss's scale (a sum or a mean over the batch
    gives the same update). Leaves with fewer than 2 axes are refused: give biases and
    batchnorm shifts another transformation (``optax.multi_transform``).

    Args:
      learning_rate: ``lr``, a float or an optax schedule of the update count.
      momentum: ``μ`` in [0, 1).
      steps: Newton–Schulz iterations (:func:`orthogonalize`).
      normalize_weights: renormalise each weight to Frobenius norm ``√F`` before the step.

    Returns:
      The optax transformation; its state is :class:`MuonState`.

    Raises:
      ValueError: ``momentum`` outside [0, 1) or ``steps < 1`` (here); a leaf with fewer
        than 2 axes, or ``params`` missing, when it is initialised or updated.
    """
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps!r}")
    schedule = learning_rate if callable(learning_rate) else (lambda _: learning_rate)

    def check(tree):
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
            if jnp.ndim(leaf) < 2:
                name = jax.tree_util.keystr(path) or "the parameter"
                raise ValueError(
                    f"muon takes weights with >= 2 axes (outputs first); {name} has shape "
                    f"{jnp.shape(leaf)}: give it another transformation"
                )

    def init(params):
        check(params)
        return MuonState(jnp.zeros((), jnp.int32), jax.tree_util.tree_map(jnp.zeros_like, params))

    def update(grads, state, params=None):
        if params is None:
            raise ValueError("muon needs params: call update(grads, state, params)")
        check(params)
        lr = schedule(state.iteration)

        buffers = jax.tree_util.tree_map(lambda g, b: momentum * b + g, grads, state.momentum)

        def step(g, buf, w):
            u = g + momentum * buf
            direction = orthogonalize(u.reshape(u.shape[0], -1), steps=steps).reshape(u.shape)
            new_w = w
            if normalize_weights:
                norm = jnp.linalg.norm(w)
                target = jnp.sqrt(jnp.asarray(w.shape[0], w.dtype))
                new_w = jnp.where(norm > 0, w * (target / jnp.where(norm > 0, norm, 1)), w)
            return (new_w - lr * direction - w).astype(w.dtype)

        updates = jax.tree_util.tree_map(step, grads, buffers, params)
        return updates, MuonState(state.iteration + 1, buffers)

    return optax.GradientTransformation(init, update)
