"""The quantized-layer DiGraph and the previous-layer rule at residual joins."""

from __future__ import annotations

import networkx as nx
import torch

import mpqfx
from mpqfx.graph.layer_graph import previous_layer


def test_resnet_previous_layer_is_the_residual_branch_not_the_shortcut():
    net = mpqfx.prepare("resnet18", example_input=torch.randn(1, 3, 32, 32))
    g = net.layer_graph
    assert nx.is_directed_acyclic_graph(g)
    assert set(g.predecessors("layer1.0.conv1")) == {"conv1"}
    # the next block's conv reads relu(bn2(conv2) + shortcut): both branches are predecessors
    assert set(g.predecessors("layer2.0.conv1")) == {"layer1.1.conv2", "layer1.0.conv2", "conv1"}
    assert previous_layer(g, "layer2.0.conv1") == "layer1.1.conv2"
    # after a downsampling block the 1x1 shortcut conv is shallower than conv2
    assert {"layer2.0.conv2", "layer2.0.downsample.0"} <= set(g.predecessors("layer2.1.conv1"))
    assert previous_layer(g, "layer2.1.conv1") == "layer2.0.conv2"
    assert previous_layer(g, "conv1") is None
    assert set(g.predecessors("fc")) >= {"layer4.1.conv2"}


def test_toy_net_edges(toy_net):
    net = mpqfx.prepare(toy_net, example_input=torch.randn(1, 3, 8, 8))
    assert set(net.layer_graph.edges) == {("stem", "dw"), ("dw", "pw"), ("stem", "fc"), ("pw", "fc")}
    assert previous_layer(net.layer_graph, "fc") == "pw"


class SharedPosConv(torch.nn.Module):
    """CoaT-style: one positional-encoding conv shared by two blocks closes a cycle of layers."""

    def __init__(self):
        super().__init__()
        self.stem, self.pos = torch.nn.Conv2d(3, 4, 1), torch.nn.Conv2d(4, 4, 3, padding=1, groups=4)
        self.block1, self.block2 = torch.nn.Conv2d(4, 4, 1), torch.nn.Conv2d(4, 4, 1)
        self.head = torch.nn.Linear(4, 2)

    def forward(self, x):
        x = self.stem(x)
        x = self.block1(x + self.pos(x))
        x = self.block2(x + self.pos(x))
        return self.head(x.mean((2, 3)))


def test_a_layer_shared_by_two_blocks_closes_a_cycle_of_equal_depth():
    torch.manual_seed(0)
    model = SharedPosConv().eval()
    x = torch.randn(2, 3, 5, 5)
    net = mpqfx.prepare(model, example_input=x[:1]).eval()
    g = net.layer_graph
    assert {("pos", "block1"), ("block1", "pos"), ("pos", "block2")} <= set(g.edges)
    assert g.nodes["pos"]["depth"] == g.nodes["block1"]["depth"] == g.nodes["stem"]["depth"] + 1
    assert previous_layer(g, "block2") == "block1"  # same depth as pos: executed last wins
    assert net.layer("pos").calls == 2 and net.layer("pos").macs == 2 * 5 * 5 * 4 * 9
    with torch.no_grad():
        torch.testing.assert_close(net(x), model(x), rtol=0, atol=0)
