"""Which float conv/linear modules mpqfx rewrites, and the multi-bit module each becomes.

Exact ``nn.Conv1d``/``nn.Conv2d``/``nn.Conv3d``/``nn.Linear`` and subclasses that keep the base
forward are rewritten; so are timm's classes whose forward mpqfx reproduces: ``Conv2dSame``
(TF "SAME" padding per input), ``Linear`` (an AMP dtype cast around ``F.linear``) and the
weight-standardized convs (``StdConv2d``, ``ScaledStdConv2d`` and their ``Same`` variants).
Any other subclass has a forward of its own that a rewrite would silently change; it is
reported instead, as are transposed convs.
"""

from __future__ import annotations

from typing import Sequence

from timm.layers import Conv2dSame
from timm.layers import Linear as TimmLinear
from torch import nn

from mpqfx.quant.layers import MultiBitConv1d, MultiBitConv2d, MultiBitConv3d, MultiBitLinear, MultiBitMixin
from mpqfx.quant.std_conv import STD_CONV_TYPES, MultiBitStdConv2d
from mpqfx.recipe import WeightQuantizer

WEIGHT_MODULE_TYPES = (nn.modules.conv._ConvNd, nn.Linear)  # every module whose weight is a conv/linear weight
PLAIN_BASES = {nn.Conv1d: MultiBitConv1d, nn.Conv2d: MultiBitConv2d, nn.Conv3d: MultiBitConv3d, nn.Linear: MultiBitLinear}
REPRODUCED = {Conv2dSame: MultiBitConv2d, TimmLinear: MultiBitLinear} | {t: MultiBitStdConv2d for t in STD_CONV_TYPES}


def _plain_base(module: nn.Module) -> type | None:
    """The torch base class whose forward ``module`` keeps unchanged, if any."""
    cls = type(module)
    for base in PLAIN_BASES:
        if isinstance(module, base) and cls.forward is base.forward and (
                base is nn.Linear or cls._conv_forward is base._conv_forward):
            return base
    return None


def quantizable_reason(module: nn.Module) -> str | None:
    """None if mpqfx can rewrite ``module``; otherwise why it stays float."""
    if type(module) in REPRODUCED or _plain_base(module) is not None:
        return None
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        return f"{type(module).__name__} is not supported (transposed convs stay float)"
    for base in PLAIN_BASES:
        if isinstance(module, base):
            return f"{type(module).__name__} subclasses {base.__name__} with its own forward; not rewritten"
    return f"{type(module).__name__} is not supported (only conv and linear modules are quantized)"


def computes_with_latent_weight(module: nn.Module) -> bool:
    """Whether ``module`` is a plain conv/linear whose op uses its ``weight`` parameter as it is
    (what a functional call on that weight computes too)."""
    return _plain_base(module) is not None or type(module) is TimmLinear


def dynamic_same_padding(module: nn.Module) -> bool:
    """Whether ``module`` pads each input TF-"SAME"-style in its forward (timm's *Same convs)."""
    return type(module) is Conv2dSame or bool(getattr(module, "same_pad", False))


def to_multibit(module: nn.Module, w_bits: Sequence[int], a_bits: Sequence[int], a_signed: bool,
                weight_quantizer: WeightQuantizer) -> MultiBitMixin:
    """The multi-bit version of a module ``quantizable_reason`` accepts, sharing its parameters."""
    cls = REPRODUCED.get(type(module)) or PLAIN_BASES[_plain_base(module)]
    if cls is MultiBitLinear:
        return MultiBitLinear.from_float(module, w_bits, a_bits, a_signed, weight_quantizer)
    return cls.from_float(module, w_bits, a_bits, a_signed, weight_quantizer, same_pad=dynamic_same_padding(module))
