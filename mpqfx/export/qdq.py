"""The two quantization ops of a deployed model, as ONNX's QDQ form defines them.

* :class:`ActivationQuantizer`: x -> q = clip(round(x / step) + zero_point, lo, hi), an integer
  in a uint8 container, -> (q - zero_point) * step. In ONNX: QuantizeLinear -> Clip on the
  integers (left out when [lo, hi] is the whole container) -> DequantizeLinear, the form
  onnxruntime and OpenVINO fuse into integer kernels while a b-bit range stays exact.
  A signed b-bit range [-2^(b-1), 2^(b-1)-1] is stored with zero point 128 (x86 integer kernels
  take unsigned activations); an unsigned one with zero point 0.
* :func:`dequantize_per_channel`: int8 weights (or int32 biases) times a per-output-channel
  scale, zero point 0; in ONNX one DequantizeLinear (axis 0) reading the integer initializer.

PyTorch runs the same arithmetic as the ONNX reference semantics (a division and a
round-half-to-even, then a multiplication), so the deployed module is the exported graph.
"""

from __future__ import annotations

import torch
from torch import nn

from mpqfx.errors import MpqfxError
from mpqfx.quant.lsq import STEP_EPS, int_range

CONTAINER = (0, 255)  # uint8


def container_bounds(bits: int, signed: bool) -> tuple[int, int, int]:
    """(zero point, lo, hi) of a b-bit range in the uint8 container."""
    zero_point = 128 if signed else 0
    qmin, qmax = int_range(bits, signed)
    return zero_point, zero_point + qmin, zero_point + qmax


class _QuantizeClipDequantize(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, step, zero_point, lo, hi, clip: bool):  # noqa: ARG004 - clip only shapes the ONNX graph
        zp = zero_point.to(x.dtype)
        return (torch.div(x, step).round_().add_(zp).clamp_(lo.to(x.dtype), hi.to(x.dtype)).sub_(zp)).mul_(step)

    @staticmethod
    def symbolic(g, x, step, zero_point, lo, hi, clip: bool):
        q = g.op("QuantizeLinear", x, step, zero_point)
        if clip:
            q = g.op("Clip", q, lo, hi)
        return g.op("DequantizeLinear", q, step, zero_point)


class _DequantizePerChannel(torch.autograd.Function):
    @staticmethod
    def forward(ctx, ints, scale):
        return ints.to(scale.dtype) * scale.view((-1,) + (1,) * (ints.dim() - 1))

    @staticmethod
    def symbolic(g, ints, scale):
        sizes = ints.type().sizes()
        dtype = torch.int8 if ints.type().scalarType() == "Char" else torch.int32
        zero = g.op("Constant", value_t=torch.zeros(sizes[0], dtype=dtype))
        return g.op("DequantizeLinear", ints, scale, zero, axis_i=0)


def dequantize_per_channel(ints: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``ints`` (int8 weights or int32 biases, output channels first) times ``scale`` per output
    channel; in ONNX a DequantizeLinear with zero point 0 along axis 0."""
    return _DequantizePerChannel.apply(ints, scale)


class ActivationQuantizer(nn.Module):
    """Quantize -> clip on the integers -> dequantize, per tensor (see the module docstring).

    ``bits``/``signed`` give the integer range; ``restrict`` narrows it further to the integers
    of a clamp activation folded into it (ReLU: [0, inf), ReLU6: [0, 6]), which is exact:
    round(clamp(x, a, b) / s) = clamp(round(x / s), round(a / s), round(b / s)).
    An 8-bit quantizer created with ``calibrate=True`` gets its step and zero point from the
    min/max of what it sees in :meth:`observe` mode, as onnxruntime's min/max calibration does.
    """

    def __init__(self, bits: int, signed: bool, step: float | torch.Tensor | None = None):
        super().__init__()
        self.bits, self.signed = bits, signed
        self.from_data = step is None  # the supernet keeps this tensor in float: calibrated min/max
        step = 0.0 if step is None else step
        zero_point, lo, hi = container_bounds(bits, signed)
        self.register_buffer("step", torch.as_tensor(step, dtype=torch.float32).detach().clone().reshape(()))
        self.register_buffer("zero_point", torch.tensor(zero_point, dtype=torch.uint8))
        self.register_buffer("lo", torch.tensor(lo, dtype=torch.uint8))
        self.register_buffer("hi", torch.tensor(hi, dtype=torch.uint8))
        self.observing = False
        self.seen: tuple[float, float] | None = None
        self.restricted: tuple[float, float] = (-float("inf"), float("inf"))
        self.reader_step: float | None = None  # a b-bit reader's step this 8-bit grid should contain (set_range)

    @property
    def calibrated(self) -> bool:
        return float(self.step) > 0

    def restrict(self, low: float, high: float) -> None:
        """Fold a clamp activation (output in [low, high]) that precedes this quantizer."""
        self.restricted = (max(self.restricted[0], low), min(self.restricted[1], high))
        if self.calibrated:
            self._apply_restriction()

    def _apply_restriction(self) -> None:
        zp = int(self.zero_point)
        low, high = self.restricted
        for bound, value, pick in ((self.lo, low, max), (self.hi, high, min)):
            if abs(value) != float("inf"):
                q = zp + int(torch.round(torch.tensor(value, dtype=torch.float32) / self.step))
                bound.fill_(min(max(pick(int(bound), q), CONTAINER[0]), CONTAINER[1]))

    @torch.no_grad()
    def set_range(self, low: float, high: float) -> None:
        """8-bit calibration result: an asymmetric uint8 grid over [min(low, 0), max(high, 0)].

        With ``reader_step`` set (a quantized layer reads this tensor at that b-bit step), the step
        grows to ``reader_step / k`` for the largest odd ``k`` that still covers the range: every
        rounding boundary of the reader's grid then falls on one of this grid's, so rounding to
        8 bits first changes none of the reader's integers (double rounding is exact).
        """
        low, high = max(min(low, 0.0), self.restricted[0]), min(max(high, 0.0), self.restricted[1])
        step = max((high - low) / (CONTAINER[1] - CONTAINER[0]), STEP_EPS)
        if self.reader_step is not None:
            k = int(self.reader_step / step)
            k -= 1 - k % 2  # odd: the reader's midpoints (j + 1/2) * k * step are this grid's midpoints
            if k >= 1:
                step = self.reader_step / k
        self.step.fill_(step)
        self.zero_point.fill_(int(min(max(round(-low / step), CONTAINER[0]), CONTAINER[1])))
        self.lo.fill_(CONTAINER[0])
        self.hi.fill_(CONTAINER[1])
        self._apply_restriction()

    @property
    def clips(self) -> bool:
        """Whether ONNX needs a Clip between QuantizeLinear and DequantizeLinear."""
        return (int(self.lo), int(self.hi)) != CONTAINER

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observing:
            low, high = float(x.min()), float(x.max())
            self.seen = (low, high) if self.seen is None else (min(self.seen[0], low), max(self.seen[1], high))
            return x.clamp(*self.restricted) if self.restricted != (-float("inf"), float("inf")) else x
        if not self.calibrated:
            raise MpqfxError("an 8-bit output quantizer of the deployed module is not calibrated: "
                             "pass calibration batches to mpqfx.export.deploy(net, policy, calibration=...)")
        return _QuantizeClipDequantize.apply(x, self.step, self.zero_point, self.lo, self.hi, self.clips)

    def extra_repr(self) -> str:
        return (f"bits={self.bits}, signed={self.signed}, step={float(self.step):.4g}, zero_point={int(self.zero_point)}, "
                f"range=[{int(self.lo)}, {int(self.hi)}]")
