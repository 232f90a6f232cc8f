"""A supernet fixed at one policy, as a plain module in the QDQ form that runtimes fuse.

Every quantized layer becomes a :class:`QuantizedConv` / :class:`QuantizedLinear` holding its
int8 weights (the supernet's b-bit integers), one scale per output channel (the LSQ step with
the BatchNorm that directly follows a conv folded in, BN(conv(x, s*q)) = conv(x, q * s*g/sqrt(v+eps))
+ (b - m)*g/sqrt(v+eps) + beta) and a float bias. It computes

    input quantizer (the layer's b-bit LSQ step) -> conv/linear(dequantized weights) -> output quantizer

which ONNX writes as Q -> Clip -> DQ, DQ(int8 weight) -> Conv -> Q: onnxruntime runs each such
group as one integer kernel (QLinearConv / QGemm), OpenVINO as a u8/i8 convolution.

The output quantizer of a layer is, by :func:`mpqfx.export.requantize.place_output_quantizers`,
either the b-bit input quantizer of the layer it feeds (a ReLU or ReLU6 in between folds into
its integer range exactly) or an 8-bit quantizer calibrated on training images; residual adds
get 8-bit quantizers too. Those 8-bit tensors are the only thing the supernet did not compute.
"""

from __future__ import annotations

import copy
import operator
from types import EllipsisType
from typing import Callable, Iterable

import torch
import torch.fx as fx
import torch.nn.functional as F
from timm.layers import BatchNormAct2d
from timm.layers.padding import pad_same
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from mpqfx.errors import MpqfxError, PolicyError
from mpqfx.export.qdq import ActivationQuantizer, dequantize_per_channel
from mpqfx.export.bias import quantize_biases
from mpqfx.export.decompose import decompose_unfolds
from mpqfx.export.requantize import calibrate, eight_bit_quantizer, place_output_quantizers
from mpqfx.graph.rewrite import BN_TYPES, set_submodule
from mpqfx.quant.layers import LayerBits, MultiBitConvNd, MultiBitMixin
from mpqfx.quant.lsq import STEP_EPS
from mpqfx.quant.policy import Policy
from mpqfx.quant.transitional_bn import TransitionalBatchNorm
from mpqfx.supernet import Supernet

Batch = tuple[torch.Tensor, torch.Tensor]


