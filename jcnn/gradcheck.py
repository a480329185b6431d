"""Gradient checking: relative error, centred finite differences, and a VJP checker.

Run checks in float64 (``jax.config.update('jax_enable_x64', True)``): float32 hides real
bugs and invents fake ones.

>>> import jcnn.layers as L, jcnn.reference as R
>>> errs = check_vjp(L.affine, R.affine, (x, w, b))          # doctest: +SKIP
>>> errs['x']                                                  # doctest: +SKIP
{'twin': 3e-16, 'numeric': 2e-10}
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def rel_error(a: Any, b: Any) -> float:
    """``max |a − b| / max(1e-8, |a| + |b|)``, elementwise, as in cs231n.

    Args:
        a: array-like of any shape (converted to float64 numpy).
        b: array-like of the shape of ``a``.

    Returns:
        The largest elementwise relative error, a Python float (0.0 for empty arrays).

    Raises:
        ValueError: if ``a`` and ``b`` differ in shape.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"rel_error: shapes differ, {a.shape} vs {b.shape}")
    if a.size == 0:
        return 0.0
    return float(np.max(np.abs(a - b) / np.maximum(1e-8, np.abs(a) + np.abs(b))))


def numerical_gradient(
    f: Callable[[jax.Array], jax.Array],
    x: jax.Array,
    dout: jax.Array | None = None,
    *,
    h: float = 1e-5,
) -> jax.Array:
    """Centred differences of ``Σ f(x)·dout`` with respect to every element of ``x``.

    ``f`` maps an array to an array (a scalar when ``dout`` is None); it is jitted once and
    called twice per element of ``x``, each time on a fresh host copy (so no call can see
    another's perturbation through shared memory).

    Args:
        f: function of one array ``x``, returning an array of any shape.
        x: the point ``x`` of any shape.
        dout: cotangent, of the shape of ``f(x)``; None: all ones.
        h: the step of the centred difference.

    Returns:
        The numerical gradient, of the shape and dtype of ``x`` (reduced in float64 on the host).

    Raises:
        ValueError: if ``dout`` does not have the shape of ``f(x)``.
    """
    x = jnp.asarray(x)
    f_jit = jax.jit(f)
    out = f_jit(x)
    dout = jnp.ones_like(out) if dout is None else jnp.asarray(dout)
    if dout.shape != out.shape:
        raise ValueError(f"dout must have the shape of f(x), {out.shape}, got {dout.shape}")
    weights = np.asarray(dout, dtype=np.float64).reshape(-1)
    flat = np.asarray(x).reshape(-1)
    grad = np.empty(flat.size, dtype=np.float64)
    for i in range(flat.size):
        plus, minus = flat.copy(), flat.copy()
        plus[i] += h
        minus[i] -= h
        f_plus = np.asarray(f_jit(plus.reshape(x.shape)), np.float64).reshape(-1)
        f_minus = np.asarray(f_jit(minus.reshape(x.shape)), np.float64).reshape(-1)
        # Reduce on the host in float64: outputs that h did not touch cancel exactly.
        grad[i] = (f_plus - f_minus) @ weights / (2 * h)
    return jnp.asarray(grad.reshape(x.shape), dtype=x.dtype)


def of_args(fn: Callable, args: Sequence, argnums: Sequence[int]) -> Callable:
    """``fn`` as a function of ``args[i] for i in argnums`` only, the other arguments fixed
    to their values in ``args`` (what ``jax.vjp`` needs to differentiate some of them).

    Args:
        fn: the function, called as ``fn(*args)``.
        args: a full list of positional arguments for ``fn``.
        argnums: the positions of the arguments that become the new function's arguments.

    Returns:
        ``g(*diff)`` calling ``fn`` with ``args[argnums[j]]`` replaced by ``diff[j]``; it raises
        ValueError (from ``zip(..., strict=True)``) if given other than ``len(argnums)``
        arguments.
    """
    fixed = list(args)

    def g(*diff):
        full = list(fixed)
        for i, v in zip(argnums, diff, strict=True):
            full[i] = v
        return fn(*full)

    return g


def _jitted_vjp(fn: Callable, args: Sequence, argnums: Sequence[int]) -> Callable:
    """``(dout, *diff) -> the VJP of fn at diff`` (:func:`of_args`), compiled as one program
    (eagerly, every operation of the forward and backward passes would compile on its own)."""
    g = of_args(fn, args, argnums)
    return jax.jit(lambda dout, *diff: jax.vjp(g, *diff)[1](dout))


def check_vjp(
    f: Callable[..., jax.Array],
    twin: Callable[..., jax.Array] | None,
    args: Sequence[Any],
    *,
    argnums: Sequence[int] | None = None,
    names: Sequence[str] | None = None,
    h: float = 1e-5,
    seed: int = 0,
    numeric: bool = True,
) -> dict[str, dict[str, float]]:
    """Check the VJP of ``f`` at ``args`` against ``twin``'s VJP and against finite differences.

    ``f(*args)`` must return one array. A random cotangent is drawn (from ``seed``); for each
    differentiated argument (``argnums``, default all floating-point arrays) the result holds
    ``{'twin': rel_error vs jax.vjp(twin), 'numeric': rel_error vs centred differences}``.

    Args:
        f: the function under test (a layer with a hand-written VJP), returning one array.
        twin: the same function differentiated by JAX (e.g. from :mod:`jcnn.reference`), or
            None to skip that comparison.
        args: the positional arguments to check at (arrays of any shape).
        argnums: positions of the arguments to differentiate; None: every floating-point array.
        names: one name per argument (all of ``args``, not just ``argnums``), used as the keys
            of the result; None: ``'arg0'``, ``'arg1'``, ...
        h: the step of the centred differences.
        seed: seed of NumPy's generator for the cotangent (of the shape of ``f(*args)``).
        numeric: compare with centred differences too (one pair of calls per element).

    Returns:
        ``{name: {'twin': float, 'numeric': float}}`` for each differentiated argument, the
        relative errors of :func:`rel_error`; a key is absent when ``twin`` is None or
        ``numeric`` is false.

    Raises:
        IndexError: if ``names`` has fewer entries than ``args`` reaches (an argnum past its end).
    """
    args = tuple(args)
    if argnums is None:
        argnums = [
            i
            for i, a in enumerate(args)
            if hasattr(a, "dtype") and jnp.issubdtype(jnp.asarray(a).dtype, jnp.floating)
        ]
    names = list(names) if names is not None else [f"arg{i}" for i in range(len(args))]

    diff_args = [args[i] for i in argnums]
    out = jax.eval_shape(of_args(f, args, argnums), *diff_args)
    # numpy's generator, so the cotangent never coincides with inputs drawn from jax keys.
    dout_np = np.random.default_rng(seed).standard_normal(out.shape)
    dout = jnp.asarray(dout_np, dtype=out.dtype)
    grads = _jitted_vjp(f, args, argnums)(dout, *diff_args)
    twin_grads = None
    if twin is not None:
        twin_grads = _jitted_vjp(twin, args, argnums)(dout, *diff_args)

    report: dict[str, dict[str, float]] = {}
    for k, i in enumerate(argnums):
        entry: dict[str, float] = {}
        if twin_grads is not None:
            entry["twin"] = rel_error(grads[k], twin_grads[k])
        if numeric:

            def along(v, i=i):
                full = list(args)
                full[i] = v
                return f(*full)

            entry["numeric"] = rel_error(grads[k], numerical_gradient(along, args[i], dout, h=h))
        report[names[i]] = entry
    return report
