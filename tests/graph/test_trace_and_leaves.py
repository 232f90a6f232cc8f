"""Untraceable models: a clear error, the recipe key that fixes it, and layers inside leaves still quantized."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import mpqfx
from mpqfx import Policy, Recipe, UntraceableModelError
from mpqfx.recipe import GraphConfig


class DataDependent(nn.Module):
    """Python control flow on tensor values: torch.fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        if x.mean() > 0:
            return torch.relu(self.conv(x))
        return self.conv(-x)


class NetWithDynamicBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.block = DataDependent()
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        x = self.block(self.stem(x))
        return self.head(x.mean((2, 3)))


class DynamicRoot(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        for _ in range(int(x.shape[0])):
            x = x * 1
        if x.sum() > 0:
            return self.conv(x)
        return x


def test_untraceable_module_is_named_with_the_fixing_recipe_key():
    with pytest.raises(UntraceableModelError) as info:
        mpqfx.prepare(NetWithDynamicBlock(), example_input=torch.randn(1, 3, 8, 8))
    message = str(info.value)
    assert "'block' (DataDependent)" in message
    assert "graph.leaf_modules" in message and "leaf_modules: ['block']" in message


def test_untraceable_root_says_leaf_modules_cannot_help():
    with pytest.raises(UntraceableModelError, match=r"DynamicRoot.forward itself.*submodule"):
        mpqfx.prepare(DynamicRoot(), example_input=torch.randn(1, 3, 8, 8))


@pytest.mark.parametrize("leaf", ["block", "DataDependent", "bl*"])
def test_leaf_module_from_recipe_keeps_its_convs_quantized(leaf):
    torch.manual_seed(0)
    model = NetWithDynamicBlock().eval()
    recipe = Recipe(graph=GraphConfig(leaf_modules=(leaf,)))
    x = torch.randn(2, 3, 8, 8)
    net = mpqfx.prepare(model, recipe, example_input=x[:1]).eval()
    inner = net.layer("block.conv")
    assert not inner.traced and net.layer("stem").traced
    assert [l.name for l in net.layers] == ["stem", "block.conv", "head"]
    assert net.coverage() == 1.0
    assert "untraced: block.conv" in net.describe()
    with torch.no_grad():
        torch.testing.assert_close(net(x), model(x), rtol=0, atol=1e-6)
        net.set_policy(Policy.uniform(net, 2))
        assert not torch.allclose(net(x), model(x), atol=1e-3)  # the untraced conv really quantizes
    assert net.layer_graph.has_edge("stem", "block.conv") and net.layer_graph.has_edge("block.conv", "head")


class CustomConv(nn.Conv2d):
    def forward(self, x):
        return super().forward(x) * 2


class PlainSubclass(nn.Conv2d):
    """Keeps nn.Conv2d's forward: safe to rewrite."""


def test_conv_subclasses_with_own_forward_are_reported_not_silently_changed():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), CustomConv(4, 4, 1), PlainSubclass(4, 4, 1), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    with pytest.warns(UserWarning, match="quantized"):
        net = mpqfx.prepare(model, example_input=torch.randn(1, 3, 8, 8))
    assert [s.name for s in net.skipped] == ["1"]
    assert "CustomConv subclasses Conv2d with its own forward" in net.skipped[0].reason
    assert "2" in [l.name for l in net.layers]
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(net(x), model(x), rtol=0, atol=1e-6)
