"""The benchmark's flags, their ``--tiny`` values, and the models they describe.

Every process of a benchmark (the parent and each worker) reads its settings from these
flags; the parent forwards :data:`FORWARDED` to its workers verbatim. The models
are the nets of :data:`experiments.recipes.THREE_LAYER_SEED` and
:data:`experiments.recipes.VGG_SEED` (the default ``--models``) and of
:data:`experiments.recipes.AIRBENCH94` (``--models=airbench``).
"""

from __future__ import annotations

from collections.abc import Iterable

from absl import flags

from experiments.recipes import AIRBENCH94 as AIRBENCH
from experiments.recipes import THREE_LAYER_SEED as THREE_LAYER
from experiments.recipes import VGG_SEED as VGG
from experiments.recipes import Recipe

PRESETS: dict[str, Recipe] = {"three_layer": THREE_LAYER, "vgg": VGG, "airbench": AIRBENCH}
MODELS = tuple(PRESETS)
DEFAULT_MODELS = ("three_layer", "vgg")
# The optimiser of each model's step, in both frameworks: Adam (optax's defaults) for the
# cs231n models; airbench's Nesterov SGD with its momentum, plain (one learning rate, no
# weight decay, every trainable parameter: all but the frozen whitening filters).
OPTIMIZERS = {
    "three_layer": "Adam",
    "vgg": "Adam",
    "airbench": f"SGD, Nesterov momentum {AIRBENCH.momentum}",
}
# jcnn_no_native: jcnn with every compiled CPU kernel turned off (JCNN_NATIVE=0): XLA's code.
# jcnn_no_onednn: jcnn with only its oneDNN convolutions turned off (JCNN_ONEDNN=0).
# *_bf16: the network computed in bfloat16 (jcnn: compute_dtype through
# jcnn.precision.mixed_precision_loss; torch: torch.autocast('cpu', torch.bfloat16)).
JAX_IMPLS = ("jcnn", "reference", "solver", "jcnn_no_native", "jcnn_no_onednn", "jcnn_bf16")
TORCH_IMPLS = ("torch", "torch_compile", "torch_bf16")
BF16_IMPLS = ("jcnn_bf16", "torch_bf16")
# The worker environment of the impls that turn kernels off.
IMPL_ENV = {"jcnn_no_native": {"JCNN_NATIVE": "0"}, "jcnn_no_onednn": {"JCNN_ONEDNN": "0"}}
IMPLS = JAX_IMPLS + TORCH_IMPLS
# Old impl names still accepted (with a warning), and what they are now called.
RENAMED = {"jcnn_xla": "jcnn_no_native"}
# (a, b): report throughput(a) / throughput(b) when both were run.
RATIO_PAIRS = (
    ("jcnn", "torch"),
    ("reference", "torch"),
    ("jcnn", "reference"),
    ("jcnn", "torch_compile"),
    ("torch_compile", "torch"),
    ("solver", "jcnn"),
    ("jcnn", "jcnn_no_native"),
    ("jcnn", "jcnn_no_onednn"),
    ("jcnn_bf16", "torch_bf16"),
    ("jcnn_bf16", "jcnn"),
    ("torch_bf16", "torch"),
)
RESULT_PREFIX = "@@jcnn-benchmark@@ "

# Values --tiny gives to the size flags that were not set explicitly: a model that compiles and
# runs in well under a second, for smoke tests.
TINY = {
    "image_size": 8,
    "three_layer_filters": 4,
    "three_layer_filter_size": 3,
    "three_layer_hidden": 8,
    "vgg_filters": ["4", "4"],
    "vgg_blocks": ["1", "1"],
    "vgg_hidden": ["8"],
    "airbench_widths": ["4", "8", "8"],
    "airbench_image_size": 12,  # airbench takes no --image_size under 9
    "batch_sizes": ["4"],
}

FLAGS = flags.FLAGS


def _strs(values: Iterable[int]) -> list[str]:
    return [str(v) for v in values]


