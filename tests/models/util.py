"""Shared helpers for the model and solver tests: synthetic images and gradient checks."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from jcnn.gradcheck import rel_error

# A leaf whose gradient is this small everywhere is structurally zero (e.g. the bias of a
# layer followed by batchnorm, which the normalisation cancels): relative errors of
# round-off are meaningless there, so both sides must simply be ~0.
ZERO_GRAD = 1e-12


def synthetic_images(
    n: int,
    *,
    num_classes: int = 10,
    shape: tuple[int, int, int] = (3, 16, 16),
    noise: float = 0.8,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Images with class-dependent structure: each class is a fixed smooth random colour
    template (coarse noise, upsampled and blurred); an example is its class template, shifted
    by up to 2 pixels, scaled by a random contrast, plus pixel noise. Not separable by any one
    pixel, not pure noise either. Templates depend only on ``shape``/``num_classes``, so
    calls with different ``seed`` give train/val splits of the same task."""
    c, h, w = shape
    trng = np.random.default_rng(1234)
    coarse = trng.normal(size=(num_classes, c, -(-h // 4), -(-w // 4)))
    t = np.kron(coarse, np.ones((1, 1, 4, 4)))[:, :, :h, :w]
    k = np.ones(3) / 3.0  # separable 3x3 box blur
    t = np.apply_along_axis(lambda r: np.convolve(r, k, mode="same"), 2, t)
    t = np.apply_along_axis(lambda r: np.convolve(r, k, mode="same"), 3, t)
    t /= t.std()

    rng = np.random.default_rng(seed)
    y = rng.integers(0, num_classes, n)
    shifts = rng.integers(-2, 3, size=(n, 2))
    X = np.stack(
        [np.roll(t[label], tuple(s), axis=(1, 2)) for label, s in zip(y, shifts, strict=True)]
    )
    X *= rng.uniform(0.7, 1.3, size=(n, 1, 1, 1))
    X += noise * rng.normal(size=X.shape)
    return X.astype(np.float32), y.astype(np.int64)


def synthetic_data(n_train: int, n_val: int, **kw) -> dict[str, np.ndarray]:
    X_train, y_train = synthetic_images(n_train, seed=1, **kw)
    X_val, y_val = synthetic_images(n_val, seed=2, **kw)
    return {"X_train": X_train, "y_train": y_train, "X_val": X_val, "y_val": y_val}


def leaves(tree) -> dict[str, jax.Array]:
    return {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def make_loss_grad(model, state, X, y, key):
    """Jitted ``params -> ((loss, new_state), grads)`` of ``model.loss`` (jit: one compile,
    not one per primitive)."""
    return jax.jit(jax.value_and_grad(lambda p: model.loss(p, state, X, y, key=key), has_aux=True))


def loss_grad(model, params, state, X, y, key):
    return make_loss_grad(model, state, X, y, key)(params)


def directional_differences(
    loss, params, *, per_leaf: int = 3, step: float = 1e-5, seed: int = 0
) -> dict[str, list[tuple[np.ndarray, float]]]:
    """Centred differences of scalar ``loss`` along random unit directions, ``per_leaf`` of
    them in each leaf of ``params`` (the others held still):
    ``{leaf: [(v, (loss(p + h·v) − loss(p − h·v)) / 2h), ...]}``, the derivative along each
    ``v``, which the gradient must give as ``⟨g, v⟩``.

    A few directions per leaf rather than every coordinate (:func:`jcnn.gradcheck.
    numerical_gradient`'s 2·size calls, thousands for a small model): every coordinate of
    the hand-written gradient is proven equal to the autodiff twin's already; the
    differences prove the pair right, and a wrong gradient misses a random direction with
    probability 0.
    """
    rng = np.random.default_rng(seed)
    named = leaves(params)
    out: dict[str, list[tuple[np.ndarray, float]]] = {}
    for name, leaf in named.items():
        out[name] = []
        for _ in range(per_leaf):
            v = rng.normal(size=np.shape(leaf))
            v /= np.linalg.norm(v)
            values = []
            for sign in (1.0, -1.0):  # fresh numpy buffers: jit may alias its input
                moved = {**named, name: np.asarray(leaf, np.float64) + sign * step * v}
                tree = jax.tree_util.tree_unflatten(
                    jax.tree_util.tree_structure(params), [moved[k] for k in named]
                )
                values.append(float(loss(tree)))
            out[name].append((v, (values[0] - values[1]) / (2 * step)))
    return out


def params_dtype(params):
    return jax.tree_util.tree_leaves(params)[0].dtype


def assert_grads_proven(model, params, state, X, y, key, *, numeric=True, step=1e-5):
    """The whole-model gradient through the hand-written layers, leaf by leaf:

    - equals ``jax.grad`` of the same model on :mod:`jcnn.reference` (rel_error < 1e-8,
      elementwise, as :func:`jcnn.gradcheck.rel_error`); loss and new state agree too;
    - gives the centred finite differences of the loss (step ``step``) along three random
      unit directions ``v`` in each leaf (:func:`directional_differences`): the error of a
      leaf is ``max_v |⟨g, v⟩ − d_v| / ‖g‖`` (< 1e-5), relative to the leaf's scale
      (``|⟨g, v⟩| ≤ ‖g‖``).

    Returns ``{leaf: {'twin': err, 'numeric': err}}`` for the leaves that are not
    structurally zero.
    """
    assert model.layers == "jcnn"
    twin = dataclasses.replace(model, layers="reference")
    value_and_grad = make_loss_grad(model, state, X, y, key)
    (loss, st), g = value_and_grad(params)
    (loss_r, st_r), g_r = loss_grad(twin, params, state, X, y, key)
    assert rel_error(loss, loss_r) < 1e-12
    assert leaves(st).keys() == leaves(st_r).keys() == leaves(state).keys()
    for name, v in leaves(st).items():
        assert rel_error(v, leaves(st_r)[name]) < 1e-12, name
    if numeric:
        # The loss alone (one small compile): each call costs a forward pass, not a forward
        # and a backward.
        loss = jax.jit(lambda p: model.loss(p, state, X, y, key=key)[0])
        num = directional_differences(loss, params, step=step)
    g, g_r = leaves(g), leaves(g_r)
    assert g.keys() == g_r.keys() == leaves(params).keys()
    errors = {}
    for name in g:
        a, b = np.asarray(g[name]), np.asarray(g_r[name])
        assert a.dtype == params_dtype(params), name
        if np.abs(a).max() < ZERO_GRAD:
            assert np.abs(b).max() < ZERO_GRAD, name
            if numeric:
                assert max(abs(d) for _, d in num[name]) < 1e-8, name
            continue
        errors[name] = {"twin": rel_error(a, b)}
        assert errors[name]["twin"] < 1e-8, (name, errors[name])
        if numeric:
            along = [abs(float(np.sum(a * v)) - d) for v, d in num[name]]
            errors[name]["numeric"] = max(along) / float(np.linalg.norm(a))
            assert errors[name]["numeric"] < 1e-5, (name, errors[name])
    return errors


def float64_batch(shape, n, num_classes=10, seed=0):
    """Standard-normal float64 images ``(n, *shape)`` and random labels (numpy: no compile)."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, *shape)), rng.integers(0, num_classes, n)
