"""The DiGraph of quantized layers: an edge A -> B when A's output reaches B's input without
passing through another quantized layer.

Rule for joins (a residual add feeding the next conv has several quantized predecessors): the
*previous layer* of B is the predecessor that is deepest in this graph, i.e. the end of the
longest chain of quantized layers from the input (ties: the one executed last). In a ResNet
or MobileNet block that is the last conv of the residual branch, not the shortcut's source or
its 1x1 downsample conv.

A module called at several sites is one layer (one policy entry); its self-edges are dropped.
Such a layer can close a cycle (CoaT shares one positional-encoding conv between the serial
blocks of a stage: A -> shared -> B -> shared): depths are then taken on the DAG of strongly
connected components, so the layers of one cycle share a depth and execution order breaks ties.
Layers inside an untraceable leaf module are chained in execution order; the leaf's inputs
feed its first quantized layer and its last one feeds whatever consumes the leaf.
"""

from __future__ import annotations

from typing import Sequence

import networkx as nx
import torch.fx as fx

from mpqfx.graph.layer_info import META_KEY, LayerInfo


def build_layer_graph(gm: fx.GraphModule, layers: Sequence[LayerInfo]) -> nx.DiGraph:
    """Nodes are layer names (with their LayerInfo as ``info``); edges follow the data flow."""
    graph = nx.DiGraph()
    for info in layers:
        graph.add_node(info.name, info=info)
    inside: dict[str, list[str]] = {}  # leaf module target -> its untraced layers in execution order
    for info in sorted((l for l in layers if not l.traced), key=lambda l: l.order):
        owner = next((n.target for n in gm.graph.nodes if n.op == "call_module" and info.name.startswith(n.target + ".")), None)
        if owner is not None:
            inside.setdefault(owner, []).append(info.name)

    frontier: dict[fx.Node, frozenset[str]] = {}
    for node in gm.graph.nodes:
        incoming = frozenset().union(*(frontier.get(a, frozenset()) for a in node.all_input_nodes))
        site_of = node.meta.get(META_KEY)  # a traced call site (module or functional call) of this layer
        if site_of is not None:
            graph.add_edges_from((p, site_of.name) for p in incoming if p != site_of.name)
            frontier[node] = frozenset({site_of.name})
        elif node.op == "call_module" and node.target in inside:
            chain = inside[node.target]
            graph.add_edges_from((p, chain[0]) for p in incoming)
            graph.add_edges_from(zip(chain, chain[1:]))
            frontier[node] = frozenset({chain[-1]})
        else:
            frontier[node] = incoming
    _set_depths(graph)
    return graph


def _set_depths(graph: nx.DiGraph) -> None:
    dag = nx.condensation(graph)  # one node per strongly connected component (a single layer unless in a cycle)
    for component in nx.topological_sort(dag):
        preds = list(dag.predecessors(component))
        depth = dag.nodes[component]["depth"] = 1 + max((dag.nodes[p]["depth"] for p in preds), default=0)
        for name in dag.nodes[component]["members"]:
            graph.nodes[name]["depth"] = depth


def previous_layer(graph: nx.DiGraph, name: str) -> str | None:
    """The predecessor of ``name`` used to key its Transitional BN (see the module docstring)."""
    preds = list(graph.predecessors(name))
    if not preds:
        return None
    return max(preds, key=lambda p: (graph.nodes[p]["depth"], graph.nodes[p]["info"].order))
