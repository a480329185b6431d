"""jcnn's airbench94 recipe (``experiments/configs/airbench94.cfg``) ported to PyTorch eager:
the same recipe in PyTorch on the same CPU, a comparison point for jcnn's own run.

    python -m experiments.torch_airbench --data_dir=DIR                  # the whole recipe
    python -m experiments.torch_airbench --data_dir=DIR --compute_dtype=bfloat16 --threads=2

``torch`` is a benchmark-only dependency, not one of jcnn's (``pip install torch==2.13.0``).
Everything but the framework is jcnn's: the net is :class:`experiments.torch_models.AirbenchNet`
(tested equal to :class:`jcnn.models.AirbenchNet`), the data come from :mod:`jcnn.data` (the
training split's mean image subtracted), the whitening filters from
:func:`jcnn.models.airbench.whitening_filters`, each epoch's batches from
:class:`jcnn.sampling.Minibatches` (the same permutations as jcnn's run of the same seed), and
the settings from :data:`experiments.recipes.AIRBENCH94`. The rest is written again here, as
jcnn computes it: airbench's Nesterov SGD with parameter groups and warm-up/linear-decay
schedule (:func:`jcnn.optim.airbench_sgd`), the whitening bias trained for its first epochs,
lookahead over the weights and batchnorm statistics (:class:`jcnn.train.Lookahead`), label
smoothing, reflect translations and alternating flips (:func:`jcnn.augment.alternating_flip_crop`),
and test-time flips and shifts (:func:`jcnn.prediction.test_time_scores`).

It prints a line after the first update and after every epoch (the loss; train accuracy on
``--num_train_samples`` training images with test-time augmentation, outside the training
time, as jcnn's run checks it), then one line: test accuracy with and without test-time
augmentation, wall time, training time (the training loop only) and training images/s;
``--json_out`` writes the same as JSON. Only the weights' random init and the translations'
random offsets differ from a jcnn run of the same seed (torch's generators, not JAX's).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from absl import flags

from experiments import recipes
from experiments.config import CIFAR10_TEST, CIFAR10_TRAIN
from experiments.errors import UsageFailure, run_app

if TYPE_CHECKING:
    import torch

    from experiments.torch_models import AirbenchNet

RECIPE = recipes.AIRBENCH94  # every setting not a flag here is airbench94.cfg's
TORCH_PIN = "torch==2.13.0"
EVAL_CHUNK = 500  # images per forward pass when predicting


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
    """The app's flags on ``fv``; the defaults are airbench94's."""
    d: dict[str, Any] = {"flag_values": fv}
    flags.DEFINE_string("data_dir", None, "Folder holding cifar-10-batches-py/ (default: "
                        "$JCNN_DATA_DIR, else ~/.cache/jcnn).", **d)  # fmt: skip
    flags.DEFINE_integer("seed", RECIPE.seed, "Seed of the init, batches and translations.", **d)
    flags.DEFINE_integer("num_epochs", RECIPE.num_epochs, "Epochs.", lower_bound=1, **d)
    flags.DEFINE_integer("batch_size", RECIPE.batch_size, "Images per update.", lower_bound=1, **d)
    flags.DEFINE_enum("compute_dtype", "float32", ["float32", "bfloat16"], "float32, or "
                      "bfloat16 under torch.autocast('cpu').", **d)  # fmt: skip
    flags.DEFINE_integer("threads", 2, "torch.set_num_threads.", lower_bound=1, **d)
    flags.DEFINE_integer("num_train", RECIPE.num_train, "Training images (the first ones).",
                         lower_bound=1, upper_bound=CIFAR10_TRAIN, **d)  # fmt: skip
    flags.DEFINE_integer("num_test", RECIPE.num_test, "Test images (the first ones).",
                         lower_bound=1, upper_bound=CIFAR10_TEST, **d)  # fmt: skip
    flags.DEFINE_integer("num_train_samples", RECIPE.num_train_samples, "Training images of "
                         "each accuracy check.", lower_bound=1, **d)  # fmt: skip
    flags.DEFINE_list("widths", [str(w) for w in RECIPE.widths], "Filters of the three blocks "
                      "(smaller for a quick test only).", **d)  # fmt: skip
    flags.DEFINE_string("json_out", None, "Also write the results to this JSON file.", **d)


def import_torch() -> Any:
    """``torch``, or a one-line failure saying how to install it."""
    try:
        import torch
    except ImportError as e:
        raise UsageFailure(f"torch is not importable ({e}): pip install {TORCH_PIN}") from None
    return torch


def lr_shape(t: int, total: int, *, warmup_fraction: float = 0.23) -> float:
    """airbench's multiplier of update ``t`` (0-based) of ``total``: 0.2 → 1 over the first
    ``int(0.23·total)`` updates, then linearly to 0.07 at ``total``
    (:func:`jcnn.optim_airbench.warmup_linear_decay`)."""
    warmup = int(total * warmup_fraction)
    if t < warmup:
        return 0.2 + 0.8 * t / max(warmup, 1)
    return 1.0 + (0.07 - 1.0) * (t - warmup) / (total - warmup)


def flip_bits(X: np.ndarray) -> np.ndarray:
    """Each training image's fixed bit of the alternating flips: the sign of its projection
    on jcnn's fixed random direction (:func:`jcnn.augment.alternating_flip_crop`), so the
    same images start mirrored as in jcnn's run; computed once, before training."""
    import jax
    import jax.numpy as jnp

    from jcnn.augment import _FLIP_BIT_SEED

    key = jax.random.key(_FLIP_BIT_SEED)
    direction = np.asarray(jax.random.normal(key, X.shape[1:], jnp.float32))
    direction = (direction - direction.mean()).ravel()
    return np.concatenate(
        [
            X[i : i + 5000].reshape(-1, direction.size) @ direction > 0
            for i in range(0, len(X), 5000)
        ]
    )


