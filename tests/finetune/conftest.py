"""A mobilenet-style network and the Fashion-MNIST-format images the fine-tuning tests train on."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mpqfx.data.fashion_mnist import FashionMNIST


class InvertedResidual(nn.Module):
    def __init__(self, channels: int, expand: int):
        super().__init__()
        hidden = channels * expand
        self.expand = nn.Sequential(nn.Conv2d(channels, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, bias=False),
                                nn.BatchNorm2d(hidden), nn.ReLU6())
        self.project = nn.Sequential(nn.Conv2d(hidden, channels, 1, bias=False), nn.BatchNorm2d(channels))

    def forward(self, x):
        return x + self.project(self.dw(self.expand(x)))


class TinyMobile(nn.Module):
    """A mobilenetv2-style network: stem, two inverted residual blocks with adds, pooled linear head."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU6())
        self.blocks = nn.Sequential(InvertedResidual(16, 3), InvertedResidual(16, 3))
        self.head = nn.Linear(16, classes)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))


def split_images(fashion_dir, split: str, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    data = FashionMNIST(split, fashion_dir, size=32, limit=limit)
    images = torch.stack([data[i][0] for i in range(len(data))]).repeat(1, 3, 1, 1)
    return images, data.labels


@pytest.fixture(scope="session")
def tiny_mobile() -> type[nn.Module]:
    return TinyMobile


@pytest.fixture(scope="session")
def fashion_split(fashion_dir):
    """split -> (3-channel 32x32 images, labels) of the session's Fashion-MNIST-format folder."""
    return lambda split, limit=None: split_images(fashion_dir, split, limit)
