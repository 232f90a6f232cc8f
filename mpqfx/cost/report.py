"""BitOPs and model size of a policy: pure functions of the layer table and the policy.

BitOPs = MACs x w_bits x a_bits per layer, summed (depthwise MACs = k*k*C*H*W). Float layers
(bypass, or weights mpqfx left in float) count at 32 x 32: the rule counts what the model computes.
Size = quantized weights at their bit-width + every other parameter at 32 bits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mpqfx.graph.layer_info import SkippedLayer
from mpqfx.quant.layers import LayerBits
from mpqfx.quant.policy import Layers, Policy, layer_table

FLOAT_BITS = 32


def _bits(value: int | None) -> int:
    return FLOAT_BITS if value is None else value


@dataclass(frozen=True)
class LayerCost:
    name: str
    kind: str
    macs: int
    params: int
    bits: LayerBits  # None: float

    @property
    def bitops(self) -> int:
        return self.macs * _bits(self.bits.w) * _bits(self.bits.a)

    @property
    def weight_bits(self) -> int:
        return self.params * _bits(self.bits.w)


@dataclass(frozen=True)
class CostReport:
    """Per-layer costs of one policy and their totals (``total`` is the BitOPs)."""

    layers: tuple[LayerCost, ...]
    other_params: int = 0  # biases, norms, embeddings...: always float

    @property
    def total(self) -> int:
        return sum(l.bitops for l in self.layers)

    @property
    def macs(self) -> int:
        return sum(l.macs for l in self.layers)

    @property
    def size_bits(self) -> int:
        return sum(l.weight_bits for l in self.layers) + FLOAT_BITS * self.other_params

    @property
    def float_size_bits(self) -> int:
        return FLOAT_BITS * (sum(l.params for l in self.layers) + self.other_params)

    @property
    def compression(self) -> float:
        """Size of the float32 model divided by the size under this policy."""
        return self.float_size_bits / max(self.size_bits, 1)

    def rows(self) -> list[dict[str, Any]]:
        return [{"layer": l.name, "kind": l.kind, "macs": l.macs, "params": l.params,
                 "w_bits": l.bits.w, "a_bits": l.bits.a, "bitops": l.bitops, "weight_bits": l.weight_bits}
                for l in self.layers]


def bitops(net_or_layers: Layers, policy: Policy) -> CostReport:
    """Per-layer BitOPs table and total of ``policy`` (``.total``), with model size.

    ``net_or_layers`` is a Supernet (its float-kept weights and other parameters are counted
    too) or a plain sequence of LayerInfo (only those layers).

    Example:
        >>> report = mpqfx.bitops(net, mpqfx.Policy.uniform(net, 4))
        >>> report.total, report.size_bits, report.compression
    """
    table = layer_table(net_or_layers)
    policy.validate(table)
    rows = [LayerCost(l.name, l.kind.value, l.macs, l.params, policy[l.name]) for l in table]
    skipped: tuple[SkippedLayer, ...] = getattr(net_or_layers, "skipped", ())
    rows += [LayerCost(s.name, f"float ({s.module_type})", s.macs, s.params, LayerBits(None, None)) for s in skipped]
    other = getattr(net_or_layers, "float_params", 0) - sum(s.params for s in skipped)
    return CostReport(tuple(rows), max(other, 0))


def model_size(net_or_layers: Layers, policy: Policy) -> int:
    """Model size in bits under ``policy``: weights at their bit-widths, everything else at 32."""
    return bitops(net_or_layers, policy).size_bits
