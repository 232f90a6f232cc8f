"""What data a run uses, recorded in its ``run.json`` so that search and resume rebuild it."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from mpqfx.data.fashion_mnist import DataError, FashionMNIST, find_dir
from mpqfx.data.imagefolder import class_names, imagefolder_split

FASHION_MNIST = "fashion-mnist"


@dataclass(frozen=True)
class DataSpec:
    """``fashion-mnist`` (embedded; 1 channel, 10 classes) or an ImageFolder root.

    ``train_limit``/``val_limit`` keep the first N images of a split (quick runs);
    ``image_size`` is the square Fashion-MNIST input size (None for ImageFolder, which uses the
    model's config).
    """

    name: str
    root: str | None = None
    train_limit: int | None = None
    val_limit: int | None = None
    image_size: int | None = 32

    @classmethod
    def parse(cls, data: str, data_dir: str | None = None, **limits: Any) -> "DataSpec":
        if data == FASHION_MNIST:
            return cls(FASHION_MNIST, str(find_dir(data_dir)), **limits)
        class_names(data)  # fail early on a malformed tree
        return cls("imagefolder", str(Path(data).resolve()), **{**limits, "image_size": None})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DataSpec":
        return cls(**data)

    def model_kwargs(self) -> dict[str, Any]:
        """What the timm model must be created with for this data."""
        if self.name == FASHION_MNIST:
            return {"in_chans": 1, "num_classes": 10}
        return {"num_classes": len(class_names(self.root))}

    def input_size(self, model: nn.Module) -> tuple[int, int, int]:
        if self.name == FASHION_MNIST:
            return (1, self.image_size, self.image_size)
        from timm.data import resolve_data_config
        return tuple(resolve_data_config({}, model=model)["input_size"])

    def split(self, split: str, model: nn.Module, train: bool) -> Dataset:
        """``split`` is "train" or "val"; ``train`` turns augmentation on."""
        limit = self.train_limit if split == "train" else self.val_limit
        if self.name == FASHION_MNIST:
            return FashionMNIST("train" if split == "train" else "test", self.root, self.image_size, train, limit)
        dataset = imagefolder_split(self.root, split, model, train)
        return Subset(dataset, range(min(limit, len(dataset)))) if limit is not None else dataset


def fixed_indices(size: int, count: int, seed: int, exclude: Sequence[int] = ()) -> list[int]:
    """``count`` indices of ``range(size)`` drawn once (seeded), skipping ``exclude`` while enough others remain."""
    order = torch.randperm(size, generator=torch.Generator().manual_seed(seed)).tolist()
    skip = set(exclude)
    kept = [i for i in order if i not in skip]
    return (kept if len(kept) >= count else order)[:count]


def fixed_batches(dataset: Dataset, count: int, batch_size: int, seed: int = 0,
                  exclude: Sequence[int] = ()) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``count`` images drawn once (seeded) from ``dataset``, as a list of batches; images at the
    indices ``exclude`` are not drawn unless the data set is too small to leave them out."""
    if len(dataset) == 0:
        raise DataError("the data set is empty")
    order = fixed_indices(len(dataset), count, seed, exclude)
    loader = torch.utils.data.DataLoader(Subset(dataset, order), batch_size=batch_size, shuffle=False)
    return [(x, y) for x, y in loader]
