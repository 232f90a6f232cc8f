"""Fashion-MNIST from the gzip IDX files Debian's ``dataset-fashion-mnist`` installs.

Images are 1-channel 28x28; models get ``in_chans=1``. The files are looked up in
``--data-dir``, else ``$MPQFX_DATA_DIR``, else /usr/share/datasets/fashion-mnist.
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from mpqfx.errors import MpqfxError

DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
         "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
MEAN, STD = (0.2860,), (0.3530,)  # per-pixel statistics of the training split


class DataError(MpqfxError):
    """A data set that is missing or malformed; the message says how to fix it."""


def find_dir(data_dir: str | Path | None = None) -> Path:
    """The folder holding the four IDX files: ``data_dir`` when given, else ``$MPQFX_DATA_DIR``
    when set, else Debian's folder. A folder named explicitly is never replaced by another."""
    named = data_dir or os.environ.get("MPQFX_DATA_DIR")
    candidates = [Path(named)] if named else [DEFAULT_DIR]
    for directory in candidates:
        if all((directory / name).is_file() for pair in FILES.values() for name in pair):
            return directory
    looked = ", ".join(str(c) for c in candidates)
    raise DataError(f"Fashion-MNIST IDX files not found (looked in {looked}); install them with "
                    "`sudo apt-get install dataset-fashion-mnist` or pass --data-dir / set MPQFX_DATA_DIR "
                    f"to a folder holding {', '.join(n for pair in FILES.values() for n in pair)}")


def read_idx(path: Path) -> np.ndarray:
    """An IDX array (gzip or plain), checked against its header."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"cannot read {str(path)!r}: {exc}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 8:
        raise DataError(f"{str(path)!r} is not an unsigned-byte IDX file")
    dims = data[3]
    shape = struct.unpack(f">{dims}I", data[4:4 + 4 * dims])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims)
    if body.size != int(np.prod(shape)):
        raise DataError(f"{str(path)!r} is truncated: header says {shape}, found {body.size} values")
    return body.reshape(shape)


class FashionMNIST(Dataset):
    """One split as (1 x H x W float image, label); ``train=True`` adds random crops and flips."""

    def __init__(self, split: str, data_dir: str | Path | None = None, size: int = 32, train: bool = False,
                 limit: int | None = None):
        directory = find_dir(data_dir)
        images_file, labels_file = FILES[split]
        images = read_idx(directory / images_file)
        labels = read_idx(directory / labels_file)
        if len(images) != len(labels):
            raise DataError(f"{directory}: {len(images)} images but {len(labels)} labels in the {split} split")
        if limit is not None:
            images, labels = images[:limit], labels[:limit]
        self.images = torch.from_numpy(images.copy())
        self.labels = torch.from_numpy(labels.astype(np.int64))
        self.size, self.train = size, train
        self.classes = CLASSES

    @property
    def targets(self) -> np.ndarray:
        """The labels, one per image."""
        return self.labels.numpy()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        x = (self.images[index].float() / 255 - MEAN[0]) / STD[0]
        x = x[None]
        if x.shape[-1] != self.size:
            x = F.interpolate(x[None], size=(self.size, self.size), mode="bilinear", align_corners=False)[0]
        if self.train:
            pad = max(self.size // 16, 1)
            x = F.pad(x, (pad, pad, pad, pad))
            i, j = torch.randint(0, 2 * pad + 1, (2,)).tolist()
            x = x[:, i:i + self.size, j:j + self.size]
            if torch.rand(()) < 0.5:
                x = x.flip(-1)
        return x, int(self.labels[index])
