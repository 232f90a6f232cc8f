"""The annotate pass: find every quantizable layer and describe it, without rewriting anything.

A layer is a conv/linear module mpqfx can rewrite (mpqfx/graph/modules.py) together with all
its call sites: ``call_module`` nodes, functional calls on its weight (mpqfx/graph/functional.py)
and calls inside untraced leaf modules. One instrumented forward of an example input
(mpqfx/graph/example_run.py) gives shapes, MACs, execution order and calibration data, and finds
every conv/linear weight left in float with its cost. Results land in
``node.meta["mpqfx_layer"]`` for traced call sites and in the returned tables.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

import torch
import torch.fx as fx
from torch import nn

from mpqfx.graph.example_run import ExampleRun, run_example
from mpqfx.graph.functional import FunctionalCall, functional_calls
from mpqfx.graph.layer_info import META_KEY, MODULE_TYPES, LayerInfo, LayerKind, Role, SkippedLayer
from mpqfx.graph.modules import WEIGHT_MODULE_TYPES, quantizable_reason
from mpqfx.graph.signedness import non_negative
from mpqfx.recipe import QuantConfig

def kind_of(module: nn.Module) -> LayerKind:
    if isinstance(module, nn.Linear):
        return LayerKind.LINEAR
    if module.groups > 1 and module.groups == module.in_channels:
        return LayerKind.DEPTHWISE
    return LayerKind.CONV


def allowed_bits(name: str, kind: LayerKind, role: Role, quant: QuantConfig) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Bit candidates of one layer: recipe defaults, minus depthwise exclusions, first/last fixed, then overrides."""
    w_bits, a_bits = tuple(quant.w_bits), tuple(quant.a_bits)
    if kind is LayerKind.DEPTHWISE:
        w_bits = tuple(b for b in w_bits if b not in quant.depthwise_exclude)
    if role is not Role.NORMAL and quant.first_last_bits is not None:
        w_bits = a_bits = (quant.first_last_bits,)
    for rule in quant.overrides:
        if fnmatch.fnmatchcase(name, rule.pattern):
            w_bits = rule.w_bits if rule.w_bits is not None else w_bits
            a_bits = rule.a_bits if rule.a_bits is not None else a_bits
    return tuple(sorted(w_bits)), tuple(sorted(a_bits))


@dataclass
class Annotation:
    """Output of the annotate pass."""

    layers: list[LayerInfo]
    skipped: list[SkippedLayer]
    sites: dict[str, list[fx.Node]] = field(default_factory=dict)  # traced layer -> its call-site nodes
    functional: dict[fx.Node, FunctionalCall] = field(default_factory=dict)  # functional call sites of layers


def _site_input(node: fx.Node, functional: dict[fx.Node, FunctionalCall]) -> fx.node.Argument:
    return functional[node].input if node in functional else node.args[0]


def _graph_signedness(sites: list[fx.Node], functional: dict[fx.Node, FunctionalCall], gm: fx.GraphModule,
                      memo: dict) -> bool | None:
    """Signed (True) / unsigned (False) input over every call site, from the graph; None if it cannot tell."""
    verdicts = [non_negative(_site_input(n, functional), gm, memo) for n in sites]
    if any(v is False for v in verdicts):
        return True
    if not verdicts or any(v is None for v in verdicts):
        return None
    return False


def _skipped(gm: fx.GraphModule, run: ExampleRun, candidates: set[str], layer_names: set[str],
             reasons: dict[str, str], float_calls: list[FunctionalCall]) -> list[SkippedLayer]:
    """Every conv/linear weight left in float, named by the module that owns it, with its MACs."""
    params = dict(gm.named_parameters())
    call_reason = {c.param: c.reason for c in float_calls}
    entries: dict[str, SkippedLayer] = {}
    for name in sorted(reasons.keys() | (candidates - layer_names)):
        module = gm.get_submodule(name)
        use = run.float_uses.get(f"{name}.weight")
        if name in reasons:
            reason = reasons[name]
        elif use:
            how = call_reason.get(f"{name}.weight") or f"in {'/'.join(sorted(use.ops))}"
            reason = f"its weight is used outside the module's forward ({how}); left in float"
        else:
            reason = "not called on the example input"
        entries[name] = SkippedLayer(name, type(module).__name__, module.weight.numel(), use.macs if use else 0, reason)
    types = gm.meta.get(MODULE_TYPES, {})
    for param, use in sorted(run.float_uses.items()):
        owner_name, _, attr = param.rpartition(".")
        name = owner_name if attr == "weight" and owner_name else param
        if name in entries:
            continue
        owner_type = types.get(owner_name) or type(gm.get_submodule(owner_name)).__name__
        counted = name in layer_names  # the module is a layer too: its weights count there
        why = call_reason.get(param) or f"parameter {attr!r} used in {'/'.join(sorted(use.ops))}"
        entries[name] = SkippedLayer(name + (" (outside its module)" if counted else ""), owner_type,
                                     0 if counted else params[param].numel(), use.macs,
                                     f"{why}; only conv/linear modules are quantized, this use stays float")
    return list(entries.values())


def annotate(gm: fx.GraphModule, example_input: torch.Tensor, quant: QuantConfig) -> Annotation:
    """Describe every quantizable layer of ``gm``; store each traced one's LayerInfo in its node.meta."""
    calls = functional_calls(gm)
    candidates: set[str] = set()
    reasons: dict[str, str] = {}
    for name, module in gm.named_modules():
        if isinstance(module, WEIGHT_MODULE_TYPES):
            reason = quantizable_reason(module)
            if reason is None:
                candidates.add(name)
            else:
                reasons[name] = reason
    functional = {c.node: c for c in calls if c.reason is None and c.owner in candidates}
    sites: dict[str, list[fx.Node]] = {}
    for node in gm.graph.nodes:
        name = functional[node].owner if node in functional else node.target if node.op == "call_module" else None
        if name in candidates:
            sites.setdefault(name, []).append(node)
    run = run_example(gm, candidates, {n: c.owner for n, c in functional.items()}, set(reasons), example_input)
    memo: dict = {}

    called = sorted(run.layers, key=lambda n: run.layers[n].order)
    layers: list[LayerInfo] = []
    for i, name in enumerate(called):
        module, rec = gm.get_submodule(name), run.layers[name]
        role = Role.FIRST if i == 0 else Role.LAST if i == len(called) - 1 else Role.NORMAL
        kind = kind_of(module)
        signed_by_graph = _graph_signedness(sites.get(name, []), functional, gm, memo)
        a_signed = signed_by_graph if signed_by_graph is not None else rec.input_min < 0
        w_bits, a_bits = allowed_bits(name, kind, role, quant)
        info = LayerInfo(
            name=name, kind=kind, module_type=type(module).__name__, macs=rec.macs,
            params=module.weight.numel(), weight_shape=tuple(module.weight.shape),
            in_shape=rec.in_shape, out_shape=rec.out_shape, role=role, a_signed=a_signed,
            signedness_source="graph" if signed_by_graph is not None else "calibration",
            traced=name in sites, w_bits=w_bits, a_bits=a_bits, order=i, calls=rec.calls)
        layers.append(info)
        for node in sites.get(name, []):
            node.meta[META_KEY] = info

    float_calls = [c for c in calls if c.node not in functional]
    skipped = _skipped(gm, run, candidates, set(called), reasons, float_calls)
    return Annotation(layers, skipped, {n: s for n, s in sites.items() if n in run.layers}, functional)
