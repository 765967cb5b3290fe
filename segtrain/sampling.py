"""Which images train together: a seeded, resumable stream of batches made of orientation-grouped passes.

The stream of one rank is epochs of :class:`torch.utils.data.DistributedSampler` (this rank's
share of a fresh permutation per epoch), read across epoch boundaries. Item ``k`` of the stream
gets its own augmentation seed, a function of ``(seed, rank, k)`` only.

Passes are built from that stream as detectron2's ``AspectRatioGroupedDataset`` builds a GPU's
batch: items go into one bucket per orientation group (landscape ``w > h``, or not) and a
bucket that holds ``per_pass`` items becomes a pass. A batch is the next ``batch_size /
per_pass`` passes. Without groups a pass is simply the next ``per_pass`` items (the old
behaviour, kept for the benchmark's reference).

Everything is a pure function of the configuration, so a run resumed at iteration ``i`` gets the
batches an uninterrupted run would have had (the stream is replayed from the start without
loading anything; a million items take about a second).
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
from torch.utils.data import DistributedSampler, Sampler


def orientation(width: int, height: int) -> int:
    """detectron2's two aspect-ratio groups: 0 for landscape (``w > h``), 1 otherwise."""
    return 0 if width > height else 1


def item_seed(seed: int, rank: int, position: int) -> int:
    """The augmentation seed of stream position ``position`` of ``rank``."""
    return int(np.random.SeedSequence([seed, rank, position]).generate_state(1)[0])


def pass_slices(n: int, per_pass: int) -> list[slice]:
    """Consecutive passes of ``per_pass`` items over a batch of ``n`` (the last may be shorter)."""
    return [slice(s, min(s + per_pass, n)) for s in range(0, n, per_pass)]


class ResumableBatchSampler(Sampler):
    """Endless batches of ``(index, seed)`` for one rank, starting at iteration ``start_iter``.

    A batch is a flat list of ``batch_size`` items; its consecutive runs of ``per_pass`` items
    are the passes (all of one orientation group when ``groups`` is given).

    Args:
        num_items: size of the dataset.
        batch_size: items per batch of this rank (a multiple of ``per_pass``).
        per_pass: items per pass (default: the whole batch).
        groups: group id of every item (e.g. :func:`orientation`), or ``None`` for no grouping.
    """

    def __init__(self, num_items: int, batch_size: int, *, seed: int = 0, rank: int = 0, world_size: int = 1,
                 start_iter: int = 0, per_pass: int | None = None, groups: Sequence[int] | None = None) -> None:
        self.per_pass = per_pass or batch_size
        if batch_size % self.per_pass:
            raise ValueError(f"a batch of {batch_size} does not split into passes of {self.per_pass}")
        if groups is not None and len(groups) != num_items:
            raise ValueError("groups must give one group per item")
        self.n, self.batch_size, self.seed = num_items, batch_size, seed
        self.rank, self.world, self.start_iter = rank, world_size, start_iter
        self.groups = None if groups is None else list(groups)
        self._epoch_sampler = DistributedSampler(range(num_items), num_replicas=world_size, rank=rank,
                                                 shuffle=True, seed=seed, drop_last=False)
        self.per_epoch = len(self._epoch_sampler)

    def _positions(self) -> Iterator[tuple[int, int]]:
        """``(position, index)`` of the stream from its start."""
        epoch, pos = 0, 0
        while True:
            self._epoch_sampler.set_epoch(epoch)
            for index in self._epoch_sampler:
                yield pos, index
                pos += 1
            epoch += 1

    def _passes(self) -> Iterator[list[tuple[int, int]]]:
        """``(position, index)`` passes from the stream's start."""
        if self.groups is None:
            stream = self._positions()
            while True:
                yield [next(stream) for _ in range(self.per_pass)]
        buckets: dict[int, list[tuple[int, int]]] = {}
        for pos, index in self._positions():
            bucket = buckets.setdefault(self.groups[index], [])
            bucket.append((pos, index))
            if len(bucket) == self.per_pass:
                yield bucket
                buckets[self.groups[index]] = []

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        passes = self._passes()
        per_batch = self.batch_size // self.per_pass
        for _ in range(self.start_iter * per_batch):  # replay to the resume point
            next(passes)
        while True:
            batch = [item for _ in range(per_batch) for item in next(passes)]
            yield [(index, item_seed(self.seed, self.rank, pos)) for pos, index in batch]
