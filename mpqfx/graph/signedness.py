"""Decide from the FX graph whether a tensor is provably non-negative.

A conv/linear input gets an unsigned activation quantizer [0, 2^b-1] when its producer is
non-negative: ReLU/ReLU6/sigmoid-like modules and functions, timm's BatchNormAct2d with such an
activation, and ops that keep non-negativity (pooling, reshapes, dropout, cat/add/mul of
non-negative tensors). Producers known to be signed (conv, linear, BN, LayerNorm, GELU, SiLU,
hardswish, the network input) give a signed quantizer. Anything else is *unknown* and the
caller falls back to calibration data.
"""

from __future__ import annotations

import operator
from typing import Optional

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

NON_NEGATIVE_MODULES = (nn.ReLU, nn.ReLU6, nn.Sigmoid, nn.Hardsigmoid, nn.Softmax, nn.Softplus)
SIGNED_MODULES = (
    nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.LayerNorm, nn.GroupNorm, nn.GELU, nn.SiLU,
    nn.Hardswish, nn.Mish, nn.Tanh, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.Embedding,
)
PASS_THROUGH_MODULES = (
    nn.Identity, nn.Dropout, nn.Dropout2d, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d, nn.Flatten, nn.Upsample, nn.ZeroPad2d,
)
NON_NEGATIVE_FUNCTIONS = {
    F.relu, torch.relu, F.relu6, torch.sigmoid, F.sigmoid, F.hardsigmoid, F.softmax, torch.softmax,
    torch.abs, torch.exp, F.softplus,
}
SIGNED_FUNCTIONS = {
    F.conv2d, F.linear, F.layer_norm, F.group_norm, F.batch_norm, F.gelu, F.silu, F.hardswish,
    F.mish, torch.tanh, F.leaky_relu, torch.sub, operator.sub, operator.neg, torch.neg,
}
# sign of the first argument carries over
UNARY_FUNCTIONS = {
    operator.getitem, torch.unbind, torch.chunk, torch.split, torch.flatten, torch.reshape, torch.permute, torch.transpose, torch.mean,
    F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d, F.dropout,
    F.interpolate, F.pad,
}
# non-negative when every tensor/number argument is
NARY_FUNCTIONS = {operator.add, operator.mul, torch.add, torch.mul, torch.cat}
NON_NEGATIVE_METHODS = {"relu", "relu_", "sigmoid", "sigmoid_", "softmax", "abs", "exp"}
UNARY_METHODS = {
    "view", "reshape", "flatten", "permute", "transpose", "contiguous", "mean", "expand",
    "squeeze", "unsqueeze", "chunk", "split", "unbind", "__getitem__", "clone", "float", "to",
}
NARY_METHODS = {"add", "add_", "mul", "mul_"}


def _batchnorm_act_kind(module: nn.Module) -> Optional[bool]:
    """timm's BatchNormAct2d and friends: sign follows their ``act`` submodule."""
    act = getattr(module, "act", None)
    if act is None or not isinstance(module, nn.modules.batchnorm._BatchNorm):
        return None
    if isinstance(act, NON_NEGATIVE_MODULES):
        return True
    return False


def non_negative(node: fx.node.Argument, gm: fx.GraphModule, memo: dict | None = None) -> Optional[bool]:
    """True if provably >= 0, False if known to be possibly negative, None if unknown."""
    memo = {} if memo is None else memo
    if not isinstance(node, fx.Node):
        if isinstance(node, (list, tuple)):
            return _all(node, gm, memo)
        if isinstance(node, (int, float)) and not isinstance(node, bool):
            return node >= 0
        return None
    if node in memo:
        return memo[node]
    memo[node] = None  # guards against cycles (none in a DAG, but cheap)
    result = _decide(node, gm, memo)
    memo[node] = result
    return result


def _all(args, gm, memo) -> Optional[bool]:
    verdicts = [non_negative(a, gm, memo) for a in args]
    if any(v is False for v in verdicts):
        return False
    return None if any(v is None for v in verdicts) else True


def _decide(node: fx.Node, gm: fx.GraphModule, memo: dict) -> Optional[bool]:
    if node.op == "placeholder":
        return False
    if node.op == "call_module":
        module = gm.get_submodule(node.target)
        bn_act = _batchnorm_act_kind(module)
        if bn_act is not None:
            return bn_act
        if isinstance(module, NON_NEGATIVE_MODULES):
            return True
        if isinstance(module, nn.Hardtanh):
            return module.min_val >= 0 or None
        if isinstance(module, SIGNED_MODULES) or isinstance(module, nn.modules.batchnorm._BatchNorm):
            return False
        if isinstance(module, PASS_THROUGH_MODULES) or type(module).__name__ in ("SelectAdaptivePool2d", "Flatten"):
            return non_negative(node.args[0], gm, memo)
        return None
    if node.op == "call_function":
        if node.target in NON_NEGATIVE_FUNCTIONS:
            return True
        if node.target in SIGNED_FUNCTIONS:
            return False
        if node.target in UNARY_FUNCTIONS:
            return non_negative(node.args[0], gm, memo)
        if node.target in NARY_FUNCTIONS:
            return _all(node.args, gm, memo)
        if node.target is F.scaled_dot_product_attention:  # convex combinations of the values
            return non_negative(node.args[2], gm, memo)
        if node.target in (torch.clamp, torch.clip):
            low = node.args[1] if len(node.args) > 1 else node.kwargs.get("min")
            return True if isinstance(low, (int, float)) and low >= 0 else None
        return None
    if node.op == "call_method":
        if node.target in NON_NEGATIVE_METHODS:
            return True
        if node.target in UNARY_METHODS:
            return non_negative(node.args[0], gm, memo)
        if node.target in NARY_METHODS:
            return _all(node.args, gm, memo)
        return None
    return None  # get_attr and anything else: unknown
