"""Helpers for the per-mechanism tests: a layer's input/output at each allowed bit-width, gradients."""

from __future__ import annotations

import itertools
from typing import Callable, Iterator

import pytest
import torch

import mpqfx
from mpqfx import LayerBits, Policy

# recipe without fixed first/last layers: every layer takes every candidate bit-width
ALL_BITS = mpqfx.Recipe(quant=mpqfx.recipe.QuantConfig(first_last_bits=None, depthwise_exclude=()))


def at_every_bit(net: mpqfx.Supernet, name: str, x: torch.Tensor) -> Iterator[tuple[LayerBits, torch.Tensor, torch.Tensor]]:
    """Layer ``name`` at every allowed weight and every allowed activation bit-width (paired in
    order, the shorter list cycled; the other layers at their highest bits): the bits, the layer's
    input and output of its first call in ``net(x)``."""
    info, module = net.layer(name), net.layer_modules()[name]
    others = Policy.max(net)
    n = max(len(info.w_bits), len(info.a_bits))
    for bits in itertools.islice(zip(itertools.cycle(info.w_bits), itertools.cycle(info.a_bits)), n):
        seen: list[tuple[torch.Tensor, torch.Tensor]] = []
        handle = module.register_forward_hook(lambda m, args, out: seen.append((args[0], out)))
        try:
            with torch.no_grad(), net.use_policy(others.replace(**{name: bits})):
                net(x)
        finally:
            handle.remove()
        yield LayerBits(*bits), *seen[0]


def assert_gradients_reach_latent_weights(net: mpqfx.Supernet, x: torch.Tensor, seed: int = 0) -> None:
    """One training step at a sampled policy: every layer's latent weight and active steps get gradients."""
    net.train()
    net.zero_grad()
    net.set_policy(Policy.sample(net, seed))
    net(x).float().square().mean().backward()
    for name, module in net.layer_modules().items():
        bits = net.policy[name]
        assert module.weight.grad is not None and module.weight.grad.abs().sum() > 0, name
        assert module.weight_quant.step(bits.w).grad is not None, name
    net.eval()


@pytest.fixture(name="at_every_bit")
def at_every_bit_fixture() -> Callable:
    return at_every_bit


@pytest.fixture(name="assert_gradients_reach_latent_weights")
def assert_gradients_fixture() -> Callable:
    return assert_gradients_reach_latent_weights


@pytest.fixture(name="all_bits_recipe")
def all_bits_recipe_fixture() -> mpqfx.Recipe:
    return ALL_BITS
