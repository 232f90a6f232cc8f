"""BitOPs and size: the papers' tables for timm models, and exact hand counts on a toy model."""

from __future__ import annotations

import pytest
import torch

import mpqfx
from mpqfx import Policy

# RFQ Tables 2-4 (LSQ rows) and LIMPQ Table 4, in GBitOPs at 224x224, first/last layers at 8 bits.
PAPER_GBITOPS = {
    ("resnet18", 4): 35.0, ("resnet18", 3): 23.0,
    ("mobilenetv2_100", 4): 5.4, ("mobilenetv2_100", 3): 3.4,
    ("efficientnet_lite0", 4): 6.8, ("efficientnet_lite0", 3): 4.2,
    ("mobilenetv1_100", 4): 9.68, ("mobilenetv1_100", 3): 5.78,
}


@pytest.fixture(scope="module", params=sorted({m for m, _ in PAPER_GBITOPS}))
def paper_net(request):
    return request.param, mpqfx.prepare(request.param)


def test_uniform_bitops_match_the_papers_within_two_percent(paper_net):
    name, net = paper_net
    for bits in (4, 3):
        got = mpqfx.bitops(net, Policy.uniform(net, bits)).total / 1e9
        expected = PAPER_GBITOPS[(name, bits)]
        assert got == pytest.approx(expected, rel=0.02), f"{name} {bits}/{bits}: {got:.2f}G vs {expected}G"


def test_toy_model_bitops_and_size_by_hand(toy_net):
    net = mpqfx.prepare(toy_net, example_input=torch.randn(1, 3, 8, 8))
    policy = Policy.uniform(net, 4).replace(dw=(3, 4), pw=(4, 2))
    report = mpqfx.bitops(net, policy)
    stem, dw, pw, fc = 8 * 8 * 8 * 27, 8 * 8 * 8 * 9, 8 * 8 * 8 * 8, 8 * 10
    assert report.total == stem * 64 + dw * 3 * 4 + pw * 4 * 2 + fc * 64
    assert [r["bitops"] for r in report.rows()] == [stem * 64, dw * 12, pw * 8, fc * 64]
    weights = 8 * 27 * 8 + 8 * 9 * 3 + 8 * 8 * 4 + 80 * 8
    others = 10 + 3 * 2 * 8  # fc bias, three BNs' gamma and beta (running stats are buffers)
    assert report.size_bits == weights + 32 * others
    assert mpqfx.model_size(net, policy) == report.size_bits
    assert report.float_size_bits == 32 * sum(p.numel() for p in toy_net.parameters())
    assert report.compression == pytest.approx(report.float_size_bits / report.size_bits)
    assert report.rows()[1] == {"layer": "dw", "kind": "depthwise", "macs": dw, "params": 8 * 9, "w_bits": 3,
                                "a_bits": 4, "bitops": dw * 3 * 4, "weight_bits": 8 * 9 * 3}
    assert [r["layer"] for r in report.rows()] == ["stem", "dw", "pw", "fc"]
    assert report.macs == stem + dw + pw + fc


def test_bitops_from_a_plain_layer_table(toy_net):
    net = mpqfx.prepare(toy_net, example_input=torch.randn(1, 3, 8, 8))
    p = Policy.uniform(net, 5)
    assert mpqfx.bitops(list(net.layers), p).total == mpqfx.bitops(net, p).total
    weights = 8 * 27 * 8 + 8 * 9 * 5 + 8 * 8 * 5 + 80 * 8  # stem and fc at 8 bits
    assert mpqfx.bitops(list(net.layers), p).size_bits == weights  # a table knows no other parameters
    assert mpqfx.bitops(net, Policy.bypass(net)).total == 32 * 32 * sum(l.macs for l in net.layers)


def test_float_layers_count_at_32_bits():
    class Doubling(torch.nn.Conv2d):
        def forward(self, x):
            return super().forward(x) * 2

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), Doubling(4, 4, 1), torch.nn.Flatten(), torch.nn.Linear(4 * 4 * 4, 2))
    with pytest.warns(UserWarning):
        net = mpqfx.prepare(model, example_input=torch.randn(1, 3, 6, 6))
    report = mpqfx.bitops(net, Policy.uniform(net, 4))
    row = next(r for r in report.layers if r.name == "1")
    assert row.macs == 4 * 4 * 4 * 4 and row.bitops == row.macs * 32 * 32


class _ScaledWeightConv(torch.nn.Conv2d):
    """A conv subclass with its own forward: mpqfx keeps its weight in float (a skipped layer)."""

    def forward(self, x):
        return self._conv_forward(x, self.weight / self.weight.norm(), self.bias)


def test_size_with_a_float_kept_layer_by_hand():
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.ReLU(), _ScaledWeightConv(4, 6, 3, padding=1),
                          nn.ReLU(), nn.Conv2d(6, 5, 1), nn.Flatten(), nn.Linear(5 * 4 * 4, 3)).eval()
    with pytest.warns(UserWarning, match="of conv/linear weights are quantized"):
        net = mpqfx.prepare(model, example_input=torch.randn(1, 3, 4, 4))
    assert [s.name for s in net.skipped] == ["2"] and [l.name for l in net.layers] == ["0", "4", "6"]
    policy = Policy.uniform(net, 4).replace(**{"4": (3, 5)})
    report = mpqfx.bitops(net, policy)
    quantized = 4 * 27 * 8 + 5 * 6 * 3 + 3 * 80 * 8  # first and last layers at 8 bits, "4" at 3
    floats = 6 * 4 * 9 + 6 + 5 + 3  # the skipped conv's weight and bias, the other two biases
    assert report.size_bits == quantized + 32 * floats
    assert report.float_size_bits == 32 * (4 * 27 + 6 * 4 * 9 + 6 + 5 * 6 + 5 + 3 * 80 + 3)
    macs = {"0": 16 * 4 * 27, "2": 16 * 6 * 4 * 9, "4": 16 * 5 * 6, "6": 3 * 80}
    assert report.total == macs["0"] * 64 + macs["2"] * 32 * 32 + macs["4"] * 15 + macs["6"] * 64
    assert {r["layer"]: r["kind"] for r in report.rows()}["2"] == "float (_ScaledWeightConv)"
