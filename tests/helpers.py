"""Shared assertions for the layer tests."""

from __future__ import annotations

import socket

import jax
import jax.numpy as jnp
import numpy as np

from jcnn.gradcheck import check_vjp


def normal(seed: int, *shape: int, dtype=jnp.float64) -> jax.Array:
    """Standard normal test data, drawn on the host (NumPy): a JAX draw would compile a
    random kernel for every new shape, which is most of a small test's time. The stream is
    ``(seed, 1)``, never ``seed`` alone: :func:`jcnn.gradcheck.check_vjp` draws its cotangent
    from ``default_rng(seed)``, and a cotangent equal to the input (batchnorm's, say) would
    make the gradient exactly zero and the check meaningless."""
    return jnp.asarray(np.random.default_rng((seed, 1)).standard_normal(shape), dtype)


def assert_vjp_proven(f, twin, args, *, names, twin_tol=1e-10, numeric_tol=1e-7, argnums=None):
    """The VJP of ``f`` equals the twin's and finite differences, and survives jit and vmap."""
    report = check_vjp(f, twin, args, names=names, argnums=argnums)
    for name, errs in report.items():
        assert errs["twin"] < twin_tol, (name, errs)
        assert errs["numeric"] < numeric_tol, (name, errs)
    assert_same_under_jit_and_vmap(f, args, argnums=argnums)
    return report


def _diff_argnums(args, argnums):
    if argnums is not None:
        return tuple(argnums)
    return tuple(
        i
        for i, a in enumerate(args)
        if hasattr(a, "dtype") and jnp.issubdtype(jnp.asarray(a).dtype, jnp.floating)
    )


def assert_same_under_jit_and_vmap(f, args, *, argnums=None):
    """``jax.vmap`` over two stacked inputs gives each one's gradient under ``jax.jit`` (one
    compile each; the eager gradient of every layer is proven in tests/layers/test_eager.py:
    eagerly, each operation of a test's shapes would compile on its own)."""
    argnums = _diff_argnums(args, argnums)
    out = jax.eval_shape(f, *args)
    dout = normal(99, *out.shape, dtype=out.dtype)

    def scalar(*a):
        return jnp.sum(f(*a) * dout)

    grad = jax.grad(scalar, argnums=argnums)
    jitted = jax.jit(grad)
    first = jitted(*args)

    # vmap over a batch of two differently scaled copies of the differentiated inputs.
    in_axes = tuple(0 if i in argnums else None for i in range(len(args)))
    stacked = tuple(
        jnp.stack([a, a * 0.5 + 0.25]) if i in argnums else a for i, a in enumerate(args)
    )
    batched = jax.jit(jax.vmap(grad, in_axes=in_axes))(*stacked)
    second = jitted(*(s[1] if i in argnums else s for i, s in enumerate(stacked)))
    for k in range(len(argnums)):
        np.testing.assert_allclose(batched[k][0], first[k], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(batched[k][1], second[k], rtol=1e-10, atol=1e-12)


def free_port() -> int:
    """A TCP port on 127.0.0.1 free at the time of the call (for a local coordinator)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def reap(procs) -> None:
    """Kill whichever of the ``subprocess.Popen`` objects ``procs`` still run, and wait for
    every one (a test's ``finally``)."""
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
