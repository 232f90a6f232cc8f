"""Shared fixtures: small models and hand-built toy networks (no downloads: pretrained=False)."""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import timm
import torch
from torch import nn

import mpqfx

if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test` runs two workers on 2 cores: one thread each, subprocesses too
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


class ToyNet(nn.Module):
    """conv3x3 (first) -> BN/ReLU -> depthwise 3x3 -> BN/ReLU -> 1x1 -> BN -> residual add -> pool -> linear (last)."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.pw = nn.Conv2d(8, 8, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        x = torch.relu(self.bn0(self.stem(x)))
        y = torch.relu(self.bn1(self.dw(x)))
        y = self.bn2(self.pw(y))
        x = x + y
        return self.fc(torch.flatten(self.pool(x), 1))


@pytest.fixture
def toy_net() -> ToyNet:
    torch.manual_seed(0)
    return ToyNet().eval()


@pytest.fixture
def toy_input() -> torch.Tensor:
    return torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="session")
def resnet_supernet() -> mpqfx.Supernet:
    """A small timm ResNet rewritten once per session (tests must not change its policy for good)."""
    torch.manual_seed(0)
    return mpqfx.prepare(timm.create_model("test_resnet"), example_input=torch.randn(1, 3, 32, 32)).eval()


def write_idx(path: Path, array) -> None:
    """Write a uint8 array as a gzip IDX file (the format of MNIST / Fashion-MNIST)."""
    import numpy as np

    array = np.asarray(array, dtype=np.uint8)
    header = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.tobytes())


@pytest.fixture(scope="session")
def fashion_dir(tmp_path_factory) -> Path:
    """A Fashion-MNIST-format folder with 600 train / 200 test 28x28 images of 10 learnable classes."""
    import numpy as np

    root = tmp_path_factory.mktemp("fashion")
    rng = np.random.default_rng(0)
    templates = rng.integers(0, 256, (10, 28, 28))
    for split, n, images, labels in (("train", 600, "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
                                     ("test", 200, "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")):
        y = rng.integers(0, 10, n)
        x = np.clip(templates[y] * 0.7 + rng.integers(0, 77, (n, 28, 28)), 0, 255)
        write_idx(root / images, x)
        write_idx(root / labels, y)
    return root


def write_imagefolder(root: Path, train: int = 4, val: int = 2) -> Path:
    """An ImageFolder tree of three classes (daisy, rose, tulip) of ``train``/``val`` 40x48 PNGs each."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", train), ("val", val)):
        for index, name in enumerate(("daisy", "rose", "tulip")):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = np.clip(rng.normal(80 * index + 40, 30, (40, 48, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


@pytest.fixture(name="write_imagefolder", scope="session")
def write_imagefolder_fixture():
    return write_imagefolder
