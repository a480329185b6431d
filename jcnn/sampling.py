"""Which training rows each update of a run uses.

``'replacement'`` (cs231n's): every minibatch is ``batch_size`` rows drawn with replacement
by the run's host generator. ``'epoch'``: each epoch is a permutation of the training set
cut into whole minibatches (the last partial one left out); epoch ``e``'s permutation comes
from ``(seed, e)`` alone, so a run resumed in the middle of an epoch continues it exactly.
"""

from __future__ import annotations

import numpy as np

from jcnn import _validate as check

__all__ = ["SAMPLINGS", "Minibatches"]

SAMPLINGS = ("replacement", "epoch")


class Minibatches:
    """The rows of update ``t`` of a run over ``num_train`` training images.

    Args:
        num_train: the training set's size.
        batch_size: rows per update.
        sampling: one of :data:`SAMPLINGS`.
        seed: the run's seed (epoch sampling's permutations).

    Raises:
        ValueError: epoch sampling with fewer training images than one minibatch.
    """

    def __init__(self, num_train: int, batch_size: int, sampling: str, seed: int):
        if sampling == "epoch":
            check.epoch_batches(num_train, batch_size)
        self.num_train, self.batch_size = num_train, batch_size
        self.sampling, self.seed = sampling, seed
        self.per_epoch = max(num_train // batch_size, 1)  # updates in an epoch
        self._order: tuple[int, np.ndarray] | None = None  # the current epoch's permutation

    def rows(self, iteration: int, host_rng: np.random.Generator) -> np.ndarray:
        """The rows of update number ``iteration`` (0-based); ``host_rng`` draws them with
        replacement (it is not used by epoch sampling).

        Returns:
            ``(batch_size,)`` row indices.
        """
        if self.sampling == "replacement":
            return host_rng.choice(self.num_train, self.batch_size)
        epoch, k = divmod(iteration, self.per_epoch)
        if self._order is None or self._order[0] != epoch:
            order = np.random.default_rng([self.seed, epoch]).permutation(self.num_train)
            self._order = (epoch, order)
        return self._order[1][k * self.batch_size : (k + 1) * self.batch_size]
