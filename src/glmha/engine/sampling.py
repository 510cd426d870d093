"""A resumable, shardable stream of training samples.

Sample number ``n`` (counted over the whole run, all processes together) is item
``perm_e[n mod N]`` of epoch ``e = n // N``, where ``perm_e`` is a permutation seeded by
``(seed, e)``; the dataset draws the sample's crop, flips and noise from ``(seed, item, n)``.
Step ``s`` of process ``r`` out of ``W`` with ``B`` samples each takes sample numbers
``start + (s*W + r)*B ... + B - 1``. So the stream depends only on the number of samples
already consumed: resuming from a checkpoint, or running on 2 GPUs with batch B instead of
1 GPU with batch 2B, sees exactly the same samples.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
from torch.utils.data import Sampler


class SampleStream(Sampler):
    """Endless ``(item, sample_number)`` keys for one process; see the module docstring."""

    def __init__(self, num_items: int, batch_size: int, seed: int = 0, start: int = 0, rank: int = 0, world_size: int = 1):
        if num_items <= 0:
            raise ValueError("the training dataset is empty")
        self.num_items, self.batch_size, self.seed = num_items, batch_size, seed
        self.start, self.rank, self.world_size = start, rank, world_size
        self._epoch, self._perm = -1, None

    def _item(self, n: int) -> int:
        epoch = n // self.num_items
        if epoch != self._epoch:
            self._epoch = epoch
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.num_items)
        return int(self._perm[n % self.num_items])

    def __iter__(self) -> Iterator[tuple[int, int]]:
        step = 0
        while True:
            first = self.start + (step * self.world_size + self.rank) * self.batch_size
            for n in range(first, first + self.batch_size):
                yield self._item(n), n
            step += 1
