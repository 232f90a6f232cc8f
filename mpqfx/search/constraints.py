"""Search budgets: BitOPs, model size and average bit-width, absolute or relative to a uniform policy.

A target string is either a bare BitOPs budget (``"4.5G"``, ``"uniform:4"``, ``"uniform:4/8"``)
or comma-separated ``key=value`` terms: ``bitops=4.5G``, ``size=2.5MB`` (also ``KB``, ``GB``,
``B``, ``bits``), ``size=8x`` (compression ratio against float32), ``size=uniform:4``,
``avg=3.5``, ``avg=uniform:4``. Every term must hold.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping

from mpqfx.cost.report import bitops as cost_report
from mpqfx.errors import MpqfxError
from mpqfx.graph.layer_info import LayerInfo
from mpqfx.quant.policy import Layers, Policy, layer_table

UNITS = {"": 1, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
SIZE_UNITS = {"bits": 1, "B": 8, "KB": 8e3, "MB": 8e6, "GB": 8e9}


class InfeasibleBudgetError(MpqfxError):
    """A budget below what the layer restrictions can reach; the message states the minimum."""


class TargetError(MpqfxError, ValueError):
    """A target string that does not parse."""


@dataclass(frozen=True)
class Constraints:
    """Upper bounds a policy must meet; ``None`` leaves a quantity free.

    ``bitops``: total BitOPs; ``size_bits``: model size in bits (quantized weights at their
    bit-widths + every other parameter at 32); ``avg_bits``: the mean weight bit-width and the
    mean activation bit-width over all quantized layers (both must be at most this).
    """

    bitops: float | None = None
    size_bits: float | None = None
    avg_bits: float | None = None
    label: str = ""

    def measure(self, net_or_layers: Layers, policy: Policy) -> dict[str, float]:
        """BitOPs, size in bits and mean weight/activation bits of ``policy``."""
        report = cost_report(net_or_layers, policy)
        return {"bitops": report.total, "size_bits": report.size_bits,
                "avg_w_bits": policy.mean_bits("w"), "avg_a_bits": policy.mean_bits("a")}

    def satisfied_by(self, net_or_layers: Layers, policy: Policy, slack: float = 1e-9) -> bool:
        return not self.violations(net_or_layers, policy, slack=slack)

    def violations(self, net_or_layers: Layers, policy: Policy, fixed_bitops: float = 0.0,
                   fixed_size_bits: float = 0.0, slack: float = 1e-9) -> list[str]:
        """Every bound ``policy`` breaks, with both values ("BitOPs 4.6G > 4.5G"); ``fixed_*`` are
        added to the measured totals (the parts outside ``net_or_layers``, as the ILP counts them)."""
        m = self.measure(net_or_layers, policy)
        checks = [("BitOPs", self.bitops, m["bitops"] + fixed_bitops, format_count),
                  ("size", self.size_bits, m["size_bits"] + fixed_size_bits, format_size),
                  ("mean weight bits", self.avg_bits, m["avg_w_bits"], "{:.4g}".format),
                  ("mean activation bits", self.avg_bits, m["avg_a_bits"], "{:.4g}".format)]
        return [f"{what} {fmt(value)} > {fmt(limit)}" for what, limit, value, fmt in checks
                if limit is not None and value > limit * (1 + slack)]

    def check_feasible(self, net_or_layers: Layers) -> None:
        """Raise InfeasibleBudgetError naming the smallest reachable value of the first budget that is too tight."""
        lowest = Policy.min(layer_table(net_or_layers))
        m = self.measure(net_or_layers, lowest)
        rule = _restriction_words(layer_table(net_or_layers))
        if self.bitops is not None and self.bitops < m["bitops"]:
            raise InfeasibleBudgetError(f"BitOPs target {format_count(self.bitops)} is below the minimum "
                                        f"{format_count(m['bitops'])} reachable {rule}")
        if self.size_bits is not None and self.size_bits < m["size_bits"]:
            raise InfeasibleBudgetError(f"size target {format_size(self.size_bits)} is below the minimum "
                                        f"{format_size(m['size_bits'])} reachable {rule}")
        if self.avg_bits is not None and self.avg_bits < max(m["avg_w_bits"], m["avg_a_bits"]):
            raise InfeasibleBudgetError(f"average bit-width target {self.avg_bits:g} is below the minimum "
                                        f"{max(m['avg_w_bits'], m['avg_a_bits']):.3g} reachable {rule}")

    def describe(self) -> str:
        parts = []
        if self.bitops is not None:
            parts.append(f"BitOPs <= {format_count(self.bitops)}")
        if self.size_bits is not None:
            parts.append(f"size <= {format_size(self.size_bits)}")
        if self.avg_bits is not None:
            parts.append(f"avg bits <= {self.avg_bits:g}")
        return ", ".join(parts) or "no constraint"


def _restriction_words(layers: list[LayerInfo]) -> str:
    fixed = {l.w_bits[0] for l in layers if l.role.value != "normal" and len(l.w_bits) == 1}
    depthwise = any(l.kind.value == "depthwise" for l in layers)
    words = []
    if fixed:
        words.append(f"first/last at {'/'.join(map(str, sorted(fixed)))} bits")
    if depthwise:
        words.append("depthwise convs at their smallest allowed bits")
    return "with " + " and ".join(words) if words else "with every layer at its smallest bit-width"


def format_count(value: float) -> str:
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{unit}"
    return f"{value:.3g}"


def format_size(bits: float) -> str:
    for unit in ("GB", "MB", "KB"):
        if bits >= SIZE_UNITS[unit]:
            return f"{bits / SIZE_UNITS[unit]:.3g}{unit}"
    return f"{bits / 8:.3g}B"


def candidate_bits(net_or_layers: Layers) -> tuple[list[int], list[int]]:
    """The weight and the activation bit-widths the searchable layers may take (every layer's when
    the rules fix them all), ascending."""
    table = list(layer_table(net_or_layers))
    searchable = [l for l in table if l.role.value == "normal"] or table
    return sorted({b for l in searchable for b in l.w_bits}), sorted({b for l in searchable for b in l.a_bits})


_NUMBER = r"(\d+(?:\.\d*)?(?:[eE][+-]?\d+)?)"


def _uniform(text: str, table: list[LayerInfo]) -> Policy | None:
    """The uniform policy ``uniform:W`` or ``uniform:W/A`` names; its bit-widths must be candidates
    of the searchable layers (first/last and depthwise layers take their nearest allowed bits)."""
    m = re.fullmatch(r"uniform:(\d+)(?:/(\d+))?", text)
    if not m:
        return None
    w = int(m.group(1))
    a = int(m.group(2)) if m.group(2) else w
    for bits, candidates, kind in zip((w, a), candidate_bits(table), ("weight", "activation")):
        if bits not in candidates:
            raise TargetError(f"target {text!r}: {bits} is not a candidate {kind} bit-width "
                              f"(candidates: {', '.join(map(str, candidates))})")
    return Policy.uniform(table, w, a)


def parse_target(text: str, net_or_layers: Layers) -> Constraints:
    """Parse a target string (see the module docstring) for this supernet or layer table."""
    table = list(layer_table(net_or_layers))
    probe = Constraints()
    values: dict[str, float] = {}
    for term in [t.strip() for t in str(text).split(",") if t.strip()]:
        key, _, value = term.rpartition("=") if "=" in term else ("bitops", "", term)
        key = key.strip().lower()
        value = value.strip()
        if key in values:
            raise TargetError(f"target {text!r}: {key} given twice")
        if key == "bitops":
            uniform = _uniform(value, table)
            if uniform is not None:
                values[key] = probe.measure(net_or_layers, uniform)["bitops"]
            elif m := re.fullmatch(_NUMBER + r"\s*([KMGT]?)", value, flags=re.I):
                values[key] = float(m.group(1)) * UNITS[m.group(2).upper()]
        elif key == "size":
            uniform = _uniform(value, table)
            if uniform is not None:
                values[key] = probe.measure(net_or_layers, uniform)["size_bits"]
            elif m := re.fullmatch(_NUMBER + r"\s*x", value, flags=re.I):
                full = cost_report(net_or_layers, Policy.bypass(table)).size_bits
                values[key] = full / float(m.group(1))
            elif m := re.fullmatch(_NUMBER + r"\s*(bits|B|KB|MB|GB)", value, flags=re.I):
                unit = next(u for u in SIZE_UNITS if u.lower() == m.group(2).lower())
                values[key] = float(m.group(1)) * SIZE_UNITS[unit]
        elif key in ("avg", "avg_bits"):
            key = "avg"
            uniform = _uniform(value, table)
            if uniform is not None:
                values[key] = max(uniform.mean_bits("w"), uniform.mean_bits("a"))
            elif re.fullmatch(_NUMBER, value):
                values[key] = float(value)
        else:
            raise TargetError(f"target {text!r}: unknown key {key!r} (allowed: bitops, size, avg)")
        if key not in values:
            raise TargetError(f"target {text!r}: cannot read {key} value {value!r} "
                              "(e.g. 4.5G or uniform:4; size=2.5MB or size=8x; avg=3.5)")
        if not values[key] > 0:
            raise TargetError(f"target {text!r}: {key} must be positive")
    if not values:
        raise TargetError(f"target {text!r} is empty")
    return Constraints(values.get("bitops"), values.get("size"), values.get("avg"), label=str(text))


def constraints_from(spec: "Constraints | str | Mapping[str, object]", net_or_layers: Layers) -> Constraints:
    """Accept a Constraints, a target string, or a mapping like {"bitops": "4.5G", "size": "8x"}."""
    if isinstance(spec, Constraints):
        return spec
    if isinstance(spec, Mapping):
        return parse_target(",".join(f"{k}={v}" for k, v in spec.items()), net_or_layers)
    return parse_target(spec, net_or_layers)
