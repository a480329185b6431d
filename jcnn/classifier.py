"""Use a trained network: images in, class probabilities out, in a notebook or anywhere jax
runs.

A training run of the apps ends with ``<workdir>/checkpoints/best.npz``: the best parameters
and model state, and beside them (:func:`classifier_record`) what is needed to use them: the
training split's mean image (the apps subtract it from every image), the class names, the
model's configuration and the test-time augmentation the run was scored with. The sidecar
``best.npz.json`` holds the record as plain JSON (see docs/using-a-model.md)::

    clf = load_classifier("runs/vgg_seed")
    probs = clf.predict(images)          # uint8 (N, H, W, 3) -> float32 (N, num_classes)
    clf.class_names[probs[0].argmax()]

:func:`export_classifier` writes the same function as a portable :mod:`jax.export`
program (uint8 images in, probabilities out, any batch size) that runs with plain jax.

Preprocessing, as the apps train: pixels as float32 0..255, NCHW, minus the mean image.
Test-time augmentation (the run's, or ``tta=False``): the scores of the image and of its
left-right mirror averaged; for runs with ``test_time_translate`` (airbench) also those of
the image shifted diagonally both ways, as :func:`jcnn.train.test_time_scores` weighs them.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

FORMAT = "jcnn-classifier/1"
BEST = Path("checkpoints") / "best.npz"
# Written when a run starts: the mean image and the record, for a run still training.
PREPROCESSING = Path("preprocessing.npz")

# The "format" of an exported classifier's JSON description (then "/<version>").
EXPORT_FORMAT = "jcnn-exported-classifier"


def classifier_record(
    model: Any,
    *,
    class_names: Sequence[str],
    mean_image: Any,
    test_time_flip: bool,
    test_time_translate: int,
) -> dict[str, Any]:
    """What a run records beside its best parameters so that they can be used: plain JSON.

    Args:
        model: the :mod:`jcnn.models` model (a dataclass).
        class_names: one name per class, in label order.
        mean_image: the mean image subtracted from every input, ``model.input_shape``.
        test_time_flip: whether the run scored images with their mirror too.
        test_time_translate: the run's test-time shift in pixels (0: none).

    Returns:
        ``{'format', 'model', 'classes', 'input', 'test_time'}`` (the mean image itself goes
        into the checkpoint's arrays, as ``mean_image``).

    Raises:
        ValueError: ``class_names`` not one per class, or ``mean_image`` not shaped as the
            model's input.
    """
    from jcnn.files import to_json_values

    names = [str(n) for n in class_names]
    if len(names) != model.num_classes:
        raise ValueError(
            f"class_names must name the model's {model.num_classes} classes, got {len(names)}"
        )
    if tuple(np.shape(mean_image)) != tuple(model.input_shape):
        raise ValueError(
            f"mean_image must be shaped {tuple(model.input_shape)}, got {np.shape(mean_image)}"
        )
    fields = dataclasses.asdict(model)
    channels, height, width = model.input_shape
    return to_json_values(
        {
            "format": FORMAT,
            "model": {"class": type(model).__name__, **fields},
            "classes": names,
            "input": {
                "height": height, "width": width, "channels": channels,
                "pixels": "uint8 RGB (H, W, 3) as float32 0..255, NCHW, minus mean_image",
            },
            "test_time": {"flip": bool(test_time_flip), "translate": int(test_time_translate)},
        }
    )  # fmt: skip


@dataclasses.dataclass(frozen=True, eq=False)  # eq=False: hashed by identity (jit cache)
class Classifier:
    """A trained network and its preprocessing. Build one with :func:`load_classifier`.

    Attributes:
        model: the :mod:`jcnn.models` model.
        params: its parameters.
        state: its model state (batchnorm running statistics).
        mean_image: float32 ``(C, H, W)``, subtracted from every image.
        class_names: one per class.
        test_time_flip: the run's test-time mirror (the default of ``predict``'s ``tta``).
        test_time_translate: the run's test-time shift in pixels.
        source: where the parameters come from: the finished run's ``checkpoints/best.npz``,
            or, for a run still training, its newest checkpoint's best parameters so far.
    """

    model: Any
    params: Any
    state: Any
    mean_image: np.ndarray
    class_names: tuple[str, ...]
    test_time_flip: bool = False
    test_time_translate: int = 0
    source: str = ""

    @property
    def image_size(self) -> tuple[int, int]:
        """``(height, width)`` of the images the network takes."""
        return tuple(self.model.input_shape[1:])

    def probabilities_fn(self, *, tta: bool | None = None) -> Any:
        """The pure function ``uint8 (N, H, W, 3) -> float32 (N, K)`` (what
        :meth:`predict` jits and :func:`export_classifier` exports).

        Args:
            tta: apply the run's test-time augmentation (None: as the run did; False: the
                plain image only).
        """
        from jcnn.train import test_time_scores

        use = (self.test_time_flip or self.test_time_translate > 0) if tta is None else tta
        flip = self.test_time_flip if use else False
        translate = self.test_time_translate if use else 0
        params, state, mean = self.params, self.state, jnp.asarray(self.mean_image)

        def probabilities(images: jax.Array) -> jax.Array:
            x = jnp.transpose(images.astype(jnp.float32), (0, 3, 1, 2)) - mean
            scores = test_time_scores(
                self.model, params, state, x.astype(self.model.dtype), flip=flip,
                translate=translate,
            )  # fmt: skip
            return jax.nn.softmax(scores.astype(jnp.float32), axis=-1)

        return probabilities

    def predict(self, images: Any, *, tta: bool | None = None) -> np.ndarray:
        """Class probabilities of ``images``.

        Args:
            images: uint8 ``(N, H, W, 3)`` (or one ``(H, W, 3)`` image), H and W the run's
                :attr:`image_size` (:func:`jcnn.data.read_image` reads and resizes files).
            tta: as :meth:`probabilities_fn`.

        Returns:
            float32 ``(N, num_classes)`` (``(num_classes,)`` for one image), rows summing to 1.

        Raises:
            ValueError: naming ``images`` if not uint8 of the run's size with 3 channels.
        """
        x = np.asarray(images)
        single = x.ndim == 3
        x = x[None] if single else x
        want = (*self.image_size, 3)
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != want:
            raise ValueError(
                f"images must be uint8 (N, {want[0]}, {want[1]}, 3) or one (H, W, 3) image, "
                f"got {x.dtype} {x.shape}"
            )
        use = (self.test_time_flip or self.test_time_translate > 0) if tta is None else bool(tta)
        out = np.asarray(_jitted(self, use)(x))  # compiled once per batch size
        return out[0] if single else out


@functools.lru_cache(maxsize=8)
def _jitted(classifier: Classifier, tta: bool) -> Any:
    return jax.jit(classifier.probabilities_fn(tta=tta))


def _build_model(record: Mapping[str, Any]) -> Any:
    import jcnn.models

    fields = dict(record["model"])
    name = fields.pop("class", None)
    cls = getattr(jcnn.models, str(name), None)
    if cls is None:
        raise ValueError(f"the record names no jcnn model: {name!r}")
    # The impl fields choose the code, not the function: this machine's defaults run it.
    for field in getattr(cls, "IMPLEMENTATION_FIELDS", ()):
        fields.pop(field, None)
    return cls(**fields)


def _record(meta: Mapping[str, Any], path: Path) -> Mapping[str, Any]:
    record = meta.get("classifier")
    if not isinstance(record, Mapping) or record.get("format") != FORMAT:
        raise ValueError(
            f"{path} holds no {FORMAT} record (a run made before runs recorded their "
            "preprocessing): evaluate it with experiments.evaluate, or train it again"
        )
    return record


def load_classifier(workdir: str | Path) -> Classifier:
    """The classifier a run left in ``workdir``: a finished run's ``checkpoints/best.npz``;
    for a run still training, the best parameters so far from its newest checkpoint (with
    the preprocessing the run recorded when it started; ``Classifier.source`` says which).

    Args:
        workdir: a run's workdir, or the path of a ``best.npz`` itself.

    Returns:
        The :class:`Classifier`.

    Raises:
        FileNotFoundError: neither ``checkpoints/best.npz`` nor a checkpoint of a run in
            progress (with its ``preprocessing.npz``).
        ValueError: the checkpoint has no classifier record (written before runs recorded
            one), or is corrupt (:class:`jcnn.checkpoint.CorruptCheckpointError`), checksums
            or values: a parameter that is not finite, a negative running variance.
    """
    from jcnn.checkpoint import latest_run_checkpoint, load_checkpoint, verify_checkpoint

    path = Path(workdir)
    path = path if path.suffix == ".npz" else path / BEST
    if path.is_file():
        record = _record(verify_checkpoint(path), path)
        model = _build_model(record)
        params, state = model.init(jax.random.key(0))
        mean = np.zeros(model.input_shape, np.float32)
        like = {"params": params, "state": state, "mean_image": mean}
        tree, _ = load_checkpoint(path, like, verify=False)
        source = str(path)
    else:
        pre, found = Path(workdir) / PREPROCESSING, None
        if pre.is_file() and path.parent.is_dir():
            found = latest_run_checkpoint(path.parent)
        if found is None:
            raise FileNotFoundError(f"{path} does not exist, nor a checkpoint of a run in progress")
        record = _record(verify_checkpoint(pre), pre)
        model = _build_model(record)
        params, state = model.init(jax.random.key(0))
        mean = np.zeros(model.input_shape, np.float32)
        best, meta = load_checkpoint(
            found[0], {"best_params": params, "best_state": state}, strict=False
        )
        tree = {"params": best["best_params"], "state": best["best_state"]}
        tree["mean_image"] = load_checkpoint(pre, {"mean_image": mean})[0]["mean_image"]
        source = (
            f"{found[0]} (the run is still training: its best parameters so far, at "
            f"iteration {meta.get('iteration')})"
        )
    from jcnn.solver_checkpoints import check_values

    try:  # without its checksums a file is only as good as its values
        check_values(tree)
    except ValueError as e:
        raise type(e)(f"{source.split(' (')[0]}: {e}") from None
    classes, flip, translate = _checked_record(record, model, source.split(" (")[0])
    return Classifier(
        model=model, params=tree["params"], state=tree["state"],
        mean_image=np.asarray(tree["mean_image"], np.float32),
        class_names=classes, test_time_flip=flip, test_time_translate=translate, source=source,
    )  # fmt: skip


def _checked_record(
    record: Mapping[str, Any], model: Any, where: str
) -> tuple[tuple[str, ...], bool, int]:
    """``(class_names, test_time_flip, test_time_translate)`` of a classifier record, each
    checked (a sidecar without checksums is only as good as its values: a translate of
    10**6 made predict build ever larger arrays, a flip of "no" read as true); ValueError
    naming the value otherwise."""
    classes, tt = record.get("classes"), record.get("test_time", {})
    if (
        not isinstance(classes, list)
        or not all(isinstance(c, str) and c for c in classes)
        or len(set(classes)) != len(classes)
        or len(classes) != model.num_classes
    ):
        raise ValueError(
            f"{where}: the classifier record's classes must be {model.num_classes} distinct "
            f"names, got {str(classes)[:80]}"
        )
    flip = tt.get("flip", False) if isinstance(tt, Mapping) else None
    translate = tt.get("translate", 0) if isinstance(tt, Mapping) else None
    size = min(model.input_shape[1:])
    if not isinstance(flip, bool) or not (
        isinstance(translate, int) and not isinstance(translate, bool) and 0 <= translate < size
    ):
        raise ValueError(
            f"{where}: the classifier record's test_time must hold flip true or false and "
            f"translate an int in [0, {size}), got {str(tt)[:80]}"
        )
    return tuple(classes), flip, translate


def export_classifier(classifier: Classifier, *, tta: bool | None = None) -> tuple[bytes, str]:
    """The classifier as a portable program: :func:`jax.export` of
    :meth:`Classifier.probabilities_fn` for uint8 ``(b, H, W, 3)`` images, ``b`` symbolic,
    lowered with XLA's kernels (no jcnn custom call), plus its JSON description.

    Args:
        classifier: what to export.
        tta: as :meth:`Classifier.probabilities_fn`.

    Returns:
        ``(program, description)``: the serialised program (``jax.export.deserialize`` it,
        then ``.call(images)``), and JSON naming the classes, the input and the TTA.
    """
    fn = classifier.probabilities_fn(tta=tta)
    batch = jax.export.symbolic_shape("b")[0]
    spec = jax.ShapeDtypeStruct((batch, *classifier.image_size, 3), jnp.uint8)
    program = jax.export.export(jax.jit(fn))(spec).serialize()
    use = (classifier.test_time_flip or classifier.test_time_translate > 0) if tta is None else tta
    description = {
        "format": f"{EXPORT_FORMAT}/1",
        "classes": list(classifier.class_names),
        "input": {"dtype": "uint8", "shape": ["batch", *classifier.image_size, 3]},
        "output": {"dtype": "float32", "shape": ["batch", len(classifier.class_names)]},
        "test_time": {
            "flip": bool(use and classifier.test_time_flip),
            "translate": int(classifier.test_time_translate if use else 0),
        },
        "model": type(classifier.model).__name__,
    }
    return bytes(program), json.dumps(description, indent=2) + "\n"
