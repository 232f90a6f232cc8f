"""Which parameters are conv/linear weights, and what the ones left in float cost.

A parameter that multiplies activations in a convolution or matrix product is a conv/linear
weight; others (attention bias tables, position embeddings) are not and never lower coverage.
Weights left in float are named by the module that owns them and count in BitOPs at 32 x 32
with the MACs their module computes, however it is built (subclass, leaf module, functional)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mpqfx
from mpqfx import Policy, Recipe
from mpqfx.recipe import GraphConfig


class BiasTableAttention(nn.Module):
    """TinyViT-style attention: a learned 2-D bias table indexed per head (a leaf: see the recipe below)."""

    def __init__(self, dim: int = 8, tokens: int = 4):
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim)
        self.attention_biases = nn.Parameter(torch.randn(2, 7))
        self.register_buffer("idx", torch.randint(0, 7, (tokens, tokens)), persistent=False)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, 2, c // 2).permute(2, 0, 3, 1, 4).unbind(0)
        attn = (q @ k.transpose(-2, -1)) + self.attention_biases[:, self.idx]
        return (attn.softmax(-1) @ v).transpose(1, 2).reshape(b, n, c)


class ExpertConv(nn.Module):
    """CondConv-style: a per-sample 3x3 kernel mixed from expert weights by a routing linear."""

    def __init__(self, experts: int = 3, cin: int = 4, cout: int = 6):
        super().__init__()
        self.cin, self.cout = cin, cout
        self.route = nn.Linear(cin, experts)
        self.weight = nn.Parameter(torch.randn(experts, cout * cin * 9) / 6)

    def forward(self, x):
        b, _, h, w = x.shape
        mix = torch.sigmoid(self.route(x.mean((2, 3)))) @ self.weight  # (B, cout * cin * 9)
        out = F.conv2d(x.reshape(1, b * self.cin, h, w), mix.view(b * self.cout, self.cin, 3, 3), padding=1, groups=b)
        return out.view(b, self.cout, h, w)


class ScaledWeightConv(nn.Conv2d):
    """A conv subclass with its own forward that transforms its weight: mpqfx cannot rewrite it."""

    def forward(self, x):
        return self._conv_forward(x, self.weight / self.weight.norm(), self.bias)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.expert = ExpertConv()
        self.scaled = ScaledWeightConv(6, 8, 3, padding=1)
        self.attn = BiasTableAttention()
        self.head = nn.Linear(8, 3)

    def forward(self, x):  # (B, 3, 2, 2)
        x = self.scaled(torch.relu(self.expert(torch.relu(self.stem(x)))))
        x = self.attn(x.flatten(2).transpose(1, 2))  # 4 tokens of 8 features
        return self.head(x.mean(1))


def test_float_weights_named_by_owner_and_counted_at_32_bits():
    torch.manual_seed(0)
    model = Net().eval()
    x = torch.randn(3, 3, 2, 2)
    recipe = Recipe(graph=GraphConfig(leaf_modules=("ExpertConv", "BiasTableAttention")))
    with pytest.warns(UserWarning, match="of conv/linear weights are quantized"):
        net = mpqfx.prepare(model, recipe, example_input=x[:2]).eval()
    with torch.no_grad():
        torch.testing.assert_close(net(x), model(x), rtol=0, atol=0)
    assert [l.name for l in net.layers] == ["stem", "expert.route", "attn.qkv", "head"]
    assert not net.layer("expert.route").traced and not net.layer("attn.qkv").traced

    skipped = {s.name: s for s in net.skipped}
    assert sorted(skipped) == ["expert", "scaled"]  # attn.attention_biases is not a conv/linear weight
    expert, scaled = skipped["expert"], skipped["scaled"]
    assert (expert.module_type, expert.params) == ("ExpertConv", 3 * 6 * 4 * 9)
    assert expert.macs == 2 * 2 * 6 * 4 * 9 + 3 * 6 * 4 * 9  # its conv per sample + mixing the experts
    assert (scaled.module_type, scaled.params) == ("ScaledWeightConv", 8 * 6 * 9)
    assert scaled.macs == 2 * 2 * 8 * 6 * 9
    assert "subclasses Conv2d with its own forward" in scaled.reason

    quantized = sum(l.params for l in net.layers)
    assert net.coverage() == quantized / (quantized + expert.params + scaled.params)
    policy = Policy.uniform(net, 4)
    layers_bitops = sum(l.macs * policy[l.name].w * policy[l.name].a for l in net.layers)
    assert mpqfx.bitops(net, policy).total == layers_bitops + (expert.macs + scaled.macs) * 32 * 32
    # bypass counts every layer at 32 x 32: the same cost for float layers and skipped ones
    assert mpqfx.bitops(net, Policy.bypass(net.layers)).total == 32 * 32 * (
        sum(l.macs for l in net.layers) + expert.macs + scaled.macs)