flags.DEFINE_list("models", list(DEFAULT_MODELS), f"Models to time, from {MODELS}.")
flags.DEFINE_list(
    "batch_sizes",
    None,
    "Batch sizes to time (default: each model's own, "
    + ", ".join(f"{m} {p.batch_size}" for m, p in PRESETS.items())
    + ").",
)
flags.DEFINE_list(
    "impls",
    ["jcnn", "reference", "torch"],
    f"Implementations, from {IMPLS}; torch ones are skipped when torch is not importable.",
)
flags.DEFINE_enum(
    "step",
    "train",
    ["train", "hvp", "jvp"],
    "What is timed: a training step; or (JAX impls only) in a fixed random direction in the "
    "parameters, hvp: a Hessian-vector product of the loss (jax.jvp of jax.grad), jvp: the "
    "loss's directional derivative (forward mode: the reference impl only).",
)
flags.DEFINE_integer("repeats", 20, "Timed steps per worker (per round).")
flags.DEFINE_integer("rounds", 5, "Rounds; each runs every (model, batch, impl) once.")
flags.DEFINE_integer("warmup", 3, "Untimed steps after the first (compiling) call.")
flags.DEFINE_enum("order", "rotate", ["rotate", "fixed"], "Impl order within a round.")
flags.DEFINE_string("json_out", None, "Write the full results as JSON to this path.")
flags.DEFINE_float(
    "quiet_load", 0.5, "Wait before timing until the 1-min load average is below this."
)
flags.DEFINE_float("quiet_max_wait", 300.0, "Give up waiting for a quiet machine after this (s).")
flags.DEFINE_bool("quiet_each_round", False, "Also wait for a quiet machine before every round.")
flags.DEFINE_float("worker_timeout", 1800.0, "Seconds before a worker is killed.")
flags.DEFINE_integer("seed", 0, "Seed for the parameters and the data.")
flags.DEFINE_float(
    "learning_rate", 1e-3, "Learning rate of every model's optimiser (Adam; airbench: SGD)."
)
# One --reg for the cs231n models: their recipes share it. airbench has no L2 term (reg 0).
flags.DEFINE_float("reg", VGG.reg, "three_layer, vgg: L2 strength, 0.5·reg·Σ W² added to the loss.")
flags.DEFINE_integer("num_classes", 10, "Classes.")
flags.DEFINE_integer("image_size", 32, "Images are 3 x image_size x image_size.")
flags.DEFINE_integer(
    "three_layer_filters", THREE_LAYER.num_filters, "ThreeLayerConvNet: conv filters."
)
flags.DEFINE_integer(
    "three_layer_filter_size", THREE_LAYER.filter_size, "ThreeLayerConvNet: filter size."
)
flags.DEFINE_integer(
    "three_layer_hidden", THREE_LAYER.hidden_dim, "ThreeLayerConvNet: hidden units."
)
flags.DEFINE_float(
    "three_layer_weight_scale", THREE_LAYER.weight_scale, "ThreeLayerConvNet: init std."
)
flags.DEFINE_list("vgg_filters", _strs(VGG.num_filters), "VGGNet: filters per stage.")
flags.DEFINE_list("vgg_blocks", _strs(VGG.blocks), "VGGNet: conv blocks per stage.")
flags.DEFINE_list("vgg_hidden", _strs(VGG.hidden_dims), "VGGNet: hidden affine widths.")
flags.DEFINE_float("vgg_dropout", VGG.dropout, "VGGNet: dropout rate (probability of dropping).")
flags.DEFINE_float("vgg_weight_scale", VGG.weight_scale, "VGGNet: init std.")
flags.DEFINE_list(
    "airbench_widths", _strs(AIRBENCH.widths), "AirbenchNet: filters of each block (one per block)."
)
flags.DEFINE_integer(
    "airbench_image_size",
    None,
    "AirbenchNet: images are 3 x this x this (default: --image_size; at least 9).",
)
flags.DEFINE_bool(
    "tiny", False, "Tiny sizes for smoke tests (sets the size flags not given explicitly)."
)
flags.DEFINE_integer(
    "solver_num_train", 10_000, "solver impl: training images (one epoch = this / batch)."
)
flags.DEFINE_bool("solver_augment", False, "solver impl: random crops + flips in the step.")
flags.DEFINE_string("conv_impl", None, "jcnn models: conv_impl (default: the model's).")
flags.DEFINE_string("pool_impl", None, "jcnn models: pool_impl (default: the model's).")
flags.DEFINE_enum(
    "huge_pages",
    "jcnn",
    ["jcnn", "all", "none"],
    "Which workers back their heap with huge pages (jcnn.cpu.tune()): jcnn (jcnn's only, as "
    "jcnn's training apps do), all (PyTorch's too: both sides under the same memory setting), "
    "none. Each record says whether its worker had them.",
)
flags.DEFINE_integer("torch_threads", 0, "torch.set_num_threads (0: torch's default).")
flags.DEFINE_string("torch_device", "auto", "torch device: auto (cuda if available), cpu, cuda.")
# Worker mode: internal, used by the parent to run one (model, batch, impl) in a fresh process.
flags.DEFINE_bool("worker", False, "Internal: time a single model/batch/impl and print JSON.")
flags.DEFINE_integer("round", 0, "Internal: the round a worker belongs to.")

