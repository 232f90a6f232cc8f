"""The annotate pass: find every quantizable layer and describe it, without rewriting anything.

One instrumented forward of an example input (``ShapeProp``, plus forward hooks for layers
inside untraceable leaf modules) gives shapes, MACs, execution order and calibration data.
Results land in ``node.meta["mpqfx_layer"]`` for traced call sites and in the returned tables.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Iterable

import torch
import torch.fx as fx
import torch.nn.functional as F
from timm.layers import Conv2dSame
from timm.layers import Linear as TimmLinear
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from mpqfx.graph.layer_info import LayerInfo, LayerKind, Role, SkippedLayer
from mpqfx.graph.signedness import non_negative
from mpqfx.recipe import QuantConfig

META_KEY = "mpqfx_layer"
FUNCTIONAL_WEIGHT_OPS = {F.conv1d, F.conv2d, F.conv3d, F.linear, torch.conv2d, torch.conv1d}


def _keeps_forward(module: nn.Module, base: type) -> bool:
    cls = type(module)
    if base is nn.Conv2d:
        return cls.forward is nn.Conv2d.forward and cls._conv_forward is nn.Conv2d._conv_forward
    return cls.forward is base.forward


def quantizable_reason(module: nn.Module) -> str | None:
    """None if mpqfx can rewrite ``module``; otherwise why it stays float.

    Exact ``nn.Conv2d``/``nn.Linear`` and subclasses that keep their forward are rewritten, and
    timm's ``Conv2dSame`` (with its own padding semantics) and ``Linear`` (an AMP dtype cast
    around ``F.linear``); any other subclass has a forward of its
    own that a rewrite would silently change, so it is reported instead.
    """
    if type(module) in (Conv2dSame, TimmLinear):  # TimmLinear only casts weights to the input dtype
        return None
    for base in (nn.Conv2d, nn.Linear):
        if isinstance(module, base):
            if _keeps_forward(module, base):
                return None
            return f"{type(module).__name__} subclasses {base.__name__} with its own forward; not rewritten"
    return f"{type(module).__name__} is not supported (only Conv2d and Linear are quantized)"


def macs_per_call(module: nn.Module, out: torch.Tensor) -> int:
    """MACs of one call for one sample: out elements x (in/groups x kh x kw) or x in_features."""
    per_sample_out = out[0].numel()
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return per_sample_out * (module.in_channels // module.groups) * kh * kw
    if isinstance(module, nn.Linear):
        return per_sample_out * module.in_features
    return 0


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
class _Observed:
    order: int
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    macs: int = 0
    calls: int = 0
    input_min: float = float("inf")


@dataclass
class Annotation:
    """Output of the annotate pass."""

    layers: list[LayerInfo]
    skipped: list[SkippedLayer]
    nodes: dict[str, fx.Node] = field(default_factory=dict)  # traced layers: name -> call_module node


def _candidate_modules(gm: fx.GraphModule) -> tuple[dict[str, bool], dict[str, str], list[SkippedLayer]]:
    """Names of conv/linear modules to quantize (-> traced?) and of those skipped (-> reason)."""
    traced_targets = {n.target for n in gm.graph.nodes if n.op == "call_module"}
    candidates: dict[str, bool] = {}
    skipped: dict[str, str] = {}
    for name, module in gm.named_modules():
        if not isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.Linear)):
            continue
        reason = quantizable_reason(module)
        if reason is None:
            candidates[name] = name in traced_targets
        else:
            skipped[name] = reason
    functional: list[SkippedLayer] = []
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target in FUNCTIONAL_WEIGHT_OPS:
            weight = node.args[1] if len(node.args) > 1 else node.kwargs.get("weight")
            params = _attr_numel(gm, weight)
            functional.append(SkippedLayer(node.name, getattr(node.target, "__name__", str(node.target)), params, 0,
                                           "functional conv/linear call in forward(); no module to rewrite"))
        elif (node.op == "call_module" and node.target not in candidates and node.target not in skipped
              and not type(gm.get_submodule(node.target)).__module__.startswith("torch.nn")):
            own = _own_matrix_params(gm.get_submodule(node.target), candidates, skipped, node.target)
            if own:
                functional.append(SkippedLayer(node.target, type(gm.get_submodule(node.target)).__name__, own, 0,
                                               "untraced leaf module with weights of its own; left in float"))
    return candidates, skipped, functional


def _attr_numel(gm: fx.GraphModule, arg: object) -> int:
    if isinstance(arg, fx.Node) and arg.op == "get_attr":
        value = gm
        for part in str(arg.target).split("."):
            value = getattr(value, part)
        return value.numel()
    return 0


def _own_matrix_params(module: nn.Module, candidates: dict, skipped: dict, prefix: str) -> int:
    """Parameters (2-D or more) of a leaf module that no conv/linear submodule owns."""
    owned = set()
    for name, sub in module.named_modules(prefix=prefix):
        if name in candidates or name in skipped:
            owned.update(id(p) for p in sub.parameters())
    return sum(p.numel() for p in module.parameters() if p.dim() >= 2 and id(p) not in owned)


def _observe(gm: fx.GraphModule, names: Iterable[str], example_input: torch.Tensor) -> dict[str, _Observed]:
    observed: dict[str, _Observed] = {}

    def hook(name):
        def fn(module, args, out):
            x = args[0]
            rec = observed.get(name)
            if rec is None:
                rec = observed[name] = _Observed(len(observed), tuple(x.shape[1:]), tuple(out.shape[1:]))
            rec.calls += 1
            rec.macs += macs_per_call(module, out)
            rec.input_min = min(rec.input_min, float(x.detach().min()))
        return fn

    handles = [gm.get_submodule(n).register_forward_hook(hook(n)) for n in names]
    was_training = gm.training
    try:
        gm.eval()
        with torch.no_grad():
            ShapeProp(gm).propagate(example_input)
    finally:
        gm.train(was_training)
        for h in handles:
            h.remove()
    return observed


def annotate(gm: fx.GraphModule, example_input: torch.Tensor, quant: QuantConfig) -> Annotation:
    """Describe every quantizable layer of ``gm``; store each traced one's LayerInfo in its node.meta."""
    candidates, skip_reasons, functional = _candidate_modules(gm)
    observed = _observe(gm, list(candidates) + list(skip_reasons), example_input)
    nodes = {n.target: n for n in gm.graph.nodes if n.op == "call_module" and n.target in candidates}
    memo: dict = {}

    called = sorted((n for n in candidates if n in observed), key=lambda n: observed[n].order)
    layers: list[LayerInfo] = []
    for i, name in enumerate(called):
        module, rec = gm.get_submodule(name), observed[name]
        role = Role.FIRST if i == 0 else Role.LAST if i == len(called) - 1 else Role.NORMAL
        kind = kind_of(module)
        signed_by_graph = None
        if name in nodes:
            verdict = non_negative(nodes[name].args[0], gm, memo)
            signed_by_graph = None if verdict is None else not verdict
        a_signed = signed_by_graph if signed_by_graph is not None else rec.input_min < 0
        w_bits, a_bits = allowed_bits(name, kind, role, quant)
        info = LayerInfo(
            name=name, kind=kind, module_type=type(module).__name__, macs=rec.macs,
            params=module.weight.numel(), weight_shape=tuple(module.weight.shape),
            in_shape=rec.in_shape, out_shape=rec.out_shape, role=role, a_signed=a_signed,
            signedness_source="graph" if signed_by_graph is not None else "calibration",
            traced=candidates[name], w_bits=w_bits, a_bits=a_bits, order=i, calls=rec.calls)
        layers.append(info)
        if name in nodes:
            nodes[name].meta[META_KEY] = info

    skipped = [SkippedLayer(n, type(gm.get_submodule(n)).__name__, gm.get_submodule(n).weight.numel(),
                            observed[n].macs if n in observed else 0, reason)
               for n, reason in skip_reasons.items()]
    skipped += [SkippedLayer(n, type(gm.get_submodule(n)).__name__, gm.get_submodule(n).weight.numel(), 0,
                             "not called on the example input") for n in candidates if n not in observed]
    return Annotation(layers, skipped + functional, nodes)