def build_net(torch: Any, X_train: np.ndarray, widths: Sequence[int], seed: int) -> AirbenchNet:
    """The twin net: torch's default init from ``seed`` with Dirac 3×3 convs (as
    :meth:`jcnn.models.AirbenchNet.init`), the whitening filters of the first
    ``whiten_images`` training images (:meth:`~jcnn.models.AirbenchNet.init_with_data`)."""
    from experiments.torch_models import AirbenchNet
    from jcnn.models.airbench import whitening_filters

    torch.manual_seed(seed)
    net = AirbenchNet(widths=tuple(widths), label_smoothing=RECIPE.label_smoothing)
    w = whitening_filters(X_train[: RECIPE.whiten_images], net.whiten.kernel_size[0])
    with torch.no_grad():
        net.whiten.weight.copy_(torch.from_numpy(w))
    return net.train()


def make_sgd(torch: Any, net: AirbenchNet, batch_size: int) -> Any:
    """:func:`jcnn.optim.airbench_sgd` as torch's SGD (whose Nesterov rule it copies): rates
    per 1,024 examples over ``K = 1024·(1 + 1/(1 − μ))``, decay ``weight_decay/lr``; the
    batchnorm shifts at ``bias_scaler``× the rate and 1/``bias_scaler`` the decay. Each group's
    ``scale`` times ``lr_shape(t)`` is its rate at update ``t`` (:func:`set_rates`). The
    whitening filters and batchnorm scales are frozen (``requires_grad`` False)."""
    r = RECIPE
    base = r.learning_rate * batch_size / (1024.0 * (1.0 + 1.0 / (1.0 - r.momentum)))
    decay = r.weight_decay / r.learning_rate
    weights = [c.weight for c in net.convs.values()] + [net.out.weight]
    shifts = [bn.bias for bn in net.norms.values()]
    groups = [
        {"params": weights, "scale": base, "weight_decay": decay},
        {"params": shifts, "scale": r.bias_scaler * base, "weight_decay": decay / r.bias_scaler},
        {"params": [net.whiten.bias], "scale": base, "weight_decay": decay},
    ]
    for g in groups:
        g["lr"] = g["scale"]
    return torch.optim.SGD(groups, lr=base, momentum=r.momentum, nesterov=True)


def set_rates(optimizer: Any, t: int, total: int) -> float:
    """Each group's rate for update ``t``; returns the weights' (jcnn's ``lr_history``)."""
    shape = lr_shape(t, total)
    for g in optimizer.param_groups:
        g["lr"] = g["scale"] * shape
    return optimizer.param_groups[0]["lr"]


