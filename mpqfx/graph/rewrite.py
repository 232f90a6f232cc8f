"""The rewrite pass: conv/linear layers become weight-shared multi-bit layers and the BatchNorms
right after quantized convs become Transitional BatchNorms.

Layers at traced call sites are swapped in the GraphModule; their functional call sites
(``F.linear(x, self.qkv.weight, bias)``) become calls of the multi-bit module with the call's
bias. Layers inside untraceable leaf modules are swapped inside the leaf, so they are
quantized too (``LayerInfo.traced=False``).
"""

from __future__ import annotations

import itertools
from typing import Sequence

import networkx as nx
import torch.fx as fx
from timm.layers import BatchNormAct2d
from torch import nn

from mpqfx.graph.functional import FunctionalCall, to_module_call
from mpqfx.graph.layer_graph import previous_layer
from mpqfx.graph.layer_info import META_KEY, LayerInfo
from mpqfx.graph.modules import to_multibit
from mpqfx.quant.transitional_bn import TransitionalBatchNorm, switch_key, transition_key
from mpqfx.recipe import BnMode, QuantConfig

BN_TYPES = (nn.BatchNorm2d, BatchNormAct2d)


def set_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, new)


def _bn_keys(mode: BnMode, info: LayerInfo, prev: LayerInfo | None) -> list[str]:
    if mode is BnMode.SWITCHABLE:
        return [switch_key(w, a) for w, a in itertools.product(info.w_bits, info.a_bits)]
    prev_bits = [None] if prev is None else prev.w_bits
    return [transition_key(p, w) for p, w in itertools.product(prev_bits, info.w_bits)]


def rewrite(gm: fx.GraphModule, layers: Sequence[LayerInfo], sites: dict[str, list[fx.Node]],
            functional: dict[fx.Node, FunctionalCall], layer_graph: nx.DiGraph, quant: QuantConfig) -> fx.GraphModule:
    """Swap every layer in ``layers`` for its multi-bit version (``sites``: the traced call sites
    of each, ``functional``: those that are functional calls) and specialise following BNs."""
    bn_mode = quant.bn
    bn_matches: list[tuple[str, LayerInfo]] = []
    if bn_mode is not BnMode.SHARED:
        for node in gm.graph.nodes:
            src = node.args[0] if node.op == "call_module" and node.args else None
            info = src.meta.get(META_KEY) if isinstance(src, fx.Node) else None
            if info is not None and type(gm.get_submodule(node.target)) in BN_TYPES:
                bn_matches.append((node.target, info))

    for info in layers:
        module = to_multibit(gm.get_submodule(info.name), info.w_bits, info.a_bits, info.a_signed, quant.weight_quantizer)
        inputs = [functional[n].input if n in functional else n.args[0] for n in sites.get(info.name, [])]
        if inputs and all(isinstance(x, fx.Node) and x.op == "placeholder" for x in inputs):
            # The quantizer of the raw network input is calibrated on the first batch and kept
            # fixed: learning it would cost the first conv a full input-gradient pass.
            module.act_quant.steps.requires_grad_(False)
        set_submodule(gm, info.name, module)
    for call in functional.values():
        to_module_call(gm, call)
    by_name = {l.name: l for l in layers}
    for bn_name, info in bn_matches:
        prev = previous_layer(layer_graph, info.name)
        keys = _bn_keys(bn_mode, info, by_name.get(prev) if prev else None)
        set_submodule(gm, bn_name, TransitionalBatchNorm(gm.get_submodule(bn_name), bn_mode, keys, info.name, prev))
    gm.graph.lint()
    gm.recompile()
    return gm
