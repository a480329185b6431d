"""Turn a cs231n-style ``forward``/``backward`` pair into one differentiable function.

The pair is exactly what :func:`jax.custom_vjp` wants: ``forward(*arrays, **static)``
returns ``(out, cache)`` and the cache is the residual that ``backward(dout, cache)``
consumes. Static hyper-parameters (stride, pad, train, ...) stay Python values: each
distinct setting gets its own ``custom_vjp`` object, built once and memoised.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from collections.abc import Callable
from typing import Any

import jax

_T = typing.TypeVar("_T")


@typing.dataclass_transform(frozen_default=True)
def cache_dataclass(*, static: tuple[str, ...] = ()) -> Callable[[type[_T]], type[_T]]:
    """Make ``cls`` a frozen dataclass registered as a pytree.

    Fields named in ``static`` are pytree metadata (Python values such as stride or pad),
    the others are leaves (arrays, or ``None``). A cache built this way can carry its
    hyper-parameters to the backward pass, as the cs231n caches do, and still be a legal
    ``custom_vjp`` residual.
    """

    def wrap(cls: type[_T]) -> type[_T]:
        cls = dataclasses.dataclass(frozen=True)(cls)
        names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
        unknown = set(static) - set(names)
        if unknown:
            raise TypeError(f"{cls.__name__}: static fields {sorted(unknown)} are not fields")
        data = [n for n in names if n not in static]
        return jax.tree_util.register_dataclass(cls, data_fields=data, meta_fields=list(static))

    return wrap


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class _Dtypes:
    dtypes: tuple


def _dtype_of(a):
    dtype = getattr(a, "dtype", None)
    return dtype if dtype is not None and jax.numpy.issubdtype(dtype, jax.numpy.floating) else None


def with_vjp(forward: Callable[..., tuple[Any, Any]], backward: Callable[[Any, Any], tuple]):
    """Bind ``forward``/``backward`` into ``f(*arrays, **static) -> out`` with that VJP.

    ``backward(dout, cache)`` must return one cotangent per positional array of
    ``forward`` (``None`` for integer inputs such as labels or PRNG keys).
    """

    @functools.cache
    def bound(static_items: tuple[tuple[str, Any], ...]):
        static = dict(static_items)

        @jax.custom_vjp
        def f(*arrays):
            return forward(*arrays, **static)[0]

        def f_fwd(*arrays):
            out, cache = forward(*arrays, **static)
            return out, (cache, _Dtypes(tuple(_dtype_of(a) for a in arrays)))

        def f_bwd(residual, dout):
            cache, dtypes = residual
            grads = tuple(backward(dout, cache))
            # Each cotangent in its primal's dtype (e.g. float32 running statistics beside
            # bfloat16 activations), as custom_vjp requires.
            return tuple(
                g if g is None or d is None else g.astype(d)
                for g, d in zip(grads, dtypes.dtypes, strict=True)
            )

        f.defvjp(f_fwd, f_bwd)
        return f

    @functools.wraps(forward)
    def apply(*arrays, **static):
        return bound(tuple(sorted(static.items())))(*arrays)

    return apply
