"""Deterministic, resumable batches: which images a step sees is a function of (seed, step, rank).

Samples are read in a fresh random permutation per epoch (an epoch = ``len(dataset)`` samples,
counted over all processes); the sample at global position ``p`` of step ``s`` is number
``s * global_batch + p`` of that stream. Within a step, micro-batch ``a`` (accumulation) of rank
``r`` holds positions ``(a * world + r) * m .. + m``. Each yielded item is
``(dataset index, sample key)``; the key drives the sample's crop, flip, timestep, mask and noise.
"""

from __future__ import annotations

import torch

from ..common import rng
from ..common.errors import ConfigError
from ..common.rng import Tag


def micro_batch_keys(seed: int, step: int, accum_index: int, world: int,
                     rank: int, micro: int) -> list[int]:
    """The sample keys of micro-batch ``accum_index`` of rank ``rank`` at ``step``: positions
    ``(accum_index * world + rank) * micro .. + micro`` of the step's global batch
    (``micro * world * accum`` samples)."""
    first = (accum_index * world + rank) * micro
    return rng.sample_keys(seed, step, 0, first + micro)[first:].tolist()


class StepBatchSampler:
    """Yields micro-batches of ``(index, key)`` for steps ``start_step .. max_steps - 1``."""

    def __init__(self, num_items: int, global_batch: int, accum_steps: int, world_size: int,
                 rank: int, seed: int, start_step: int, max_steps: int):
        if global_batch % (accum_steps * world_size):
            raise ConfigError(f"train.batch_size={global_batch} is not divisible by grad_accum_steps={accum_steps} "
                             f"x processes={world_size}")
        self.n, self.global_batch, self.accum, self.world, self.rank = (num_items, global_batch,
                                                                        accum_steps,
                                                                       world_size, rank)
        self.micro = global_batch // (accum_steps * world_size)
        self.seed, self.start_step, self.max_steps = seed, start_step, max_steps
        self._perm_epoch, self._perm = -1, None

    def _index(self, counter: int) -> int:
        epoch, offset = divmod(counter, self.n)
        if epoch != self._perm_epoch:
            g = torch.Generator().manual_seed(rng.make_key(self.seed, epoch, Tag.EPOCH_PERMUTATION))
            self._perm, self._perm_epoch = torch.randperm(self.n, generator=g).tolist(), epoch
        return self._perm[offset]

    def micro_batch(self, step: int, accum_index: int) -> list[tuple[int, int]]:
        first = (accum_index * self.world + self.rank) * self.micro
        keys = micro_batch_keys(self.seed, step, accum_index, self.world, self.rank, self.micro)
        return [
            (self._index(step * self.global_batch + first + i), keys[i]) for i in range(self.micro)]

    def __iter__(self):
        for step in range(self.start_step, self.max_steps):
            for a in range(self.accum):
                yield self.micro_batch(step, a)

    def __len__(self) -> int:
        return (self.max_steps - self.start_step) * self.accum


def first_items(n: int, num_items: int, global_batch: int,
                seed: int, max_steps: int) -> list[tuple[int, int]]:
    """The ``(index, key)`` of the first ``n`` samples of a run (over all its processes), step by
    step."""
    whole = StepBatchSampler(num_items, global_batch, 1, 1, 0, seed, 0, max_steps)
    steps = range(min(max_steps, -(-n // global_batch)))
    return [item for step in steps for item in whole.micro_batch(step, 0)][:n]
