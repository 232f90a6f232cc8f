"""ImageFolder trees (ImageNet layout: ``train/<class>/*.jpg`` and ``val/<class>/*.jpg``) with timm's
file discovery and transform factories, input size and normalisation from the model's
``pretrained_cfg``, and images converted to the model's input channels."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image
from timm.data import create_transform, resolve_data_config
from timm.data.readers.reader_image_folder import find_images_and_targets
from timm.utils.misc import natural_key
from torch import nn
from torch.utils.data import Dataset

from mpqfx.data.fashion_mnist import DataError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
MODES = {1: "L", 3: "RGB"}  # input channels -> the PIL mode every image is converted to
UNREADABLE = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)  # what PIL raises on a bad file


class BadImageError(DataError):
    """An image file that cannot be decoded (corrupt, truncated, not an image)."""

    def __init__(self, message: str):
        # a DataLoader worker's error comes back as "Caught ... Original Traceback ...": keep its last line, ours
        if "Traceback" in message:
            message = message.rstrip().splitlines()[-1].split(f"{type(self).__name__}: ", 1)[-1]
        super().__init__(message)


def _classes_of(folder: Path) -> list[str]:
    """The class folders of one split in timm's label order (natural sort, as its reader numbers them)."""
    return sorted((p.name for p in folder.iterdir() if p.is_dir()), key=natural_key)


def class_names(root: str | Path) -> list[str]:
    """The classes of ``root/train`` in label order; a DataError when the tree is malformed."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data directory {str(root)!r} does not exist")
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise DataError(f"{str(root)!r} is not an ImageFolder tree: it has no {split}/ folder "
                            "(expected train/<class>/<image> and val/<class>/<image>)")
    classes = _classes_of(root / "train")
    if not classes:
        raise DataError(f"{str(root / 'train')!r} has no class folders (expected train/<class>/<image>)")
    val_classes = _classes_of(root / "val")
    unmatched = [(c, "train", "val") for c in classes if c not in val_classes]
    unmatched += [(c, "val", "train") for c in val_classes if c not in classes]
    if unmatched:
        name, present, absent = unmatched[0]
        raise DataError(f"{str(root)!r}: class {name!r} is in {present}/ but not in {absent}/ "
                        "(train/ and val/ must hold the same class folders)")
    for split in ("train", "val"):
        empty = [c for c in classes
                 if not any(f.suffix.lower() in IMAGE_SUFFIXES for f in (root / split / c).iterdir())]
        if empty:
            raise DataError(f"{str(root / split)!r}: class folder {empty[0]!r} holds no images "
                            f"({', '.join(sorted(IMAGE_SUFFIXES))})")
    return classes


def load_image(path: str, mode: str) -> Image.Image:
    """The image at ``path`` decoded and converted to ``mode`` (grayscale, CMYK and palette images
    included); a one-line BadImageError naming the file when it cannot be decoded."""
    try:
        with Image.open(path) as image:
            return image.convert(mode)  # convert decodes every pixel: a truncated file fails here
    except UNREADABLE as exc:
        raise BadImageError(f"{path}: cannot read the image ({exc}); --skip-bad-images leaves such files out") from None


@lru_cache(maxsize=None)
def _decodes(path: str, mtime_ns: int, size: int) -> bool:
    try:
        with Image.open(path) as image:
            image.load()
        return True
    except UNREADABLE:
        return False


def decodes(path: str) -> bool:
    """Whether the file at ``path`` decodes as an image (remembered per file version)."""
    stat = Path(path).stat()
    return _decodes(path, stat.st_mtime_ns, stat.st_size)


class ImageFolderSplit(Dataset):
    """One split of an ImageFolder tree as (transformed image, label). The labels (``targets``)
    come from the folder names, so subsets are drawn without decoding an image; the labels follow
    ``classes`` (the train split's), whatever the split holds."""

    def __init__(self, root: str | Path, split: str, classes: list[str], transform: Callable, mode: str):
        index = {name: i for i, name in enumerate(classes)}
        samples, _ = find_images_and_targets(str(Path(root) / split), types=IMAGE_SUFFIXES, class_to_idx=index)
        self.paths = [path for path, _ in samples]
        self.targets = np.array([label for _, label in samples], dtype=np.int64)
        self.classes, self.transform, self.mode = classes, transform, mode

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        return self.transform(load_image(self.paths[index], self.mode)), int(self.targets[index])


def input_channels(model: nn.Module | None) -> int:
    """The channels of the model's input: those of its first 4-d weight (the stem convolution); 3 without a model."""
    return next((p.shape[1] for p in model.parameters() if p.dim() == 4), 3) if model is not None else 3


def data_config(model: nn.Module | None) -> dict[str, Any]:
    """timm's data config of ``model`` (input size, interpolation, normalisation) for its input channels."""
    config = resolve_data_config({}, model=model)
    channels = input_channels(model)
    if channels not in MODES:
        raise DataError(f"ImageFolder images load as 1 (grayscale) or 3 (RGB) channels; the model takes {channels}")
    if channels != config["input_size"][0]:  # a 1-channel model: grayscale, the channels' mean statistics
        config = {**config, "input_size": (channels, *config["input_size"][1:]),
                  "mean": (float(np.mean(config["mean"])),), "std": (float(np.mean(config["std"])),)}
    return config


def imagefolder_split(root: str | Path, split: str, model: nn.Module, train: bool) -> ImageFolderSplit:
    """One split with timm's train (random-resized-crop, flip) or eval (resize, center-crop) transform."""
    config = data_config(model)
    transform = create_transform(**config, is_training=train)
    return ImageFolderSplit(root, split, class_names(root), transform, MODES[config["input_size"][0]])
