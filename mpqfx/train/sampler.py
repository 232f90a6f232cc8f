"""A sampler that shuffles per epoch from (seed, epoch), shards by rank and can start mid-epoch.

Same order on resume as in an uninterrupted run, without loading the skipped batches.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import Sampler


class EpochSampler(Sampler[int]):
    """Indices of one rank for one epoch; ``set_epoch(epoch, start)`` skips ``start`` samples."""

    def __init__(self, size: int, seed: int, rank: int = 0, world: int = 1):
        self.size, self.seed, self.rank, self.world = size, seed, rank, world
        self.per_rank = size // world  # the tail that does not divide evenly is dropped
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def __iter__(self) -> Iterator[int]:
        gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.size, generator=gen)[: self.per_rank * self.world]
        mine = order[self.rank :: self.world]
        return iter(mine[self.start :].tolist())

    def __len__(self) -> int:
        return max(self.per_rank - self.start, 0)
