"""A supernet fixed at one policy, as a plain module for deployment.

Every quantized layer becomes a :class:`QuantizedConv2d` / :class:`QuantizedLinear` that runs in
the integer domain: y = conv(q_x, q_w) * scale + bias, with q_x = clip(round(x / s_x)) the
input's b-bit integers, q_w the weight's integers (int8 containers), scale = s_x * s_w per
output channel and the BatchNorm that directly follows a conv (the policy's Transitional BN
set, or a plain BN) folded into scale and bias:
BN(conv(x, s*q)) = conv(x, q) * s*g/sqrt(v+eps) + (b - m)*g/sqrt(v+eps) + beta.
The integers are exactly the supernet's; a timm BatchNormAct2d leaves its activation behind.

Because q_x and q_w are integers, the convolution's sums are exact in float32 (below 2^24)
whatever order a runtime adds them in, so onnxruntime and PyTorch agree to the bit instead of
differing where an activation sits on a rounding boundary. In ONNX each layer reads
Clip (the b-bit range) -> QuantizeLinear -> DequantizeLinear -> /s_x -> Round (int8 or uint8
container) and DequantizeLinear(int8 weight initializer, scale 1).
"""

from __future__ import annotations

import copy
from types import EllipsisType

import torch
import torch.fx as fx
import torch.nn.functional as F
from timm.layers import BatchNormAct2d
from timm.layers.padding import pad_same
from torch import nn

from mpqfx.errors import PolicyError
from mpqfx.graph.rewrite import BN_TYPES, set_submodule
from mpqfx.quant.layers import LayerBits, MultiBitConvNd, MultiBitMixin
from mpqfx.quant.lsq import STEP_EPS, int_range
from mpqfx.quant.policy import Policy
from mpqfx.quant.transitional_bn import TransitionalBatchNorm
from mpqfx.supernet import Supernet


def activation_integers(x: torch.Tensor, step: torch.Tensor, bits: int, signed: bool) -> torch.Tensor:
    """clip(round(x / s), qmin, qmax) as float values (what LSQ multiplies by s)."""
    qmin, qmax = int_range(bits, signed)
    if not torch.onnx.is_in_onnx_export():
        return torch.div(x, step).round_().clamp_(qmin, qmax)
    x = torch.clamp(x, qmin * step, qmax * step)  # the b-bit range, narrower than the container
    container = (-128, 127) if signed else (0, 255)
    x = torch.fake_quantize_per_tensor_affine(x, step, torch.zeros((), dtype=torch.int32), *container)
    return torch.round(x / step)


def weight_integers(ints: torch.Tensor) -> torch.Tensor:
    """The int8 weights as float values (DequantizeLinear with scale 1 in ONNX)."""
    w = ints.float()
    if not torch.onnx.is_in_onnx_export():
        return w
    ones = torch.ones(w.shape[0], device=w.device)
    return torch.fake_quantize_per_channel_affine(w, ones, torch.zeros_like(ones, dtype=torch.int32), 0, -128, 127)


class _Quantized(nn.Module):
    """Integer weights, per-channel scale and bias, and the input activation's step."""

    def __init__(self, weight_shape: torch.Size, bits: LayerBits, a_signed: bool):
        super().__init__()
        self.w_bits, self.a_bits, self.a_signed = bits.w, bits.a, a_signed
        self.register_buffer("weight_int", torch.zeros(weight_shape, dtype=torch.int8))
        self.register_buffer("output_scale", torch.ones(weight_shape[0]))  # s_x * s_w (* BN's g/sqrt(v+eps))
        self.register_buffer("bias", torch.zeros(weight_shape[0]))
        self.register_buffer("act_step", torch.ones(()))

    def _integers(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return activation_integers(x, self.act_step, self.a_bits, self.a_signed), weight_integers(self.weight_int)

    def _rescale(self, y: torch.Tensor, bias: torch.Tensor | None | EllipsisType) -> torch.Tensor:
        """Per output channel: dim 1 for convs, the last dim for linears. ``bias``: a functional
        call site's own bias (``...``: the layer's, with any folded BatchNorm)."""
        bias = self.bias if bias is ... else torch.zeros_like(self.bias) if bias is None else bias
        if isinstance(self, QuantizedLinear):
            return y * self.output_scale + bias
        view = (1, -1) + (1,) * (y.dim() - 2)
        return y * self.output_scale.view(view) + bias.view(view)

    def extra_repr(self) -> str:
        return f"w_bits={self.w_bits}, a_bits={self.a_bits}, a_signed={self.a_signed}"


class QuantizedConv2d(_Quantized):
    """A deployed conv with 1, 2 or 3 spatial dimensions (the name is kept from when only 2-D convs were)."""

    def __init__(self, conv: MultiBitConvNd, bits: LayerBits, a_signed: bool):
        super().__init__(conv.weight.shape, bits, a_signed)
        self.stride, self.padding, self.dilation, self.groups = conv.stride, conv.padding, conv.dilation, conv.groups
        self.kernel_size, self.same_pad = conv.kernel_size, conv.same_pad

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None | EllipsisType = ...) -> torch.Tensor:
        x, w = self._integers(x)
        if self.same_pad:
            x = pad_same(x, self.kernel_size, self.stride, self.dilation)
        conv = (F.conv1d, F.conv2d, F.conv3d)[w.dim() - 3]
        return self._rescale(conv(x, w, None, self.stride, self.padding, self.dilation, self.groups), bias)