class QuantizedLayer(nn.Module):
    """Integer weights and bias with their per-channel scales, and the input/output quantizers."""

    def __init__(self, weight_shape: torch.Size, bits: LayerBits, a_signed: bool, a_step: torch.Tensor):
        super().__init__()
        self.w_bits, self.a_bits = bits.w, bits.a
        self.shift = 8 - bits.w  # int8 weights are the b-bit integers times 2^shift
        channels = weight_shape[0]
        self.register_buffer("weight_int", torch.zeros(weight_shape, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(channels))  # s_w (* BN's g/sqrt(v+eps)) / 2^(8-b)
        self.register_buffer("bias_int", torch.zeros(channels, dtype=torch.int32))
        self.register_buffer("bias_scale", torch.ones(channels))  # input step * weight_scale
        self.float_bias = torch.zeros(channels)  # what bias_int approximates (not stored)
        self.float_weight_scale = torch.ones(channels)  # the supernet's scale, before quantize_biases (not stored)
        self.input_quant: nn.Module = ActivationQuantizer(bits.a, a_signed, a_step)
        self.output_quant: nn.Module = nn.Identity()
        self.input_from: str | None = None  # the layer or requantize_<add> whose quantizer quantizes the input

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized weight (a DequantizeLinear of the int8 initializer in ONNX); a tensor, as
        the layer it replaces had, for code inside untraced leaves that reads ``.weight.device``."""
        return dequantize_per_channel(self.weight_int, self.weight_scale)

    @property
    def bias(self) -> torch.Tensor:
        """The dequantized bias (a DequantizeLinear of the int32 initializer in ONNX)."""
        return dequantize_per_channel(self.bias_int, self.bias_scale)

    def use_float_bias(self) -> None:
        """Compute what the supernet computes: the float bias (1 x float bias as its scale) and the
        supernet's weight scales, undoing :func:`mpqfx.export.bias.quantize_biases`."""
        self.weight_scale.copy_(self.float_weight_scale)
        self.bias_int.fill_(1)
        self.bias_scale.copy_(self.float_bias)

    channel_dim = 1  # of the output

    def quantized_input(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def op(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output_quant(self.op(self.quantized_input(x), self.bias))

    def op_attributes(self) -> dict[str, object]:
        """What the op needs besides its tensors (stride, padding, ... for convolutions)."""
        return {"op": "linear"}

    def extra_repr(self) -> str:
        return f"w_bits={self.w_bits}, a_bits={self.a_bits}"


class QuantizedConv(QuantizedLayer):
    _conv = {3: F.conv1d, 4: F.conv2d, 5: F.conv3d}

    def __init__(self, conv: nn.Module, bits: LayerBits, a_signed: bool, a_step: torch.Tensor):
        super().__init__(conv.weight.shape, bits, a_signed, a_step)
        self.stride, self.padding, self.dilation, self.groups = conv.stride, conv.padding, conv.dilation, conv.groups
        self.kernel_size, self.same_pad = conv.kernel_size, getattr(conv, "same_pad", False)

    def op_attributes(self) -> dict[str, object]:
        return {"op": f"conv{self.weight_int.dim() - 2}d", "stride": list(self.stride),
                "padding": self.padding if isinstance(self.padding, str) else list(self.padding),
                "dilation": list(self.dilation), "groups": self.groups, "same_pad": bool(self.same_pad)}

    def quantized_input(self, x: torch.Tensor) -> torch.Tensor:
        if self.same_pad:  # zeros padded before quantizing are the zero point's integers, as after
            x = pad_same(x, self.kernel_size, self.stride, self.dilation)
        return self.input_quant(x)

    def op(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return self._conv[self.weight_int.dim()](x, self.weight, bias, self.stride, self.padding, self.dilation,
                                                 self.groups)


class QuantizedLinear(QuantizedLayer):
    channel_dim = -1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens (..., features) run as one matrix (tokens, features): ONNX Gemm, which onnxruntime
        fuses into QGemm, where a batched MatMul would leave the bias and requantization outside."""
        if x.dim() == 2:
            return super().forward(x)
        y = super().forward(x.reshape(-1, x.shape[-1]))
        return y.reshape(*x.shape[:-1], y.shape[-1])

    def quantized_input(self, x: torch.Tensor) -> torch.Tensor:
        return self.input_quant(x)

    def op(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return F.linear(x, self.weight, bias)


QUANTIZED_TYPES = (QuantizedConv, QuantizedLinear)


def bn_multiplier(bn: nn.Module, var: torch.Tensor | None = None) -> torch.Tensor:
    """BatchNorm's per-channel multiplier g/sqrt(v+eps), which folds into the conv's weight scale;
    ``var``: the variance it normalizes with (default: its running one; a batch's while it trains)."""
    k = torch.rsqrt((bn.running_var if var is None else var) + bn.eps)
    return k * bn.weight if bn.weight is not None else k


def _bn_factors(bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(multiplier, offset) with BN(y) = y * multiplier + offset per channel, in eval mode."""
    if bn.running_mean is None:
        return None
    k = bn_multiplier(bn)
    offset = -bn.running_mean * k + (bn.bias if bn.bias is not None else 0)
    return k, offset


def _left_after_folding(bn: nn.Module) -> nn.Module:
    if isinstance(bn, BatchNormAct2d):  # bn -> drop -> act
        return nn.Sequential(bn.drop, bn.act)
    return nn.Identity()


def _quantized_layer(module: MultiBitMixin, bits: LayerBits, a_signed: bool, bn: nn.Module | None,
                     call_bias: torch.Tensor | None | EllipsisType = ...) -> QuantizedLayer:
    a_step = module.act_quant.step(bits.a).detach().clamp(min=STEP_EPS)
    if isinstance(module, nn.Linear):
        new: QuantizedLayer = QuantizedLinear(module.weight.shape, bits, a_signed, a_step)
    else:
        new = QuantizedConv(module, bits, a_signed, a_step)
    ints = module.weight_quant.integers(module.float_weight(), bits.w)
    scale = module.weight_quant.step(bits.w).detach().clamp(min=STEP_EPS).reshape(-1).expand(ints.shape[0]).clone()
    own = module.bias if call_bias is ... else call_bias  # a functional call site's own bias expression
    bias = own.detach().clone().float() if own is not None else torch.zeros_like(scale)
    if bn is not None:
        k, offset = _bn_factors(bn)
        scale, bias = scale * k, bias * k + offset
    dead = scale == 0  # a channel BN multiplies by zero: its output is the bias alone
    ints[dead], scale[dead] = 0, 1.0
    # b-bit integers times 2^(8-b) fill int8, so the int32 bias is 2^(8-b) times finer
    ints, scale = ints * 2**new.shift, scale / 2**new.shift
    new.weight_int.copy_(ints.to(torch.int8))
    new.float_weight_scale, new.float_bias = scale, bias
    new.use_float_bias()  # until quantize_biases sets the int32 one: the 8-bit quantizers calibrate with it
    return new


@torch.no_grad()
def _call_site_biases(net: Supernet) -> dict[str, torch.Tensor | None]:
    """The bias each functional call site (``F.linear(x, self.qkv.weight, torch.cat(...))``) passes
    its layer, evaluated once: an integer kernel's bias is a constant. A bias computed from the
    input cannot be one and is refused."""
    graph = net.graph_module.graph
    calls = {n.target: n for n in graph.nodes if n.op == "call_module" and "bias" in n.kwargs}
    for name, node in calls.items():
        bias = node.kwargs["bias"]
        seen, stack = set(), [bias] if isinstance(bias, fx.Node) else []
        while stack:
            current = stack.pop()
            if current.op == "placeholder":
                raise MpqfxError(f"layer {name!r}: its call site computes the bias from the input, which an integer "
                                 "kernel cannot take; export needs a bias made of parameters")
            if current not in seen:
                seen.add(current)
                stack.extend(current.all_input_nodes)
    values: dict[str, torch.Tensor | None] = {}
    if not calls:
        return values
    modules, was_training = net.graph_module, net.training
    net.eval()  # no BatchNorm statistics move
    hooks = [modules.get_submodule(name).register_forward_pre_hook(
        lambda _, args, kwargs, name=name: values.__setitem__(name, kwargs.get("bias")), with_kwargs=True)
        for name in calls]
    try:
        net(net.example_input.to(next(net.parameters()).device))
    finally:
        net.train(was_training)
        for hook in hooks:
            hook.remove()
    return values


def _drop_call_site_biases(gm: fx.GraphModule, names: set[str]) -> None:
    """Remove the ``bias`` argument of these layers' calls, and what computed it."""
    for node in [n for n in gm.graph.nodes if n.op == "call_module" and n.target in names]:
        bias = node.kwargs.get("bias")
        node.kwargs = {k: v for k, v in node.kwargs.items() if k != "bias"}
        stack = [bias] if isinstance(bias, fx.Node) else []
        while stack:
            current = stack.pop()
            if not current.users and current.op != "placeholder":
                inputs = current.all_input_nodes
                gm.graph.erase_node(current)
                stack.extend(inputs)


def _drop_pinned_inputs(gm: fx.GraphModule) -> None:
    """The deployed module takes the image only: forward arguments that prepare pinned to their
    defaults (concrete_args) become those constants, their guards dropped."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    for node in placeholders[1:]:
        if len(node.args) != 1:
            continue
        for user in list(node.users):
            guards = [user] + [u for u in user.users if u.target is torch._assert]
            if user.target is torch._assert or getattr(user.target, "__name__", "") == "_assert_is_none" or \
                    (user.target is operator.eq and all(u.target is torch._assert for u in user.users)):
                for guard in reversed(guards):
                    gm.graph.erase_node(guard)
        for user in list(node.users):
            user.args = tuple(node.args[0] if a is node else a for a in user.args)
            user.kwargs = {k: node.args[0] if v is node else v for k, v in user.kwargs.items()}
        gm.graph.erase_node(node)


def _fold_batchnorms(gm: fx.GraphModule, layers: set[str]) -> dict[str, nn.Module]:
    """Replace each BN (the policy's Transitional BN set) by what is left after folding it into the
    conv right before it, when that conv feeds only the BN; returns conv name -> BN folded into it."""
    folded: dict[str, nn.Module] = {}
    for node in gm.graph.nodes:
        if node.op != "call_module":
            continue
        module = gm.get_submodule(node.target)
        if isinstance(module, TransitionalBatchNorm):
            module = module.sets[module.active]
        elif not isinstance(module, BN_TYPES):
            continue
        src = node.args[0] if node.args else None
        foldable = (isinstance(src, fx.Node) and src.op == "call_module" and src.target in layers
                    and len(src.users) == 1 and isinstance(gm.get_submodule(src.target), MultiBitConvNd)
                    and "bias" not in src.kwargs and _bn_factors(module) is not None)
        if foldable:
            folded[src.target] = module
        set_submodule(gm, node.target, _left_after_folding(module) if foldable else module)
    return folded


@torch.no_grad()
@torch.no_grad()
def _annotate_shapes(gm: fx.GraphModule, example: torch.Tensor) -> None:
    """Tensor shapes on every node of ``gm`` (place_output_quantizers finds the residual adds by
    them), read from a run of a copy: running a module can change its state."""
    probe = copy.deepcopy(gm)
    ShapeProp(probe).propagate(example)
    shapes = {node.name: node.meta.get("tensor_meta") for node in probe.graph.nodes}
    for node in gm.graph.nodes:
        if shapes.get(node.name) is not None:
            node.meta["tensor_meta"] = shapes[node.name]


LayerFactory = Callable[[MultiBitMixin, LayerBits, bool, "nn.Module | None", "torch.Tensor | None | EllipsisType"],
                        nn.Module]


def deployed_graph(net: Supernet, policy: Policy, new_layer: LayerFactory,
                   new_requantizer: Callable[[], ActivationQuantizer] = eight_bit_quantizer) -> fx.GraphModule:
    """The graph of the deployed module, shared by :func:`deploy` and fine-tuning
    (:mod:`mpqfx.finetune`): ``net`` at ``policy`` copied, each BatchNorm that follows a conv folded
    away, each quantized layer replaced by ``new_layer(module, bits, a_signed, folded_bn, call_bias)``
    (a module with ``input_quant`` / ``output_quant`` / ``input_from``), and the output quantizers placed
    by :func:`mpqfx.export.requantize.place_output_quantizers` (8-bit ones made by ``new_requantizer``).
    The 8-bit quantizers are not calibrated yet; the module is in eval mode without gradients."""
    policy.validate(net.layers)
    floating = [name for name in policy if policy[name].w is None or policy[name].a is None]
    if floating:
        raise PolicyError(f"export needs every layer quantized; the policy leaves {floating[0]!r} "
                          f"{'and others ' if len(floating) > 1 else ''}in float")
    call_biases = _call_site_biases(net)
    with net.use_policy(policy):
        gm = copy.deepcopy(net.graph_module)
    gm.eval().requires_grad_(False)  # an inference module
    infos = {info.name: info for info in net.layers}
    folded = _fold_batchnorms(gm, set(infos))
    _drop_call_site_biases(gm, set(call_biases))
    _drop_pinned_inputs(gm)
    _annotate_shapes(gm, net.example_input)
    decompose_unfolds(gm)  # ONNX export needs them as gathers
    for name, info in infos.items():
        module = gm.get_submodule(name)
        set_submodule(gm, name, new_layer(module, policy[name], info.a_signed, folded.get(name),
                                          call_biases.get(name, ...)))
    for reader, producer in place_output_quantizers(gm, set(infos), new_requantizer).items():
        gm.get_submodule(reader).input_from = producer
    gm.graph.lint()
    gm.recompile()
    return gm


def deploy(net: Supernet, policy: Policy, calibration: Iterable[Batch] | None = None) -> fx.GraphModule:
    """``net`` at ``policy`` as a new eval-mode GraphModule with integer weights, BN folded in and
    quantizers on every tensor an integer kernel reads or writes; ``net`` is left as it was.

    ``calibration`` (training batches) sets the 8-bit quantizers of the tensors the supernet keeps
    in float (conv outputs that feed no quantized layer, residual adds) from their min/max; without
    it they stay uncalibrated (load their state, e.g. :func:`mpqfx.export.load_integer_model`).
    Every layer must be quantized in ``policy``.
    """
    gm = deployed_graph(net, policy, _quantized_layer)
    if calibration is not None:
        calibrate(gm, calibration)
        quantize_biases(gm, {info.name: input_quantizer(gm, info.name).step for info in net.layers}, calibration)
    return gm


def input_quantizer(gm: nn.Module, name: str) -> ActivationQuantizer:
    """The quantizer of layer ``name``'s input: its own, or its producer's (a layer's output
    quantizer or a residual add's ``requantize_<add>``)."""
    layer = gm.get_submodule(name)
    if not layer.input_from:
        return layer.input_quant
    producer = gm.get_submodule(layer.input_from)
    return producer.output_quant if isinstance(producer, QuantizedLayer) else producer