class Lookahead:
    """:class:`jcnn.train.Lookahead` on the net's parameters and batchnorm statistics: after
    update ``t`` with ``t % every == 0`` the slow copy moves to the net by ``1 − α(t)``,
    ``α(t) = 0.95⁵·(t/T)³``, and the net continues from it; after the last update (``t =
    T`` not a multiple of ``every``) the net is the slow copy as it stands (α = 1)."""

    def __init__(self, net: AirbenchNet, every: int, total: int):
        bufs = [b for b in net.buffers() if b.is_floating_point()]
        self.fast = [p.data for p in net.parameters()] + bufs
        self.slow = [a.detach().clone() for a in self.fast]
        self.every, self.total = every, total

    def __call__(self, t: int) -> None:
        on_schedule = t % self.every == 0
        if not (on_schedule or t >= self.total):
            return
        alpha = 0.95**5 * (t / self.total) ** 3 if on_schedule else 1.0
        for slow, fast in zip(self.slow, self.fast, strict=True):
            slow.lerp_(fast, 1.0 - alpha)
            fast.copy_(slow)


def augment(torch: Any, x: Any, flip: Any, pad: int, generator: Any) -> Any:
    """:func:`jcnn.augment.alternating_flip_crop` on a batch ``x``: each image cropped from
    its ``pad``-pixel reflect padding at a uniform offset in ``[0, 2·pad]`` per axis, then
    mirrored where ``flip`` (its bit xor the epoch's parity)."""
    import torch.nn.functional as F

    n, c, h, w = x.shape
    if pad:
        padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
        off = torch.randint(0, 2 * pad + 1, (n, 2), generator=generator)
        rows = (off[:, :1] + torch.arange(h))[:, None, :, None].expand(n, c, h, w + 2 * pad)
        cols = (off[:, 1:] + torch.arange(w))[:, None, None, :].expand(n, c, h, w)
        x = padded.gather(2, rows).gather(3, cols)
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def predict(torch: Any, net: AirbenchNet, X: np.ndarray, autocast: Any) -> tuple[Any, Any]:
    """Labels of images ``X`` in test mode: with airbench94's test-time augmentation
    (:func:`jcnn.prediction.test_time_scores`: half the mean of the image's and its mirror's
    scores, a quarter each the same for the image shifted ``s`` pixels diagonally up-left
    and down-right, reflect padding) and without (the plain view, computed once for both)."""
    import torch.nn.functional as F

    s, flip = RECIPE.test_time_translate, RECIPE.test_time_flip
    tta, plain = [], []
    net.eval()
    with torch.inference_mode(), autocast:
        for i in range(0, len(X), EVAL_CHUNK):
            x = torch.from_numpy(X[i : i + EVAL_CHUNK])
            h, w = x.shape[-2:]
            first = net(x).float()
            plain.append(first.argmax(1))

            def views(v: torch.Tensor, scores: torch.Tensor | None = None) -> torch.Tensor:
                scores = net(v).float() if scores is None else scores
                return 0.5 * (scores + net(v.flip(3)).float()) if flip else scores

            scores = views(x, first)
            if s:
                p = F.pad(x, (s, s, s, s), mode="reflect")
                shifted = views(p[..., :h, :w]) + views(
                    p[..., 2 * s : 2 * s + h, 2 * s : 2 * s + w]
                )
                scores = 0.5 * scores + 0.25 * shifted
            tta.append(scores.argmax(1))
    net.train()
    return torch.cat(tta).numpy(), torch.cat(plain).numpy()


def train_accuracy(torch: Any, net: AirbenchNet, data: dict, cfg: dict, autocast: Any) -> float:
    """jcnn's accuracy check: ``num_train_samples`` training images drawn with replacement by
    the run's host generator (all of them if there are fewer), with test-time augmentation."""
    X, y = data["X_train"], data["y_train"]
    if len(X) > cfg["num_train_samples"]:
        rows = cfg["host_rng"].choice(len(X), cfg["num_train_samples"])
        X, y = X[rows], y[rows]
    return float(np.mean(predict(torch, net, X, autocast)[0] == y))