class QuantizedLinear(_Quantized):
    def forward(self, x: torch.Tensor, bias: torch.Tensor | None | EllipsisType = ...) -> torch.Tensor:
        x, w = self._integers(x)
        return self._rescale(F.linear(x, w), bias)


def _bn_factors(bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(multiplier, offset) with BN(y) = y * multiplier + offset per channel, in eval mode."""
    if bn.running_mean is None:
        return None
    k = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        k = k * bn.weight
    offset = -bn.running_mean * k + (bn.bias if bn.bias is not None else 0)
    return k, offset


def _left_after_folding(bn: nn.Module) -> nn.Module:
    if isinstance(bn, BatchNormAct2d):  # bn -> drop -> act
        return nn.Sequential(bn.drop, bn.act)
    return nn.Identity()


def _quantized_layer(module: MultiBitMixin, bits: LayerBits, a_signed: bool, bn: nn.Module | None) -> _Quantized:
    cls = QuantizedConv2d if isinstance(module, MultiBitConvNd) else QuantizedLinear
    new = cls(module, bits, a_signed) if cls is QuantizedConv2d else cls(module.weight.shape, bits, a_signed)
    ints = module.weight_quant.integers(module.float_weight(), bits.w)
    scale = module.weight_quant.step(bits.w).detach().clamp(min=STEP_EPS).reshape(-1).expand(ints.shape[0]).clone()
    bias = module.bias.detach().clone() if module.bias is not None else torch.zeros_like(scale)
    if bn is not None:
        k, offset = _bn_factors(bn)
        scale, bias = scale * k, bias * k + offset
    dead = scale == 0  # a channel BN multiplies by zero: its output is the bias alone
    ints[dead], scale[dead] = 0, 1.0
    act_step = module.act_quant.step(bits.a).detach().clamp(min=STEP_EPS)
    new.weight_int.copy_(ints.to(torch.int8))
    new.output_scale.copy_(scale * act_step)
    new.bias.copy_(bias)
    new.act_step.copy_(act_step)
    return new


@torch.no_grad()
def deploy(net: Supernet, policy: Policy) -> fx.GraphModule:
    """``net`` at ``policy`` as a new eval-mode GraphModule with integer weights and BN folded in;
    ``net`` itself is left as it was. Every layer must be quantized in ``policy``."""
    policy.validate(net.layers)
    floating = [name for name in policy if policy[name].w is None or policy[name].a is None]
    if floating:
        raise PolicyError(f"export needs every layer quantized; the policy leaves {floating[0]!r} "
                          f"{'and others ' if len(floating) > 1 else ''}in float")
    with net.use_policy(policy):
        gm = copy.deepcopy(net.graph_module)
    gm.eval()
    infos = {info.name: info for info in net.layers}
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
        foldable = (isinstance(src, fx.Node) and src.op == "call_module" and src.target in infos
                    and len(src.users) == 1 and isinstance(gm.get_submodule(src.target), MultiBitConvNd)
                    and "bias" not in src.kwargs and _bn_factors(module) is not None)
        if foldable:
            folded[src.target] = module
        set_submodule(gm, node.target, _left_after_folding(module) if foldable else module)
    for name, info in infos.items():
        module = gm.get_submodule(name)
        set_submodule(gm, name, _quantized_layer(module, policy[name], info.a_signed, folded.get(name)))
    gm.recompile()
    return gm
