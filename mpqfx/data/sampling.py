"""Seeded, class-stratified samples of a labelled data set: every class present, each class's
count within one image of its proportional share, drawn from the labels alone (no image is decoded)."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Subset


def proportional_counts(class_sizes: Sequence[int], count: int) -> np.ndarray:
    """Images per class for a sample of ``count`` of a set with ``class_sizes`` images per class.

    Largest-remainder apportionment in exact integer arithmetic: each class gets the floor or the
    ceiling of ``count * size / total``. When ``count`` allows one image per class, every class that
    has images gets at least one; that minimum comes first, and the classes most above their share
    give up the images it takes.
    """
    sizes = np.asarray(class_sizes, dtype=np.int64)
    total = int(sizes.sum())
    count = min(int(count), total)
    if count <= 0:
        return np.zeros_like(sizes)
    counts = count * sizes // total
    if count >= int((sizes > 0).sum()):
        counts = np.maximum(counts, (sizes > 0).astype(np.int64))
    while counts.sum() < count:  # each time, the class furthest below its share (lowest index on ties)
        excess = count * sizes - counts * total  # (share - count) * total
        counts[int(np.argmax(np.where(counts < sizes, excess, np.iinfo(np.int64).min)))] += 1
    while counts.sum() > count:  # the minimum of one took too many: the class furthest above its share gives one
        excess = count * sizes - counts * total
        counts[int(np.argmin(np.where(counts > 1, excess, np.iinfo(np.int64).max)))] -= 1
    return counts


def stratified_indices(labels: Sequence[int], count: int | None, seed: int,
                       accept: Callable[[int], bool] | None = None) -> tuple[list[int], list[int]]:
    """(kept, rejected) positions of ``labels``: ``proportional_counts`` images of each class (all
    of them when ``count`` is None), each class's drawn in a seeded random order, ascending.

    ``accept`` (optional) is asked about each position in draw order; a rejected one is replaced by
    the next of its class, so only the images drawn are checked.
    """
    labels = np.asarray(labels, dtype=np.int64)
    if count is None and accept is None:
        return list(range(len(labels))), []
    classes = int(labels.max()) + 1 if labels.size else 0
    sizes = np.bincount(labels, minlength=classes)
    positions = np.split(np.argsort(labels, kind="stable"), np.cumsum(sizes)[:-1])  # each class's, ascending
    wanted = sizes if count is None else proportional_counts(sizes, count)
    generator = torch.Generator().manual_seed(seed)
    kept: list[int] = []
    rejected: list[int] = []
    for members, need in zip(positions, wanted):
        order = members[torch.randperm(len(members), generator=generator).numpy()] if count is not None else members
        taken = 0
        for position in order.tolist():
            if taken == need:
                break
            if accept is None or accept(position):
                kept.append(position)
                taken += 1
            else:
                rejected.append(position)
    return sorted(kept), sorted(rejected)


class ClassSubset(Subset):
    """A subset that keeps its labels (``targets``), the class names (``classes``) and the files
    left out as unreadable (``skipped``)."""

    def __init__(self, dataset: Dataset, indices: Sequence[int], skipped: Sequence[str] = ()):
        super().__init__(dataset, list(indices))
        self.targets = np.asarray(dataset.targets, dtype=np.int64)[self.indices]
        self.classes = list(dataset.classes)
        self.skipped = list(skipped)
