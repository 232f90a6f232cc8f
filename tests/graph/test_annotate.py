"""The annotate pass: kinds, roles, MACs, shapes and activation signedness."""

from __future__ import annotations

import timm
import torch
from torch import nn

import mpqfx
from mpqfx import LayerKind, Role


def test_toy_net_layer_table(toy_net):
    net = mpqfx.prepare(toy_net, example_input=torch.randn(1, 3, 8, 8))
    table = {l.name: l for l in net.layers}
    assert list(table) == ["stem", "dw", "pw", "fc"]
    assert [table[n].kind for n in table] == [LayerKind.CONV, LayerKind.DEPTHWISE, LayerKind.CONV, LayerKind.LINEAR]
    assert [table[n].role for n in table] == [Role.FIRST, Role.NORMAL, Role.NORMAL, Role.LAST]
    # hand counts for one 8x8 sample
    assert table["stem"].macs == 8 * 8 * 8 * 3 * 9
    assert table["dw"].macs == 8 * 8 * 8 * 9  # depthwise: k^2 * C * H * W
    assert table["pw"].macs == 8 * 8 * 8 * 8
    assert table["fc"].macs == 8 * 10
    assert table["dw"].in_shape == (8, 8, 8) and table["fc"].out_shape == (10,)
    assert table["stem"].w_bits == (8,) and table["dw"].w_bits == (3, 4, 5, 6) and table["pw"].a_bits == (2, 3, 4, 5, 6)
    # signedness from the graph: image input signed; ReLU outputs unsigned; residual add of
    # ReLU output and a bare BN output is signed
    assert table["stem"].a_signed and not table["dw"].a_signed and not table["pw"].a_signed
    assert table["fc"].a_signed
    assert all(l.signedness_source == "graph" and l.traced for l in net.layers)
    assert net.graph_module.graph.find_nodes(op="call_module", target="dw")[0].meta["mpqfx_layer"] == table["dw"]


class OpaqueAct(nn.Module):
    """An activation the graph rules do not know: signedness comes from calibration."""

    def forward(self, x):
        return x.clamp_min(0) * 0.5


def test_unknown_producer_falls_back_to_calibration():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), OpaqueAct(), nn.Conv2d(4, 4, 3), nn.Flatten(), nn.Linear(16, 2))
    net = mpqfx.prepare(model, mpqfx.Recipe(graph=mpqfx.recipe.GraphConfig(leaf_modules=("OpaqueAct",))),
                        example_input=torch.randn(1, 3, 6, 6))
    conv = net.layer("2")
    assert conv.signedness_source == "calibration" and not conv.a_signed


def test_signedness_in_timm_blocks():
    net = mpqfx.prepare("efficientnet_lite0", example_input=torch.randn(1, 3, 32, 32))
    # ReLU6 inside BatchNormAct2d: pointwise-expansion outputs are unsigned
    assert not net.layer("blocks.1.0.conv_dw").a_signed
    # the linear bottleneck (bn3 has no activation) feeds the next block's expansion: signed
    assert net.layer("blocks.2.0.conv_pw").a_signed
    vit = mpqfx.prepare(timm.create_model("test_vit", img_size=32), example_input=torch.randn(1, 3, 32, 32))
    assert all(l.a_signed and l.signedness_source == "graph" for l in vit.layers)


def test_overrides_by_pattern_apply_last():
    recipe = mpqfx.Recipe(quant=mpqfx.recipe.QuantConfig(overrides=(
        mpqfx.recipe.BitOverride("blocks.*.conv_dw", w_bits=(5, 6)),
        mpqfx.recipe.BitOverride("classifier", a_bits=(6, 8)),
    )))
    net = mpqfx.prepare("efficientnet_lite0", recipe, example_input=torch.randn(1, 3, 32, 32))
    assert net.layer("blocks.1.0.conv_dw").w_bits == (5, 6)
    assert net.layer("classifier").w_bits == (8,) and net.layer("classifier").a_bits == (6, 8)
    assert net.layer("blocks.1.0.conv_pw").w_bits == (2, 3, 4, 5, 6)


def test_layer_called_twice_counts_both_calls():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 1)
            self.head = nn.Linear(4, 2)

        def forward(self, x):
            return self.head(self.conv(self.conv(x)).mean((2, 3)))

    net = mpqfx.prepare(Twice(), example_input=torch.randn(1, 4, 5, 5))
    assert net.layer("conv").calls == 2 and net.layer("conv").macs == 2 * 5 * 5 * 4 * 4
