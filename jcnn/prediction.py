"""Prediction: a model's test-mode scores with test-time augmentation, the jitted eval step,
and :func:`predict`, which runs it over any number of images in fixed-size chunks (one
compile). :mod:`jcnn.train` re-exports these names, beside the train step they pair with.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, cast

import jax
import jax.numpy as jnp
import numpy as np

from jcnn import _validate as check
from jcnn import parallel, precision

if TYPE_CHECKING:
    from jcnn.train import TrainState

__all__ = [
    "EvalStep",
    "Predictor",
    "TestTimePredictions",
    "counted",
    "make_eval_step",
    "predict",
    "predict_where_unsure",
    "test_time_scores",
]


class EvalStep(Protocol):
    """What :func:`make_eval_step` returns."""

    def __call__(self, params: Any, model_state: Any, X: Any) -> jax.Array: ...

    def traces(self) -> int:
        """How often the step was traced (compiled).

        Returns:
          The number of traces so far (0 before the first call).
        """
        ...

    def trace(self, params: Any, model_state: Any, X: Any) -> Any:
        """``jax.jit``'s ``trace``: the step traced for these arguments (shapes suffice),
        to lower and compile ahead of time.

        Returns:
          A ``jax.stages.Traced``.
        """
        ...


def counted(fn: Callable, counter: list[int]) -> Callable:
    """``fn``, counting in ``counter[0]`` how often JAX traces it (the steps' ``traces()``)."""

    def traced(*args):
        counter[0] += 1  # runs only while jax traces the function
        return fn(*args)

    return traced


def test_time_scores(
    model: Any, params: Any, model_state: Any, X: Any, *, flip: bool = False, translate: int = 0
) -> jax.Array:
    """A model's test-mode scores of images ``X`` ``(N, C, H, W)``, with test-time
    augmentation: with ``flip`` the mean of the image's scores and its left-right mirror's;
    with ``translate`` = s > 0, half that plus a quarter each of the same for the image
    shifted by s pixels diagonally up-left and down-right (reflect padding), as airbench
    scores its test images.

    Returns:
        ``(N, num_classes)`` scores (logits): a weighted mean of the views', so a softmax of
        them is a probability.
    """

    def view_scores(X: Any) -> jax.Array:
        scores, _ = model.apply(params, model_state, X, train=False)
        if flip:
            mirrored, _ = model.apply(params, model_state, X[..., ::-1], train=False)
            scores = 0.5 * (scores + mirrored)
        return scores

    scores = view_scores(X)
    if translate:
        s = int(translate)
        h, w = X.shape[-2:]
        padded = jnp.pad(X, ((0, 0), (0, 0), (s, s), (s, s)), mode="reflect")
        scores = 0.5 * scores + 0.25 * (
            view_scores(padded[..., :h, :w])
            + view_scores(padded[..., 2 * s : 2 * s + h, 2 * s : 2 * s + w])
        )
    return scores


def make_eval_step(
    model: Any,
    *,
    compute_dtype: Any = None,
    mesh: jax.sharding.Mesh | None = None,
    test_time_flip: bool = False,
    test_time_translate: int = 0,
    scores: bool = False,
) -> EvalStep:
    """The jitted prediction step, ``eval_step(params, model_state, X) -> labels`` (int32,
    shape ``(N,)``), in test mode (batchnorm uses its running statistics, no dropout).

    Args:
      model: a :mod:`jcnn.models` model.
      compute_dtype: as :func:`make_train_step`'s.
      mesh: split ``X`` over the mesh's devices on axis 0 (its length must divide evenly);
        the labels come back replicated.
      test_time_flip: classify each image by its scores plus those of its left-right mirror
        image (inputs ``(N, C, H, W)``; twice the compute).
      test_time_translate: also the image shifted this many pixels (:func:`test_time_scores`).
      scores: return the float32 scores ``(N, num_classes)`` (:func:`test_time_scores`)
        instead of the labels.

    Returns:
      The jitted step (``eval_step.traces()`` as for the train step). :func:`predict` runs
      it over any number of images in fixed-size chunks.

    Raises:
      ValueError: ``test_time_flip`` is not a bool, or set for a model whose inputs are not
        images ``(C, H, W)``.
    """
    test_time_flip, shift = check.test_time_augmentation(test_time_flip, test_time_translate)
    if (test_time_flip or shift) and len(model.input_shape) != 3:
        raise ValueError(
            "test_time_flip mirrors images (C, H, W) and test_time_translate shifts them; this "
            f"model takes inputs shaped {model.input_shape}"
        )
    if shift and shift >= min(model.input_shape[1:]):
        raise ValueError(
            f"test_time_translate={shift} must be smaller than the images {model.input_shape}"
        )

    def eval_step(params: Any, model_state: Any, X: Any) -> jax.Array:
        params = precision.predict_params(params, compute_dtype)
        scores = test_time_scores(
            model, params, model_state, X, flip=test_time_flip, translate=shift
        )
        if return_scores:
            return scores.astype(jnp.float32)
        return jnp.argmax(scores, axis=1).astype(jnp.int32)

    return_scores = bool(scores)
    traces = [0]
    if mesh is None:
        step = jax.jit(counted(eval_step, traces))
    else:
        rep, batch = parallel.replicated_sharding(mesh), parallel.batch_sharding(mesh)
        step = jax.jit(
            counted(eval_step, traces), in_shardings=(rep, rep, batch), out_shardings=rep
        )
    step.traces = lambda: traces[0]  # type: ignore[attr-defined]
    return cast(EvalStep, step)


def _chunk_rows(batch_size: int, mesh: jax.sharding.Mesh | None) -> int:
    """Rows per chunk: ``batch_size``, with a ``mesh`` rounded up to a multiple of its size."""
    return batch_size if mesh is None else -(-batch_size // mesh.size) * mesh.size


def _check_program_fits(traced: Any, what: str) -> None:
    """A program holds several arrays at once, which each layer's own check cannot see:
    where its largest array is over a quarter of the memory available, compile it and
    refuse it (MemoryLimitError naming ``what``) if XLA says it needs more than that."""
    limit = check.memory_bytes()
    if limit is None or 4 * _largest_array_bytes(traced.jaxpr.jaxpr) <= limit:
        return
    stats = traced.lower().compile().memory_analysis()
    need = (
        stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes
        - stats.alias_size_in_bytes
    )  # fmt: skip
    check.check_bytes_fit(
        need,
        lambda: f"{what} needs {check.human_bytes(need)} at once (arrays in, out and between),",
    )


def _largest_array_bytes(jaxpr: Any) -> int:
    """The bytes of the largest array a jaxpr (or any jaxpr inside it) makes."""
    largest = 0
    for eqn in jaxpr.eqns:
        for var in eqn.outvars:
            with contextlib.suppress(AttributeError, TypeError):  # tokens, PRNG keys
                largest = max(largest, math.prod(var.aval.shape) * var.aval.dtype.itemsize)
        for param in eqn.params.values():
            for inner in param if isinstance(param, tuple | list) else (param,):
                inner = getattr(inner, "jaxpr", inner)  # a ClosedJaxpr's
                if hasattr(inner, "eqns"):
                    largest = max(largest, _largest_array_bytes(inner))
    return largest


def _predicting(batch_size: int) -> str:
    return f"predicting {batch_size} images at a time"


def predict(
    eval_step: EvalStep,
    state: TrainState | tuple[Any, Any],
    X: Any,
    *,
    batch_size: int = 100,
    mesh: jax.sharding.Mesh | None = None,
    dtype: Any = None,
) -> np.ndarray:
    """Labels for every image of ``X`` (host array ``(N, ...)``), ``eval_step`` run over
    chunks of exactly ``batch_size`` rows (the last one zero-padded, the padding cut off
    again), so any ``N`` reuses one compiled step.

    Args:
      eval_step: from :func:`make_eval_step`.
      state: a :class:`TrainState` or ``(params, model_state)``.
      X: the images.
      batch_size: rows per chunk; with a ``mesh`` rounded up to a multiple of its size.
      mesh: the eval step's mesh (each chunk is placed onto it).
      dtype: the dtype the chunks are cast to (default: the parameters').

    Returns:
      int32 labels, shape ``(N,)``, on the host.

    Raises:
      ValueError: ``batch_size`` is 0.
    """

    if isinstance(state, tuple):
        params, model_state = state
    else:  # a TrainState
        params, model_state = state.params, state.model_state
    if dtype is None:
        dtype = jax.tree_util.tree_leaves(params)[0].dtype
    batch_size = _chunk_rows(batch_size, mesh)
    X = np.asarray(X)
    n = X.shape[0]
    outs: list[jax.Array] = []
    for start in range(0, n, batch_size):
        chunk = np.asarray(X[start : start + batch_size], dtype=dtype)
        if chunk.shape[0] < batch_size:
            pad = np.zeros((batch_size - chunk.shape[0], *chunk.shape[1:]), chunk.dtype)
            chunk = np.concatenate([chunk, pad])
        placed = parallel.shard_batch(mesh, chunk)[0] if mesh is not None else chunk
        try:
            outs.append(eval_step(params, model_state, placed))
        except check.MemoryLimitError as e:  # met while the step compiled: say which step
            e.during = _predicting(batch_size)
            raise
    preds = np.concatenate(jax.device_get(outs)) if outs else np.zeros((0,), np.int32)
    return preds[:n]


class TestTimePredictions(NamedTuple):
    """What :func:`predict_where_unsure` returns, each ``(N,)`` on the host.

    Attributes:
        labels: the prediction: the augmented one where ``unsure``, else the plain one.
        plain: the plain (unaugmented) prediction of every image.
        unsure: where the plain prediction's softmax confidence was below the threshold.
    """

    labels: np.ndarray
    plain: np.ndarray
    unsure: np.ndarray


def predict_where_unsure(
    plain_scores_step: EvalStep,
    augmented_step: EvalStep,
    state: TrainState | tuple[Any, Any],
    X: Any,
    *,
    confidence: float | None,
    batch_size: int = 100,
    mesh: jax.sharding.Mesh | None = None,
    dtype: Any = None,
) -> TestTimePredictions:
    """Test-time augmentation only where the plain prediction is unsure.

    Every image is classified plainly first (``plain_scores_step``, a step made with
    ``scores=True`` and no augmentation); an image whose plain softmax confidence
    ``max_k softmax(s)_k`` is below ``confidence`` is classified again by
    ``augmented_step`` (e.g. flips and shifts), and that label is taken. With
    ``confidence=None`` every image is augmented (1.0 does nearly the same); with 0 none.
    The augmented views cost (views - 1) / views of their images' work only where unsure.

    Args:
        plain_scores_step: ``make_eval_step(model, scores=True)`` (same dtype and mesh).
        augmented_step: ``make_eval_step(model, test_time_flip=..., ...)`` (labels).
        state: a :class:`~jcnn.train.TrainState` or ``(params, model_state)``.
        X: the images.
        batch_size: rows per chunk (:func:`predict`).
        mesh: the steps' mesh, if any.
        dtype: the dtype the chunks are cast to (default: the parameters').
        confidence: the threshold in [0, 1], or None.

    Returns:
        :class:`TestTimePredictions`.

    Raises:
        ValueError: ``confidence`` is not None or a number in [0, 1].
    """
    if confidence is not None:
        confidence = check.finite_float("confidence", confidence, minimum=0.0)
        if confidence > 1.0:
            raise ValueError(f"confidence must be in [0, 1], got {confidence}")
    run = dict(batch_size=batch_size, mesh=mesh, dtype=dtype)
    X = np.asarray(X)
    scores = predict(plain_scores_step, state, X, **run)
    plain = np.argmax(scores, axis=1).astype(np.int32)
    if confidence is None:
        unsure = np.ones(len(plain), bool)
    else:
        # max_k softmax(s)_k = 1 / sum_k exp(s_k - max s)
        top = 1.0 / np.exp(scores - scores.max(axis=1, keepdims=True)).sum(axis=1)
        unsure = top < confidence
    labels = plain.copy()
    if unsure.any():
        labels[unsure] = predict(augmented_step, state, X[unsure], **run)
    return TestTimePredictions(labels, plain, unsure)


@dataclasses.dataclass(frozen=True)
class Predictor:
    """One model's jitted eval steps, made once for a run, and what they answer: labels
    (with the run's test-time augmentation or without), augmentation only where unsure,
    accuracy.

    Attributes:
        model: the :mod:`jcnn.models` model.
        augmented: the labels step with the run's test-time augmentation.
        plain: the labels step without it (``augmented`` itself when there is none).
        scores: the plain scores step (``scores=True``).
        mesh: the steps' mesh, if any.
        dtype: the dtype images are cast to (the parameters').
    """

    model: Any
    augmented: EvalStep
    plain: EvalStep
    scores: EvalStep
    mesh: jax.sharding.Mesh | None
    dtype: Any

    @classmethod
    def make(
        cls, model: Any, *, dtype: Any, compute_dtype: Any = None,
        mesh: jax.sharding.Mesh | None = None, flip: bool = False, translate: int = 0,
    ) -> Predictor:  # fmt: skip
        """The steps :func:`make_eval_step` makes for these settings (see its arguments)."""
        common = dict(compute_dtype=compute_dtype, mesh=mesh)
        augmented = make_eval_step(
            model, test_time_flip=flip, test_time_translate=translate, **common
        )
        plain = make_eval_step(model, **common) if flip or translate else augmented
        scores = make_eval_step(model, scores=True, **common)
        return cls(model, augmented, plain, scores, mesh, np.dtype(dtype))

    def check_fits(self, variables: tuple[Any, Any], batch_size: int = 100) -> None:
        """Trace, without running, the labels step on a chunk of ``batch_size`` images (as
        :meth:`labels` makes them): the layers' memory checks run, so a network that cannot
        predict that many images at once is refused before a run trains, not at its first
        accuracy check.

        Raises:
            MemoryLimitError: naming the layer's arrays, its ``during`` the prediction's.
        """
        shape = getattr(self.model, "input_shape", None)  # a model of the user's may not say
        if shape is None:
            return
        batch_size = _chunk_rows(batch_size, self.mesh)
        placed = None if self.mesh is None else parallel.batch_sharding(self.mesh)
        chunk = jax.ShapeDtypeStruct((batch_size, *shape), self.dtype, sharding=placed)
        try:
            traced = self.augmented.trace(*variables, chunk)  # each layer checks its arrays
            _check_program_fits(traced, f"the compiled prediction of {batch_size} images")
        except check.MemoryLimitError as e:
            e.during = _predicting(batch_size)
            raise

    def _checked(self, X: Any, batch_size: Any) -> tuple[np.ndarray, int]:
        X = np.asarray(X)
        self.model.check_input(X)
        return X, check.positive_int("batch_size", batch_size)

    def labels(
        self, variables: tuple[Any, Any], X: Any, batch_size: int = 100, *, augment: bool = True
    ) -> np.ndarray:
        """:func:`predict` with ``variables = (params, model_state)``; ``augment=False``
        leaves out the test-time augmentation.

        Raises:
            ValueError: ``X`` is not the model's input or ``batch_size`` not positive.
        """
        X, batch_size = self._checked(X, batch_size)
        step = self.augmented if augment else self.plain
        return predict(step, variables, X, batch_size=batch_size, mesh=self.mesh, dtype=self.dtype)

    def where_unsure(
        self, variables: tuple[Any, Any], X: Any, batch_size: int = 100, *,
        confidence: float | None = None,
    ) -> TestTimePredictions:  # fmt: skip
        """:func:`predict_where_unsure` with these steps.

        Raises:
            ValueError: as :meth:`labels`, or ``confidence`` not None or in [0, 1].
        """
        X, batch_size = self._checked(X, batch_size)
        return predict_where_unsure(
            self.scores, self.augmented, variables, X, confidence=confidence,
            batch_size=batch_size, mesh=self.mesh, dtype=self.dtype,
        )  # fmt: skip

    def accuracy(
        self, variables: tuple[Any, Any], X: Any, y: Any, *, num_samples: int | None = None,
        rng: np.random.Generator | None = None, batch_size: int = 100, augment: bool = True,
    ) -> float:  # fmt: skip
        """Fraction of ``X`` labelled ``y``; on ``num_samples`` images drawn with replacement
        by ``rng`` when ``X`` has more.

        Raises:
            ValueError: ``X`` and ``y`` differ in length, or are empty.
        """
        X, y = np.asarray(X), np.asarray(y)
        if y.ndim != 1 or X.shape[0] != y.shape[0]:
            raise ValueError(
                f"X and y differ in length: X has shape {X.shape}, y has shape {y.shape}"
            )
        if X.shape[0] == 0:
            raise ValueError("check_accuracy needs at least one image")
        if num_samples is not None and X.shape[0] > num_samples:
            mask = (rng or np.random.default_rng()).choice(X.shape[0], num_samples)
            X, y = X[mask], y[mask]
        return float(np.mean(self.labels(variables, X, batch_size, augment=augment) == y))
