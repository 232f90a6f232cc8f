"""Double Rounding weight quantizer (Double Rounding paper, §3.1).

One learnable scale s_h is stored for the highest candidate bit-width h; the b-bit weights are
derived from the h-bit integers by a second rounding, so a single h-bit integer tensor serves
every lower bit-width:

    W_h = clip(round(W / s_h), -2^(h-1), 2^(h-1)-1)              (Eq. 1)
    W_b = clip(round(W_h / 2^(h-b)), -2^(b-1), 2^(b-1)-1)        (Eq. 2)
    W^_b = W_b * s_h * 2^(h-b)                                    (Eq. 3)

``round`` is ``torch.round`` (half to even) in both places, here and wherever integers are
derived from an exported file. Gradients follow Eq. 13: LSQ's straight-through gradient taken
at the effective scale s_h * 2^(h-b).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from mpqfx.quant.lsq import (STEP_EPS, OutputReuse, _LSQFunction, host_step, int_range, mse_init_steps,
                             save_for_lsq_backward)


def derive_integers(high_ints: torch.Tensor, high: int, bits: int) -> torch.Tensor:
    """b-bit integers from the stored h-bit integers (Eq. 2)."""
    if bits == high:
        return high_ints
    qmin, qmax = int_range(bits, signed=True)
    return torch.round(high_ints / 2 ** (high - bits)).clamp_(qmin, qmax)


class _DoubleRoundingFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w, scale, high: int, bits: int, grad_scale: float, reuse: OutputReuse | None):  # type: ignore[override]
        w = w.to(scale.dtype)
        scale = scale.clamp(min=STEP_EPS)
        buffer, ticket = reuse.take(w) if reuse is not None else (None, 0)
        high_ints = torch.div(w, scale, out=buffer).round_().clamp_(*int_range(high, signed=True))  # Eq. 1
        effective = scale * 2 ** (high - bits)
        s = host_step(effective)
        out = derive_integers(high_ints, high, bits).mul_(s)  # Eq. 2, 3
        # Eq. 13: LSQ's gradient at the effective scale, passed to s_h unchanged
        save_for_lsq_backward(ctx, w, effective, s, out, *int_range(bits, signed=True), grad_scale, reuse, ticket)
        return out

    backward = _LSQFunction.backward


class DoubleRoundingQuantizer(nn.Module):
    """Weight quantizer with one shared scale for the highest bit-width (same interface as MultiBitLSQ)."""

    def __init__(self, bits: Sequence[int]):
        super().__init__()
        self.bits = tuple(sorted(bits))
        self.high = self.bits[-1]
        self.signed = True
        self.scale = nn.Parameter(torch.tensor(1.0))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))
        self._reuse = OutputReuse()

    @torch.no_grad()
    def init_steps(self, w: torch.Tensor) -> None:
        """Fit s_h to the weights at the highest bit-width (lower bits inherit it)."""
        self.scale.copy_(mse_init_steps(w, [int_range(self.high, True)])[0])
        self.initialized.fill_(True)

    def step(self, bits: int) -> torch.Tensor:
        """The effective step of ``bits``: s_h * 2^(h - bits)."""
        return self.scale * 2 ** (self.high - bits)

    def integers(self, w: torch.Tensor, bits: int | None = None) -> torch.Tensor:
        """Integer weights at ``bits`` (default: the stored highest-bit ones), as float values."""
        with torch.no_grad():
            high_ints = torch.round(w / self.scale.clamp(min=STEP_EPS)).clamp_(*int_range(self.high, True))
            return derive_integers(high_ints, self.high, self.high if bits is None else bits)

    def forward(self, w: torch.Tensor, bits: int | None, exclusive: bool = False) -> torch.Tensor:
        """``w`` fake-quantized at ``bits`` (None: ``w`` itself); ``exclusive`` as in ``MultiBitLSQ.forward``."""
        if bits is None:
            return w
        if bits not in self.bits:
            raise ValueError(f"weight bit-width {bits} not in {list(self.bits)}")
        grad_scale = 1.0 / math.sqrt(w.numel() * int_range(bits, True)[1])
        return _DoubleRoundingFunction.apply(w, self.scale, self.high, bits, grad_scale,
                                             self._reuse if exclusive and torch.is_grad_enabled() else None)

    def extra_repr(self) -> str:
        return f"bits={list(self.bits)}, stored={self.high}-bit"