class Trainer:
    """The training loop of jcnn's run (:meth:`jcnn.training_run.TrainingRun.train`): the
    updates of ``num_epochs`` epochs of whole batches (``num_train // batch_size`` per
    epoch, the last partial batch left out), an accuracy check after the first update and
    after every epoch, outside the training time."""

    def __init__(self, torch: Any, net: AirbenchNet, data: dict, cfg: dict):
        from jcnn.sampling import Minibatches

        self.torch, self.net, self.data, self.cfg = torch, net, data, cfg
        self.X, self.y = torch.from_numpy(data["X_train"]), torch.from_numpy(data["y_train"])
        batch = cfg["batch_size"]
        self.per_epoch = len(self.X) // batch
        self.total = self.per_epoch * cfg["num_epochs"]
        self.batches = Minibatches(len(self.X), batch, "epoch", cfg["seed"])
        self.bits = torch.from_numpy(flip_bits(data["X_train"]))
        self.optimizer = make_sgd(torch, net, batch)
        self.lookahead = Lookahead(net, RECIPE.lookahead_every, self.total)
        self.whiten_updates = round(RECIPE.whiten_bias_epochs * self.per_epoch)
        self.generator = torch.Generator().manual_seed(cfg["seed"])
        self.train_s, self.lr = 0.0, 0.0
        self.history: list[dict[str, Any]] = []
        self.losses: list[Any] = []

    def step(self, t: int) -> Any:
        """Update ``t`` (0-based); returns its loss (a tensor)."""
        import torch.nn.functional as F

        torch, net = self.torch, self.net
        if t == self.whiten_updates:  # jcnn.optim_airbench.freeze_after
            bias = net.whiten.bias
            assert bias is not None
            bias.requires_grad_(False)
            bias.grad = None
        idx = torch.from_numpy(self.batches.rows(t, self.cfg["host_rng"]))  # (not drawn from)
        odd_epoch = (t // self.per_epoch) % 2 == 1
        x = augment(torch, self.X[idx], self.bits[idx] ^ odd_epoch, RECIPE.augment_pad,
                    self.generator)  # fmt: skip
        self.lr = set_rates(self.optimizer, t, self.total)
        self.optimizer.zero_grad(set_to_none=True)
        with self.cfg["autocast"]:
            scores = net(x)
        loss = F.cross_entropy(scores.float(), self.y[idx], label_smoothing=net.label_smoothing)
        loss.backward()
        self.optimizer.step()
        self.lookahead(t + 1)
        return loss.detach()

    def check(self, t: int, first: int) -> None:
        """The accuracy check after update ``t``: a line, a record; a non-finite loss stops."""
        losses = [float(v) for v in self.losses[first : t + 1]]
        if not np.all(np.isfinite(losses)):
            raise UsageFailure(
                f"the loss is not finite by update {t + 1} ({losses[-1]}): the recipe diverged"
            )
        acc = train_accuracy(self.torch, self.net, self.data, self.cfg, self.cfg["autocast"])
        epoch = (t + 1) // self.per_epoch
        record = {
            "epoch": epoch, "iteration": t + 1, "loss": losses[-1],
            "mean_loss": float(np.mean(losses)), "train_acc": acc, "lr": self.lr,
            "train_time_s": round(self.train_s, 3),
        }  # fmt: skip
        self.history.append(record)
        where = f"epoch {epoch} / {self.cfg['num_epochs']}" if epoch else "update 1"
        print(
            f"({where}) loss {losses[-1]:.4f} (mean {record['mean_loss']:.4f} since the last "
            f"line); train acc {acc:.4f}; lr {self.lr:.4g}; training {self.train_s:.1f} s",
            flush=True,
        )

    def run(self) -> None:
        """Every update, timed; the checks between them, untimed."""
        first = 0
        for t in range(self.total):
            start = time.perf_counter()
            self.losses.append(self.step(t))
            self.train_s += time.perf_counter() - start
            if t == 0 or (t + 1) % self.per_epoch == 0:
                self.check(t, first)
                first = t + 1


def settings(fv: flags.FlagValues) -> dict[str, Any]:
    """The run's settings from the flags, checked (a one-line failure for a bad one)."""
    try:
        widths = [int(w) for w in fv.widths]
    except ValueError:
        widths = []
    if len(widths) != 3 or min(widths) < 1:
        raise UsageFailure(f"--widths={','.join(fv.widths)}: give three positive ints")
    if fv.num_train < fv.batch_size:
        raise UsageFailure(
            f"--batch_size={fv.batch_size} is larger than --num_train={fv.num_train}: each "
            "epoch takes whole batches"
        )
    if fv.json_out and not Path(fv.json_out).absolute().parent.is_dir():
        raise UsageFailure(f"--json_out={fv.json_out}: its folder does not exist")
    names = ("data_dir", "seed", "num_epochs", "batch_size", "compute_dtype", "threads",
             "num_train", "num_test", "num_train_samples", "json_out")  # fmt: skip
    cfg = {name: getattr(fv, name) for name in names}
    return {**cfg, "widths": widths, "host_rng": np.random.default_rng(fv.seed)}


def load_cifar(cfg: dict[str, Any]) -> dict[str, Any]:
    """jcnn's CIFAR-10 split as the airbench app loads it: the first ``num_train`` training
    images (no validation split), the first ``num_test`` test images, float32 NCHW, the
    training split's mean image subtracted (:func:`experiments.rundata.load_data`)."""
    from experiments.rundata import load_data

    split = {"num_train": cfg["num_train"], "num_val": 0, "num_test": cfg["num_test"]}
    return load_data({"data_dir": cfg["data_dir"], "dataset": "cifar10", **split})


def run(argv: Sequence[str], fv: flags.FlagValues = flags.FLAGS) -> dict[str, Any]:
    """Train and test the port; returns the results (what ``--json_out`` receives)."""
    if len(argv) > 1:
        raise UsageFailure(f"unexpected argument(s) {list(argv[1:])!r}: flags are --name=value")
    cfg = settings(fv)
    torch = import_torch()
    torch.set_num_threads(cfg["threads"])
    start = time.perf_counter()
    data = load_cifar(cfg)
    bf16 = cfg["compute_dtype"] == "bfloat16"
    cfg["autocast"] = torch.autocast("cpu", torch.bfloat16, enabled=bf16)
    net = build_net(torch, data["X_train"], cfg["widths"], cfg["seed"])
    trainer = Trainer(torch, net, data, cfg)
    print(
        f"torch_airbench: torch {torch.__version__}, {cfg['threads']} threads, "
        f"{cfg['compute_dtype']}; {len(data['y_train'])} train / {len(data['y_test'])} test "
        f"images; {cfg['num_epochs']} epochs x {trainer.per_epoch} updates of "
        f"{cfg['batch_size']}",
        flush=True,
    )
    trainer.run()
    tta, plain = predict(torch, net, data["X_test"], cfg["autocast"])
    result = {
        "test_acc": float(np.mean(tta == data["y_test"])),
        "test_acc_without_tta": float(np.mean(plain == data["y_test"])),
        "wall_time_s": round(time.perf_counter() - start, 3),
        "train_time_s": round(trainer.train_s, 3),
        "images_per_s": round(trainer.total * cfg["batch_size"] / max(trainer.train_s, 1e-9), 2),
        "final_loss": trainer.history[-1]["loss"], "iterations": trainer.total,
        "iterations_per_epoch": trainer.per_epoch, "torch_version": torch.__version__,
        **{k: v for k, v in cfg.items() if k not in ("autocast", "host_rng", "json_out")},
        "history": trainer.history,
    }  # fmt: skip
    print(
        f"test acc {result['test_acc']:.4f} ({result['test_acc_without_tta']:.4f} without "
        f"test-time augmentation); wall time {result['wall_time_s']:.1f} s; training "
        f"{result['train_time_s']:.1f} s; {result['images_per_s']:.1f} training images/s",
        flush=True,
    )
    if cfg["json_out"]:
        Path(cfg["json_out"]).write_text(json.dumps(result, indent=2) + "\n")
    return result


def main(argv: Sequence[str]) -> None:
    run(argv)  # absl's app.run would print a returned value and exit with status 1


if __name__ == "__main__":
    define_flags()
    run_app(main)
