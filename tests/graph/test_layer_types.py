"""Layer types beyond Conv2d/Linear: weight-standardized convs (timm's StdConv2d, ScaledStdConv2d
and their Same variants, in both padding modes) and Conv1d/Conv3d. For each: bypass equals the
float model, the layer computes with its quantized weight and input at every allowed bit-width,
BitOPs equal a hand count, and gradients reach the latent weights."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from timm.layers import ScaledStdConv2d, ScaledStdConv2dSame, StdConv2d, StdConv2dSame
from timm.layers.padding import pad_same
from torch import nn

import mpqfx
from mpqfx import Policy
from mpqfx.quant.std_conv import MultiBitStdConv2d


def standardized(conv: nn.Module) -> torch.Tensor:
    """Weight standardization by hand: per output channel zero mean, unit (biased) variance, times gain * scale."""
    w = conv.weight.detach()
    flat = w.reshape(w.shape[0], -1)
    mean, var = flat.mean(1, keepdim=True), flat.var(1, unbiased=False, keepdim=True)
    out = ((flat - mean) / torch.sqrt(var + conv.eps)).reshape_as(w)
    gain = getattr(conv, "gain", None)
    return out if gain is None else out * gain.detach() * conv.scale


class StdNet(nn.Module):
    """Every weight-standardized conv type. The Same variants pad statically at stride 1 and per
    input at stride 2 (asymmetric at the odd sizes used here)."""

    def __init__(self, same_stride: int):
        super().__init__()
        self.stem = StdConv2d(3, 8, 3, stride=2)
        self.std_same = StdConv2dSame(8, 8, 3, stride=same_stride, padding="SAME")
        self.scaled = ScaledStdConv2d(8, 8, 3, gain_init=0.5)
        self.scaled_same = ScaledStdConv2dSame(8, 8, 3, stride=same_stride, padding="SAME")
        self.head = nn.Linear(8, 5)
        with torch.no_grad():
            for conv in (self.scaled, self.scaled_same):
                conv.gain.uniform_(0.5, 1.5)

    def forward(self, x):
        x = torch.relu(self.std_same(torch.relu(self.stem(x))))
        x = self.scaled_same(torch.relu(self.scaled(x)))
        return self.head(x.mean((2, 3)))


@pytest.mark.parametrize("same_stride", [1, 2], ids=["static-same", "dynamic-same"])
def test_std_convs_quantize_the_standardized_weight(same_stride, all_bits_recipe, at_every_bit,
                                                    assert_gradients_reach_latent_weights):
    torch.manual_seed(0)
    model = StdNet(same_stride).eval()
    x = torch.randn(2, 3, 19, 19)
    net = mpqfx.prepare(model, all_bits_recipe, example_input=x[:1]).eval()
    assert net.coverage() == 1.0 and not net.skipped
    assert [type(m) for m in net.layer_modules().values()][:4] == [MultiBitStdConv2d] * 4
    for name in ("std_same", "scaled_same"):
        assert net.layer_modules()[name].same_pad is getattr(model, name).same_pad is (same_stride == 2)
    with torch.no_grad():
        torch.testing.assert_close(net(x), model(x), rtol=0, atol=0)

    for name in ("stem", "std_same", "scaled", "scaled_same"):
        conv, module = getattr(model, name), net.layer_modules()[name]
        weight = standardized(conv)
        torch.testing.assert_close(module.float_weight().detach(), weight, rtol=0, atol=1e-5)
        for bits, inp, out in at_every_bit(net, name, x):
            q_w = module.weight_quant(weight, bits.w)
            assert len(torch.unique(q_w)) <= 2 ** bits.w
            q_x = module.act_quant(inp, bits.a)
            if module.same_pad:
                q_x = pad_same(q_x, conv.kernel_size, conv.stride, conv.dilation)
            expected = F.conv2d(q_x, q_w, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)
            torch.testing.assert_close(out, expected, rtol=0, atol=1e-5, msg=f"{name} at {bits}")

    # MACs by hand: output pixels x out channels x in channels x 3 x 3; sizes 19 -> 10 -> 10/s -> 10/s -> 10/s^2
    side = {1: (10, 10, 10), 2: (5, 5, 3)}[same_stride]
    macs = {"stem": 10 * 10 * 8 * 3 * 9, "std_same": side[0] ** 2 * 8 * 8 * 9, "scaled": side[1] ** 2 * 8 * 8 * 9,
            "scaled_same": side[2] ** 2 * 8 * 8 * 9, "head": 8 * 5}
    assert {l.name: l.macs for l in net.layers} == macs
    policy = Policy({"stem": (3, 5), "std_same": (2, 6), "scaled": (4, 4), "scaled_same": (6, 2), "head": (5, 3)})
    assert mpqfx.bitops(net, policy).total == sum(macs[n] * policy[n].w * policy[n].a for n in macs)

    assert_gradients_reach_latent_weights(net, x)
    for name in ("scaled", "scaled_same"):
        assert net.layer_modules()[name].gain.grad.abs().sum() > 0  # the shared gain is trained too


class ConvNdNet(nn.Module):
    """Conv1d (as ECA attention uses it) and Conv3d layers, a depthwise one of each."""

    def __init__(self):
        super().__init__()
        self.c3 = nn.Conv3d(2, 4, 3, padding=1)
        self.dw3 = nn.Conv3d(4, 4, 3, padding=1, groups=4, bias=False)
        self.c1 = nn.Conv1d(4, 6, 3, padding=1)
        self.dw1 = nn.Conv1d(6, 6, 5, padding=2, groups=6)
        self.head = nn.Linear(6, 3)

    def forward(self, x):  # x: (B, 2, 4, 6, 6)
        x = torch.relu(self.dw3(torch.relu(self.c3(x))))  # (B, 4, 4, 6, 6)
        x = x.flatten(3).mean(3)  # (B, 4, 4): a 1-D signal of length 4
        x = self.dw1(torch.relu(self.c1(x)))  # (B, 6, 4)
        return self.head(x.mean(2))


def test_conv1d_and_conv3d_are_multibit_layers(all_bits_recipe, at_every_bit, assert_gradients_reach_latent_weights):
    torch.manual_seed(0)
    model = ConvNdNet().eval()
    x = torch.randn(2, 2, 4, 6, 6)
    net = mpqfx.prepare(model, all_bits_recipe, example_input=x[:1]).eval()
    assert [l.name for l in net.layers] == ["c3", "dw3", "c1", "dw1", "head"] and net.coverage() == 1.0
    assert [l.kind.value for l in net.layers] == ["conv", "depthwise", "conv", "depthwise", "linear"]
    with torch.no_grad():
        torch.testing.assert_close(net(x), model(x), rtol=0, atol=0)

    for name, conv_fn in (("c3", F.conv3d), ("dw3", F.conv3d), ("c1", F.conv1d), ("dw1", F.conv1d)):
        conv, module = getattr(model, name), net.layer_modules()[name]
        for bits, inp, out in at_every_bit(net, name, x):
            expected = conv_fn(module.act_quant(inp, bits.a), module.weight_quant(conv.weight, bits.w), conv.bias,
                               conv.stride, conv.padding, conv.dilation, conv.groups)
            torch.testing.assert_close(out, expected, rtol=0, atol=1e-5, msg=f"{name} at {bits}")

    macs = {"c3": 4 * 6 * 6 * 4 * 2 * 27, "dw3": 4 * 6 * 6 * 4 * 27, "c1": 4 * 6 * 4 * 3, "dw1": 4 * 6 * 5, "head": 6 * 3}
    assert {l.name: l.macs for l in net.layers} == macs
    policy = Policy({"c3": (2, 3), "dw3": (3, 4), "c1": (4, 5), "dw1": (5, 6), "head": (6, 2)})
    assert mpqfx.bitops(net, policy).total == sum(macs[n] * policy[n].w * policy[n].a for n in macs)
    assert_gradients_reach_latent_weights(net, x)
