"""Untraceable models: a clear error, the recipe key that fixes it, and layers inside leaves still quantized."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
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


class MaskedModel(nn.Module):
    """Hiera-style: ``forward(x, mask=None)`` returns features without the head when a mask is given."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Linear(8, 4)

    def forward(self, x, mask=None, pre_logits: bool = False):
        x = self.stem(x)
        if mask is not None:
            return x * mask.unsqueeze(1)
        x = x.mean((2, 3))
        return x if pre_logits else self.head(x)


def test_defaulted_forward_arguments_are_pinned(all_bits_recipe, at_every_bit, assert_gradients_reach_latent_weights):
    torch.manual_seed(0)
    model = MaskedModel().eval()
    x = torch.randn(2, 3, 6, 6)
    net = mpqfx.prepare(model, all_bits_recipe, example_input=x[:1]).eval()
    assert [l.name for l in net.layers] == ["stem", "head"] and net.coverage() == 1.0  # the head is kept
    with torch.no_grad():
        torch.testing.assert_close(net(x), model(x), rtol=0, atol=0)
        with pytest.raises(AssertionError, match="mask has been specialized to have value None"):
            net(x, torch.ones(2, 6, 6))

    for name, fn in (("stem", lambda m, q_x, q_w: F.conv2d(q_x, q_w, m.bias, padding=1)),
                     ("head", lambda m, q_x, q_w: F.linear(q_x, q_w, m.bias))):
        layer, module = getattr(model, name), net.layer_modules()[name]
        for bits, inp, out in at_every_bit(net, name, x):
            expected = fn(layer, module.act_quant(inp, bits.a), module.weight_quant(layer.weight, bits.w))
            torch.testing.assert_close(out, expected, rtol=0, atol=1e-5, msg=f"{name} at {bits}")
    macs = {"stem": 6 * 6 * 8 * 3 * 9, "head": 8 * 4}  # output pixels x out x in x 3 x 3; in x out
    assert {l.name: l.macs for l in net.layers} == macs
    policy = Policy({"stem": (3, 5), "head": (2, 6)})
    assert mpqfx.bitops(net, policy).total == 6 * 6 * 8 * 3 * 9 * 3 * 5 + 8 * 4 * 2 * 6
    assert_gradients_reach_latent_weights(net, x)


def test_failure_in_the_example_forward_names_op_and_recipe_keys():
    recipe = Recipe(graph=GraphConfig(traced_args=("mask",)))  # traced as an input, the mask branch is taken
    with pytest.raises(UntraceableModelError) as info:
        mpqfx.prepare(MaskedModel(), recipe, example_input=torch.randn(1, 3, 6, 6))
    message = str(info.value)
    assert message.startswith("cannot run unsqueeze (call_method) of MaskedModel.forward on the example input [1, 3, 6, 6]: "
                              "AttributeError: 'NoneType' object has no attribute 'unsqueeze'")
    assert "graph.input_size" in message and "graph.traced_args" in message and "\n" not in message


def test_traced_args_must_be_forward_arguments():
    with pytest.raises(mpqfx.RecipeError, match=r"graph.traced_args: \['masks'\] are not arguments of MaskedModel"):
        mpqfx.prepare(MaskedModel(), Recipe(graph=GraphConfig(traced_args=("masks",))), example_input=torch.randn(1, 3, 6, 6))


class BadShape(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(8, 8)

    def forward(self, x):
        return self.proj(x.flatten(1)[:, :5])  # 5 features into an 8-feature linear


def test_failure_inside_a_module_names_it_and_the_leaf_key():
    model = nn.Sequential(nn.Conv2d(3, 2, 1), BadShape())
    with pytest.raises(UntraceableModelError) as info:
        mpqfx.prepare(model, example_input=torch.randn(1, 3, 2, 2))
    message = str(info.value)
    assert "cannot run 1.proj (call_module) in module '1.proj' (Linear) of Sequential on the example input" in message
    assert "graph.input_size" in message and "leaf_modules: ['1.proj']" in message
