"""Functional conv/linear calls on a module's weight: EVA/BEiT-style attention with a fused qkv
bias, ``F.linear(x, self.qkv.weight, torch.cat((q_bias, k_bias, v_bias)))``, becomes a call of
the multi-bit qkv with the concatenated bias; a functional call mpqfx cannot rewrite stays float,
named by the module that owns the weight and counted in BitOPs at 32 x 32 with its MACs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mpqfx
from mpqfx import Policy

DIM, HEADS, TOKENS = 16, 2, 4


class FusedBiasAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(DIM, 3 * DIM, bias=False)
        self.q_bias = nn.Parameter(torch.randn(DIM))
        self.register_buffer("k_bias", torch.zeros(DIM), persistent=False)
        self.v_bias = nn.Parameter(torch.randn(DIM))
        self.proj = nn.Linear(DIM, DIM)

    def forward(self, x):
        b, n, c = x.shape
        qkv = F.linear(x, weight=self.qkv.weight, bias=torch.cat((self.q_bias, self.k_bias, self.v_bias)))
        q, k, v = qkv.reshape(b, n, 3, HEADS, c // HEADS).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class RawWeightMlp(nn.Module):
    """A linear whose weight is a bare parameter: there is no module to rewrite."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(DIM, DIM) / 4)

    def forward(self, x):
        return F.linear(x, self.w)


class Net(nn.Module):
    def __init__(self, raw_mlp: bool = False):
        super().__init__()
        self.embed = nn.Linear(8, DIM)
        self.attn = FusedBiasAttention()
        self.mlp = RawWeightMlp() if raw_mlp else nn.Identity()
        self.head = nn.Linear(DIM, 3)

    def forward(self, x):  # x: (B, TOKENS, 8)
        x = self.embed(x)
        x = x + self.attn(x)
        return self.head(self.mlp(x).mean(1))


def test_fused_bias_attention_is_quantized_with_its_bias(all_bits_recipe, at_every_bit,
                                                         assert_gradients_reach_latent_weights):
    torch.manual_seed(0)
    model = Net().eval()
    x = torch.randn(2, TOKENS, 8)
    net = mpqfx.prepare(model, all_bits_recipe, example_input=x[:1]).eval()
    assert [l.name for l in net.layers] == ["embed", "attn.qkv", "attn.proj", "head"]
    assert net.layer("attn.qkv").traced and net.layer("attn.qkv").module_type == "Linear"
    assert net.coverage() == 1.0 and not net.skipped
    with torch.no_grad():
        torch.testing.assert_close(net(x), model(x), rtol=0, atol=0)

    attn, module = model.attn, net.layer_modules()["attn.qkv"]
    bias = torch.cat((attn.q_bias, attn.k_bias, attn.v_bias)).detach()
    for bits, inp, out in at_every_bit(net, "attn.qkv", x):
        expected = F.linear(module.act_quant(inp, bits.a), module.weight_quant(attn.qkv.weight, bits.w), bias)
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-5, msg=f"attn.qkv at {bits}")

    macs = {"embed": TOKENS * DIM * 8, "attn.qkv": TOKENS * 3 * DIM * DIM, "attn.proj": TOKENS * DIM * DIM, "head": 3 * DIM}
    assert {l.name: l.macs for l in net.layers} == macs
    policy = Policy({"embed": (6, 6), "attn.qkv": (2, 5), "attn.proj": (3, 4), "head": (4, 2)})
    assert mpqfx.bitops(net, policy).total == sum(macs[n] * policy[n].w * policy[n].a for n in macs)

    assert_gradients_reach_latent_weights(net, x)
    assert attn.q_bias.grad is None  # the model's own parameters are not the supernet's (a deep copy)
    q_bias = net.graph_module.attn.q_bias
    assert q_bias.grad is not None and q_bias.grad.abs().sum() > 0  # the bias expression is trained too


def test_functional_call_without_a_module_stays_float_at_its_real_cost():
    torch.manual_seed(0)
    model = Net(raw_mlp=True).eval()
    x = torch.randn(2, TOKENS, 8)
    with pytest.warns(UserWarning, match=r"only 82.4% of conv/linear weights are quantized"):
        net = mpqfx.prepare(model, example_input=x[:1]).eval()
    with torch.no_grad():
        torch.testing.assert_close(net(x), model(x), rtol=0, atol=0)
    (skipped,) = net.skipped
    assert skipped.name == "mlp.w" and skipped.module_type == "RawWeightMlp"
    assert skipped.params == DIM * DIM and skipped.macs == TOKENS * DIM * DIM
    assert "not a Linear's weight" in skipped.reason
    quantized = sum(l.params for l in net.layers)
    assert net.coverage() == quantized / (quantized + DIM * DIM)
    policy = Policy.uniform(net, 4)
    report = mpqfx.bitops(net, policy)
    layers_bitops = sum(l.macs * policy[l.name].w * policy[l.name].a for l in net.layers)
    assert report.total == layers_bitops + TOKENS * DIM * DIM * 32 * 32
