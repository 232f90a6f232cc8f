"""Multi-bit weight-standardized convs: timm's StdConv2d / StdConv2dSame (BiT, the R26/R50 hybrid
ViT backbones) and ScaledStdConv2d / ScaledStdConv2dSame (NFNets).

Their forward standardizes the latent weight per output channel (zero mean, unit variance;
the scaled variants multiply by ``gain * scale``) before the convolution, so the weight the
conv computes with, and the one that is quantized, is the standardized one; the latent weight
stays the trained parameter and receives gradients through the standardization.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import ScaledStdConv2d, ScaledStdConv2dSame, StdConv2d, StdConv2dSame
from torch import nn

from mpqfx.quant.layers import MultiBitConv2d

STD_CONV_TYPES = (StdConv2d, StdConv2dSame, ScaledStdConv2d, ScaledStdConv2dSame)


class MultiBitStdConv2d(MultiBitConv2d):
    """A multi-bit conv that quantizes the standardized weight, computed as timm computes it.

    ``gain`` (the scaled variants' learnable per-channel gain, shared with the float module) and
    ``scale`` (gamma / sqrt(fan-in)) are None for plain StdConv2d. Build with ``from_float``;
    ``same_pad`` keeps the *Same variants' per-input TF padding.
    """

    eps: float
    gain: nn.Parameter | None
    scale: float | None

    def _adopt(self, conv: nn.Module) -> None:
        self.eps = conv.eps
        self.register_parameter("gain", getattr(conv, "gain", None))
        self.scale = getattr(conv, "scale", None)

    def float_weight(self) -> torch.Tensor:
        gain = None if self.gain is None else (self.gain * self.scale).view(-1)
        return F.batch_norm(self.weight.reshape(1, self.out_channels, -1), None, None, weight=gain,
                            training=True, momentum=0.0, eps=self.eps).reshape_as(self.weight)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", eps={self.eps}" + ("" if self.gain is None else ", gain")
