"""Weight-shared multi-bit conv and linear layers: one latent float weight, one LSQ step per bit."""

from __future__ import annotations

from types import EllipsisType
from typing import Callable, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from timm.layers.padding import pad_same
from torch import nn

from mpqfx.quant.double_rounding import DoubleRoundingQuantizer
from mpqfx.quant.lsq import MultiBitLSQ
from mpqfx.recipe import WeightQuantizer


class LayerBits(NamedTuple):
    """Bit-widths of one layer: weights and input activations; ``None`` means float."""

    w: int | None
    a: int | None


FLOAT_BITS = LayerBits(None, None)


class MultiBitMixin:
    """Shared behaviour of the multi-bit convs and MultiBitLinear (used through ``set_bits``)."""

    weight: nn.Parameter
    weight_quant: MultiBitLSQ | DoubleRoundingQuantizer
    act_quant: MultiBitLSQ
    active: LayerBits

    def _init_quantizers(self, w_bits: Sequence[int], a_bits: Sequence[int], a_signed: bool,
                         weight_quantizer: WeightQuantizer) -> None:
        if weight_quantizer is WeightQuantizer.DOUBLE_ROUNDING:
            self.weight_quant = DoubleRoundingQuantizer(w_bits)
        elif weight_quantizer is WeightQuantizer.LSQ_CHANNEL:
            step_shape = (self.weight.shape[0],) + (1,) * (self.weight.dim() - 1)
            self.weight_quant = MultiBitLSQ(w_bits, signed=True, per_sample=False, step_shape=step_shape)
        else:
            self.weight_quant = MultiBitLSQ(w_bits, signed=True, per_sample=False)
        self.weight_quant.init_steps(self.float_weight().detach())
        self.act_quant = MultiBitLSQ(a_bits, signed=a_signed, per_sample=True)
        self.active = FLOAT_BITS

    def set_bits(self, bits: LayerBits) -> None:
        """Select the weight / activation bit-width used by the next forward (None: float)."""
        for value, allowed, what in ((bits.w, self.weight_quant.bits, "weight"), (bits.a, self.act_quant.bits, "activation")):
            if value is not None and value not in allowed:
                raise ValueError(f"{what} bit-width {value} not in {list(allowed)}")
        self.active = LayerBits(*bits)

    def float_weight(self) -> torch.Tensor:
        """The float weight the layer computes with and quantizes: its latent ``weight``, or for a
        weight-standardized conv the standardized (and gained) one."""
        return self.weight

    def quantized_weight(self) -> torch.Tensor:
        """The weight at the active bit-width, for this layer's own op only (one use per forward
        and backward, so the quantizer reuses its buffers; see ``OutputReuse``)."""
        return self.weight_quant(self.float_weight(), self.active.w, exclusive=True)


def _empty_like(module: nn.Module, cls: type, **kwargs) -> nn.Module:
    """An instance of ``cls`` with ``module``'s hyper-parameters, sharing its Parameters."""
    new = cls(**kwargs, bias=module.bias is not None, device="meta")
    new.weight = module.weight
    new.bias = module.bias
    new.train(module.training)
    return new


class MultiBitConvNd(MultiBitMixin):
    """Shared behaviour of the multi-bit convs: weight and input fake-quantized at the active bit-widths.

    ``same_pad`` reproduces timm's TF-"SAME" padding computed per input (``Conv2dSame``). A call
    site may pass ``bias``: a functional ``F.conv2d(x, self.weight, bias)`` rewritten into a call
    of this module keeps its own bias expression; the default ``...`` uses the module's bias.
    """

    same_pad: bool
    bias: nn.Parameter | None
    _conv_forward: Callable[..., torch.Tensor]

    @classmethod
    def from_float(cls, conv: nn.modules.conv._ConvNd, w_bits: Sequence[int], a_bits: Sequence[int],
                   a_signed: bool, weight_quantizer: WeightQuantizer = WeightQuantizer.LSQ,
                   same_pad: bool = False) -> "MultiBitConvNd":
        new = _empty_like(conv, cls, in_channels=conv.in_channels, out_channels=conv.out_channels,
                          kernel_size=conv.kernel_size, stride=conv.stride, padding=conv.padding,
                          dilation=conv.dilation, groups=conv.groups, padding_mode=conv.padding_mode)
        new.same_pad = same_pad
        new._adopt(conv)
        new._init_quantizers(w_bits, a_bits, a_signed, weight_quantizer)
        return new

    def _adopt(self, conv: nn.Module) -> None:
        """Take what a subclass needs from the float module beyond weight and bias (before the steps are fitted)."""

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None | EllipsisType = ...) -> torch.Tensor:
        x = self.act_quant(x, self.active.a)
        if self.same_pad:
            x = pad_same(x, self.kernel_size, self.stride, self.dilation)
        return self._conv_forward(x, self.quantized_weight(), self.bias if bias is ... else bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + (", same_pad=True" if self.same_pad else "")


class MultiBitConv1d(MultiBitConvNd, nn.Conv1d):
    """An ``nn.Conv1d`` whose weight and input are fake-quantized at the active bit-widths."""


class MultiBitConv2d(MultiBitConvNd, nn.Conv2d):
    """An ``nn.Conv2d`` whose weight and input are fake-quantized at the active bit-widths."""


class MultiBitConv3d(MultiBitConvNd, nn.Conv3d):
    """An ``nn.Conv3d`` whose weight and input are fake-quantized at the active bit-widths."""


class MultiBitLinear(MultiBitMixin, nn.Linear):
    """An ``nn.Linear`` whose weight and input are fake-quantized at the active bit-widths.

    ``bias`` as in :class:`MultiBitConvNd`: a call site's own bias (``F.linear(x, self.weight, bias)``).
    """

    @classmethod
    def from_float(cls, linear: nn.Linear, w_bits: Sequence[int], a_bits: Sequence[int], a_signed: bool,
                   weight_quantizer: WeightQuantizer = WeightQuantizer.LSQ) -> "MultiBitLinear":
        new = _empty_like(linear, cls, in_features=linear.in_features, out_features=linear.out_features)
        new._init_quantizers(w_bits, a_bits, a_signed, weight_quantizer)
        return new

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None | EllipsisType = ...) -> torch.Tensor:
        return F.linear(self.act_quant(x, self.active.a), self.quantized_weight(), self.bias if bias is ... else bias)


MULTIBIT_TYPES = (MultiBitConvNd, MultiBitLinear)
