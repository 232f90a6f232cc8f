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
