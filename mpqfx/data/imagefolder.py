"""ImageFolder trees (ImageNet layout: ``train/<class>/*.jpg`` and ``val/<class>/*.jpg``) through
timm's dataset and transform factories, with input size and normalisation from the model's
``pretrained_cfg``."""

from __future__ import annotations

from pathlib import Path

from timm.data import create_dataset, create_transform, resolve_data_config
from torch import nn
from torch.utils.data import Dataset

from mpqfx.data.fashion_mnist import DataError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


def class_names(root: str | Path) -> list[str]:
    """The classes of ``root/train``; a DataError when the tree is malformed."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data directory {str(root)!r} does not exist")
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise DataError(f"{str(root)!r} is not an ImageFolder tree: it has no {split}/ folder "
                            "(expected train/<class>/<image> and val/<class>/<image>)")
    classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"{str(root / 'train')!r} has no class folders (expected train/<class>/<image>)")
    empty = [c for c in classes if not any(f.suffix.lower() in IMAGE_SUFFIXES for f in (root / "train" / c).iterdir())]
    if empty:
        raise DataError(f"{str(root / 'train')!r}: class folder {empty[0]!r} holds no images")
    val_classes = sorted(p.name for p in (root / "val").iterdir() if p.is_dir())
    if val_classes != classes:
        raise DataError(f"{str(root)!r}: val/ classes {val_classes[:3]}... differ from train/ classes {classes[:3]}...")
    return classes


def imagefolder_split(root: str | Path, split: str, model: nn.Module, train: bool) -> Dataset:
    """One split with timm's train (random-resized-crop, flip) or eval (resize, center-crop) transform."""
    config = resolve_data_config({}, model=model)
    dataset = create_dataset("", root=str(root), split=split, is_training=train)
    dataset.transform = create_transform(**config, is_training=train)
    return dataset
