"""A small trained supernet and evaluation batches shared by the search tests."""

from __future__ import annotations

import dataclasses

import pytest
import timm
import torch
from torch.utils.data import TensorDataset

import mpqfx
from mpqfx import Recipe
from mpqfx.train import Trainer


@pytest.fixture(scope="session")
def trained():
    """(supernet, evaluation batches, calibration batches) after 2 short epochs of oneshot training."""
    gen = torch.Generator().manual_seed(0)
    templates = torch.randn(4, 3, 16, 16, generator=gen)
    labels = torch.randint(0, 4, (320,), generator=gen)
    images = templates[labels] + 0.8 * torch.randn(320, 3, 16, 16, generator=gen)
    recipe = Recipe.load("oneshot")
    recipe = dataclasses.replace(recipe, train=dataclasses.replace(recipe.train, epochs=2, batch_size=32,
                                                                   warmup_epochs=0)).check()
    torch.manual_seed(0)
    net = mpqfx.prepare(timm.create_model("test_resnet", num_classes=4), recipe, example_input=images[:2])
    Trainer(net, TensorDataset(images[:256], labels[:256]), recipe, progress=False).fit()
    net.eval()
    evaluation = [(images[256:288], labels[256:288]), (images[288:], labels[288:])]
    calibration = [(images[i:i + 32], labels[i:i + 32]) for i in range(0, 64, 32)]
    return net, evaluation, calibration
