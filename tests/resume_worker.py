"""A tiny checkpointed training run, for the kill-and-resume test of ``tests/test_resume.py``.

    python tests/resume_worker.py CHECKPOINT_DIR RESULT [SECONDS_PER_ITERATION]

Trains a small VGGNet (spatial batchnorm, dropout, augmentation: every source of randomness
and state) on synthetic images with ``checkpoint_every=2``, printing every iteration, and
then writes ``RESULT.npz`` (every array of the final solver) and ``RESULT.json`` (counters
and histories, without wall-clock times). Running the same command again after a kill
resumes from the newest checkpoint in CHECKPOINT_DIR.
"""

from __future__ import annotations

import json
import sys
import time


def main(argv: list[str]) -> None:
    import numpy as np

    from jcnn.augment import random_crop_flip
    from jcnn.checkpoint import flatten_tree
    from jcnn.models import VGGNet
    from jcnn.solver import Solver
    from tests.models.util import synthetic_data

    checkpoint_dir, result = argv[1], argv[2]
    delay = float(argv[3]) if len(argv) > 3 else 0.0
    model = VGGNet(
        input_dim=(3, 8, 8), num_filters=(4,), blocks=(1,), hidden_dims=(8,), dropout=0.3,
        reg=1e-3,
    )  # fmt: skip
    solver = Solver(
        model, synthetic_data(60, 20, shape=(3, 8, 8)), update_rule="adam",
        optim_config={"learning_rate": 1e-2}, lr_decay=0.9, batch_size=10, num_epochs=3,
        num_train_samples=20, print_every=1, checkpoint_dir=checkpoint_dir, checkpoint_every=2,
        seed=3, augment=random_crop_flip,
        on_iteration=lambda s, it, loss: time.sleep(delay),  # room for the kill to land
    )  # fmt: skip
    solver.train()
    np.savez(result + ".npz", **flatten_tree(solver.checkpoint_tree()))
    histories = {
        "iteration": solver.iteration,
        "epoch": solver.epoch,
        "loss_history": solver.loss_history,
        "train_acc_history": solver.train_acc_history,
        "val_acc_history": solver.val_acc_history,
        "lr_history": solver.lr_history,
        "eval_history": [
            {k: v for k, v in r.items() if k != "seconds"} for r in solver.eval_history
        ],
        "best_val_acc": solver.best_val_acc,
        "best_epoch": solver.best_epoch,
        "host_rng": solver.run.host_rng.bit_generator.state,
        "resumed_from": solver.resumed_from,
    }
    with open(result + ".json", "w") as f:
        json.dump(histories, f)


if __name__ == "__main__":
    main(sys.argv)
