"""Functional conv/linear calls on a module's own weight, e.g. EVA/BEiT attention's
``F.linear(x, self.qkv.weight, torch.cat((q_bias, k_bias, v_bias)))``.

Such a call computes what the module computes, with a bias of its own: annotate treats it as
a call site of the module (one layer, MACs added over its sites), and rewrite turns it into a
call of the multi-bit module with the call's bias expression, ``self.qkv(x, bias=...)``.
Calls that differ from the module's computation (another stride, a standardized or
dynamically padded conv, a parameter that is not a conv/linear module's weight) stay float and
are reported with the reason (see ``mpqfx.graph.example_run`` for how their cost is counted).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _ntuple

from mpqfx.graph.layer_info import MODULE_TYPES
from mpqfx.graph.modules import computes_with_latent_weight

CONV_OPS = {F.conv1d: 1, F.conv2d: 2, F.conv3d: 3}  # F.conv2d is torch.conv2d



def _signature(**defaults: object) -> inspect.Signature:
    """F.linear's / F.conv*d's signature: input, weight, then the arguments with defaults."""
    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    return inspect.Signature([inspect.Parameter(n, kind) for n in ("input", "weight")]
                             + [inspect.Parameter(n, kind, default=d) for n, d in defaults.items()])


SIGNATURES = {F.linear: _signature(bias=None)} | {
    op: _signature(bias=None, stride=1, padding=0, dilation=1, groups=1) for op in CONV_OPS}


@dataclass(frozen=True)
class FunctionalCall:
    """A functional conv/linear call whose weight is a parameter read with ``get_attr``."""

    node: fx.Node
    param: str  # qualified name of the weight parameter
    owner: str  # the module holding it
    input: fx.node.Argument
    bias: fx.node.Argument
    reason: str | None  # None: a call site of ``owner``; else why it stays float


def functional_calls(gm: fx.GraphModule) -> list[FunctionalCall]:
    """Every F.linear / F.conv*d node of ``gm`` whose weight argument is a parameter (buffers,
    e.g. blur filters, and computed weights are not matched)."""
    found = []
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.target not in SIGNATURES:
            continue
        args = SIGNATURES[node.target].bind(*node.args, **node.kwargs)
        args.apply_defaults()
        weight = args.arguments["weight"]
        if not (isinstance(weight, fx.Node) and weight.op == "get_attr"):
            continue
        owner_name, _, attr = str(weight.target).rpartition(".")
        owner = gm.get_submodule(owner_name)
        if not isinstance(getattr(owner, attr), nn.Parameter):
            continue
        owner_type = gm.meta.get(MODULE_TYPES, {}).get(owner_name) or type(owner).__name__
        found.append(FunctionalCall(node, str(weight.target), owner_name, args.arguments["input"], args.arguments["bias"],
                                    _why_float(node.target, owner, owner_type, attr, args.arguments)))
    return found


def _why_float(op: object, owner: nn.Module, owner_type: str, attr: str, args: dict) -> str | None:
    name = getattr(op, "__name__", str(op))
    expected = nn.Linear if op is F.linear else (nn.Conv1d, nn.Conv2d, nn.Conv3d)[CONV_OPS[op] - 1]
    if attr != "weight" or not isinstance(owner, expected):
        return f"{name} on parameter {attr!r} of {owner_type}, not a {expected.__name__}'s weight"
    if not computes_with_latent_weight(owner):
        return f"{name} on the weight of {owner_type}, whose own forward computes differently"
    if op is F.linear:
        return None
    ntuple = _ntuple(CONV_OPS[op])
    call = {k: ntuple(args[k]) for k in ("stride", "dilation")} | {"groups": args["groups"]}
    call["padding"] = args["padding"] if isinstance(args["padding"], str) else ntuple(args["padding"])
    differs = [k for k, v in call.items() if getattr(owner, k) != v]
    if owner.padding_mode != "zeros":
        differs.append("padding_mode")
    return f"{name} with {', '.join(differs)} other than its module's" if differs else None


def to_module_call(gm: fx.GraphModule, call: FunctionalCall) -> fx.Node:
    """Replace ``call``'s node by ``owner(input, bias=<the call's bias>)``; returns the new node."""
    graph = gm.graph
    with graph.inserting_before(call.node):
        new = graph.call_module(call.owner, (call.input,), {"bias": call.bias})
    new.meta = dict(call.node.meta)
    weight = SIGNATURES[call.node.target].bind(*call.node.args, **call.node.kwargs).arguments["weight"]
    call.node.replace_all_uses_with(new)
    graph.erase_node(call.node)
    if not weight.users:
        graph.erase_node(weight)
    return new