# Flags the parent forwards to its workers, verbatim.
FORWARDED = (
    "step",
    "repeats",
    "warmup",
    "seed",
    "learning_rate",
    "reg",
    "num_classes",
    "image_size",
    "three_layer_filters",
    "three_layer_filter_size",
    "three_layer_hidden",
    "three_layer_weight_scale",
    "vgg_filters",
    "vgg_blocks",
    "vgg_hidden",
    "vgg_dropout",
    "vgg_weight_scale",
    "airbench_widths",
    "airbench_image_size",
    "solver_num_train",
    "solver_augment",
    "conv_impl",
    "pool_impl",
    "torch_threads",
    "torch_device",
    "huge_pages",
)


def apply_tiny() -> None:
    """With ``--tiny``, give every size flag that was not set explicitly its tiny value
    (``--airbench_image_size`` only when ``--image_size`` was not given either)."""
    if not FLAGS.tiny:
        return
    for name, value in TINY.items():
        if name == "airbench_image_size" and FLAGS["image_size"].present:
            continue
        if not FLAGS[name].present:
            FLAGS[name].value = value


def batch_sizes(model: str) -> list[int]:
    """The batch sizes to time ``model`` at.

    Args:
        model: one of :data:`MODELS`.

    Returns:
        ``--batch_sizes`` when it has a value (given, or set by ``--tiny``), else the
        model's own batch size (its preset's: 50 for the cs231n models, 1024 for airbench).

    Raises:
        ValueError: ``model`` is not one of :data:`MODELS`.
    """
    if model not in PRESETS:
        raise ValueError(f"unknown model {model!r}; expected one of {MODELS}")
    given = FLAGS["batch_sizes"].value
    if given:
        return [int(b) for b in given]
    return [PRESETS[model].batch_size]


def unsupported(model: str, impls: Iterable[str]) -> str | None:
    """Why ``model`` cannot run with ``impls`` and the flags given, in one line, or None.

    Args:
        model: one of :data:`MODELS`.
        impls: the implementations asked for.

    Returns:
        The reason (``--step=hvp``/``jvp`` with a torch impl or ``solver``, ``jvp`` with
        any impl but ``reference``; airbench with the
        ``solver`` impl, or with ``--conv_impl`` / ``--pool_impl``, which it does not have),
        or None when the combination runs.
    """
    impls = list(impls)
    if FLAGS["step"].value != "train" and any(i in TORCH_IMPLS or i == "solver" for i in impls):
        return (
            f"--step={FLAGS['step'].value} times JAX steps only: drop the torch impls and solver "
            "from --impls"
        )
    if FLAGS["step"].value == "jvp" and any(i != "reference" for i in impls):
        return (
            "--step=jvp: JAX has no forward mode through jcnn's custom_vjp layers; "
            "time it on their autodiff twins, --impls=reference"
        )
    if model != "airbench":
        return None
    if "solver" in impls:
        return (
            "the solver impl does not support --models=airbench (its recipe is "
            "experiments.airbench_cifar); drop solver from --impls"
        )
    for name in ("conv_impl", "pool_impl"):
        if FLAGS[name].value is not None:
            return f"--{name} does not apply to --models=airbench (AirbenchNet has no {name})"
    return None


def _ints(values: Iterable[str]) -> tuple[int, ...]:
    return tuple(int(v) for v in values)


def model_config(model: str) -> dict:
    """Constructor keyword arguments shared by the jcnn model and its torch twin."""
    s = FLAGS.image_size
    if model == "three_layer":
        return {
            "input_dim": (3, s, s),
            "num_filters": FLAGS.three_layer_filters,
            "filter_size": FLAGS.three_layer_filter_size,
            "hidden_dim": FLAGS.three_layer_hidden,
            "num_classes": FLAGS.num_classes,
            "weight_scale": FLAGS.three_layer_weight_scale,
            "reg": FLAGS.reg,
        }
    if model == "vgg":
        return {
            "input_dim": (3, s, s),
            "num_filters": _ints(FLAGS.vgg_filters),
            "filter_size": VGG.filter_size,
            "blocks": _ints(FLAGS.vgg_blocks),
            "hidden_dims": _ints(FLAGS.vgg_hidden),
            "num_classes": FLAGS.num_classes,
            "weight_scale": FLAGS.vgg_weight_scale,
            "reg": FLAGS.reg,
            "use_batchnorm": VGG.use_batchnorm,
            "dropout": FLAGS.vgg_dropout,
        }
    if model == "airbench":
        side = FLAGS.airbench_image_size or s
        return {  # the rest at AirbenchNet's defaults, which are airbench94's
            "input_dim": (3, side, side),
            "widths": _ints(FLAGS.airbench_widths),
            "num_classes": FLAGS.num_classes,
            "label_smoothing": AIRBENCH.label_smoothing,
        }
    raise ValueError(f"unknown model {model!r}; expected one of {MODELS}")
