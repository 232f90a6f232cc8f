"""Fixtures for training tests: a learnable synthetic dataset and small recipes."""

from __future__ import annotations

import dataclasses

import pytest
import timm
import torch
from torch.utils.data import TensorDataset

import mpqfx
from mpqfx import Recipe


def synthetic_dataset(n: int = 256, classes: int = 4, size: int = 16, seed: int = 0) -> TensorDataset:
    """Noisy copies of one fixed random template per class: learnable in a few dozen steps."""
    gen = torch.Generator().manual_seed(seed)
    templates = torch.randn(classes, 3, size, size, generator=gen)
    labels = torch.randint(0, classes, (n,), generator=gen)
    return TensorDataset(templates[labels] + 0.8 * torch.randn(n, 3, size, size, generator=gen), labels)


def small_recipe(name: str, options: dict | None = None, **train) -> Recipe:
    """A shipped recipe shrunk for tests (tiny epochs/batches; strategy options overridable)."""
    recipe = Recipe.load(name)
    base = dict(epochs=2, batch_size=32, log_every=1, checkpoint_every=0, warmup_epochs=0)
    recipe = dataclasses.replace(recipe, train=dataclasses.replace(recipe.train, **{**base, **train}))
    if options:
        recipe = dataclasses.replace(recipe, strategy=dataclasses.replace(
            recipe.strategy, options=dataclasses.replace(recipe.strategy.options, **options)))
    return recipe.check()


def make_net(recipe: Recipe, model: str = "test_resnet", classes: int = 4) -> mpqfx.Supernet:
    torch.manual_seed(0)
    return mpqfx.prepare(timm.create_model(model, num_classes=classes), recipe, example_input=torch.randn(2, 3, 16, 16))


@pytest.fixture(scope="session")
def dataset() -> TensorDataset:
    return synthetic_dataset()


@pytest.fixture(name="small_recipe", scope="session")
def small_recipe_fixture():
    return small_recipe


@pytest.fixture(name="make_net", scope="session")
def make_net_fixture():
    return make_net
