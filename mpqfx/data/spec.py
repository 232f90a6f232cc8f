"""What data a run uses, recorded in its ``run.json`` so that search and resume rebuild it."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from mpqfx.data.fashion_mnist import CLASSES, DataError, FashionMNIST, find_dir
from mpqfx.data.imagefolder import class_names, data_config, decodes, imagefolder_split
from mpqfx.data.sampling import ClassSubset, stratified_indices

FASHION_MNIST = "fashion-mnist"
SEARCH_SEED, CALIBRATION_SEED = 1, 2  # the fixed draws of training images: search scoring, BatchNorm re-estimation
SAMPLINGS = ("stratified", "first")  # "first": the first N images, as run.json files without a sampling field mean


@dataclass(frozen=True)
class DataSpec:
    """``fashion-mnist`` (embedded; 1 channel, 10 classes) or an ImageFolder root.

    ``train_limit``/``val_limit`` keep N images of a split (quick runs), a class-stratified sample
    drawn with ``seed`` (every class present, each within one image of its share);
    ``image_size`` is the square Fashion-MNIST input size (None for ImageFolder, which uses the
    model's config); ``skip_bad_images`` leaves out ImageFolder files that do not decode (each
    drawn image is decoded once to check) instead of stopping at the first one.
    """

    name: str
    root: str | None = None
    train_limit: int | None = None
    val_limit: int | None = None
    image_size: int | None = 32
    seed: int = 0
    skip_bad_images: bool = False
    sampling: str = "stratified"

    def __post_init__(self) -> None:
        if self.sampling not in SAMPLINGS:
            raise DataError(f"data sampling: {self.sampling!r} is not one of {', '.join(SAMPLINGS)}")

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
        return cls(**{"sampling": "first", **data})  # a run recorded before stratified subsets keeps its subsets

    def model_kwargs(self) -> dict[str, Any]:
        """What the timm model must be created with for this data."""
        if self.name == FASHION_MNIST:
            return {"in_chans": 1, "num_classes": 10}
        return {"num_classes": len(class_names(self.root))}

    def input_size(self, model: nn.Module) -> tuple[int, int, int]:
        if self.name == FASHION_MNIST:
            return (1, self.image_size, self.image_size)
        return tuple(data_config(model)["input_size"])

    def classes(self) -> list[str]:
        """The class names in label order."""
        return list(CLASSES) if self.name == FASHION_MNIST else class_names(self.root)

    def split(self, split: str, model: nn.Module, train: bool) -> ClassSubset:
        """``split`` is "train" or "val"; ``train`` turns augmentation on. The same images for the
        same spec, whatever ``train`` is."""
        limit = self.train_limit if split == "train" else self.val_limit
        if self.name == FASHION_MNIST:
            dataset = FashionMNIST("train" if split == "train" else "test", self.root, self.image_size, train)
        else:
            dataset = imagefolder_split(self.root, split, model, train)
        if self.sampling == "first":
            return ClassSubset(dataset, range(len(dataset) if limit is None else min(limit, len(dataset))))
        check = self.skip_bad_images and self.name != FASHION_MNIST
        kept, bad = stratified_indices(dataset.targets, limit, self.seed,
                                       accept=(lambda i: decodes(dataset.paths[i])) if check else None)
        return ClassSubset(dataset, kept, skipped=[dataset.paths[i] for i in bad])


def fixed_indices(dataset: Dataset, count: int, seed: int, exclude: Sequence[int] = ()) -> list[int]:
    """``count`` indices of ``dataset`` drawn once (seeded, class-stratified by its ``targets``), in a
    seeded random order, skipping ``exclude`` while enough others remain."""
    skip = set(exclude)
    pool = [i for i in range(len(dataset)) if i not in skip]
    if len(pool) < count:
        pool = list(range(len(dataset)))
    labels = torch.as_tensor(dataset.targets)[pool].tolist()
    drawn, _ = stratified_indices(labels, count, seed)
    order = torch.randperm(len(drawn), generator=torch.Generator().manual_seed(seed)).tolist()
    return [pool[drawn[i]] for i in order]  # mixed classes in every batch (BatchNorm statistics are per batch)


def calibration_indices(train: Dataset, bn_images: int) -> list[int]:
    """The training images BatchNorm statistics are re-estimated on before a policy is evaluated."""
    return fixed_indices(train, bn_images, CALIBRATION_SEED) if bn_images else []


def search_indices(train: Dataset, search_images: int, bn_images: int) -> list[int]:
    """The training images data-driven searches score policies on: others than the calibration
    images, unless the split is too small for both."""
    exclude = calibration_indices(train, bn_images)
    return fixed_indices(train, search_images, SEARCH_SEED, exclude=exclude) if search_images else []


def batches_at(dataset: Dataset, indices: Sequence[int], batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The images of ``dataset`` at ``indices``, in that order, as a list of batches."""
    loader = torch.utils.data.DataLoader(Subset(dataset, list(indices)), batch_size=batch_size, shuffle=False)
    return [(x, y) for x, y in loader]


def fixed_batches(dataset: Dataset, count: int, batch_size: int, seed: int = 0,
                  exclude: Sequence[int] = ()) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``count`` images drawn once (seeded, class-stratified) from ``dataset``, as a list of batches;
    images at the indices ``exclude`` are not drawn unless the data set is too small to leave them out."""
    if len(dataset) == 0:
        raise DataError("the data set is empty")
    return batches_at(dataset, fixed_indices(dataset, count, seed, exclude), batch_size)
