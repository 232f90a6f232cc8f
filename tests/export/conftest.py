"""A test_resnet supernet with BatchNorm statistics far from their defaults, so folding matters."""

from __future__ import annotations

import pytest
import timm
import torch

import mpqfx
from mpqfx.supernet import ModelSpec


def _perturbed_supernet(recipe="default") -> mpqfx.Supernet:
    torch.manual_seed(0)
    spec = ModelSpec("test_resnet", {"num_classes": 10})
    net = mpqfx.prepare(timm.create_model(spec.name, **spec.kwargs), recipe, example_input=torch.randn(1, 3, 32, 32),
                        model_spec=spec)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                shape = module.running_mean.shape
                module.running_mean.copy_(0.1 * torch.randn(shape, generator=generator))
                module.running_var.copy_(0.5 + 1.5 * torch.rand(shape, generator=generator))
                module.weight.copy_(1 + 0.3 * torch.randn(shape, generator=generator))  # some channels negative
                module.bias.copy_(0.1 * torch.randn(shape, generator=generator))
    net.eval()
    with torch.no_grad(), net.use_policy(mpqfx.Policy.max(net)):
        for bits in range(2, 9):  # fit every activation step
            net.set_policy(mpqfx.Policy.uniform(net, bits))
            net(_images())
    return net


def _images(n: int = 8) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(2))


@pytest.fixture(scope="module")
def net() -> mpqfx.Supernet:
    return _perturbed_supernet()


@pytest.fixture
def images() -> torch.Tensor:
    return _images()


@pytest.fixture(scope="session")
def perturbed_supernet():
    """Builds a fresh perturbed test_resnet supernet from a recipe."""
    return _perturbed_supernet
