"""Measured per-layer sensitivities: the loss increase on a fixed evaluation set when one layer's
weights (or its input activations) alone drop from the max policy to a lower bit-width.

With costs ``c[l][(w, a)] = dw[l][w] + da[l][a]`` the ILP minimises the sum of per-layer loss
increases under the budget, an additive surrogate of the loss of the whole policy (the
measured-sensitivity + ILP/Pareto scheme of ZeroQ, Cai et al. CVPR'20, and HAWQ-V3's ILP). It
needs sum_l (|w_bits| - 1 + |a_bits| - 1) evaluations, each re-running only the part of the
network downstream of the changed layer (``IncrementalEvaluator``); BatchNorm uses the
statistics each Transitional BN set learned in training, as the greedy search does.
"""

from __future__ import annotations

from typing import Sequence

from mpqfx.evaluate import IncrementalEvaluator
from mpqfx.quant.policy import Policy
from mpqfx.supernet import Supernet

Sensitivities = dict[str, dict[str, dict[int, float]]]  # {layer: {"w"|"a": {bits: loss increase}}}


def measure_sensitivities(net: Supernet, batches: Sequence) -> tuple[Sensitivities, int]:
    """Per-layer, per-bit loss increases against the max policy, and how many evaluations it took."""
    base = Policy.max(net)
    evaluator = IncrementalEvaluator(net, batches)
    reference = evaluator.set_base(base).loss
    out: Sensitivities = {}
    evaluations = 0
    for layer in net.layers:
        top = base[layer.name]
        table: dict[str, dict[int, float]] = {"w": {top.w: 0.0}, "a": {top.a: 0.0}}
        for which, allowed in (("w", layer.w_bits), ("a", layer.a_bits)):
            for bits in allowed:
                if bits in table[which]:
                    continue
                changed = (bits, top.a) if which == "w" else (top.w, bits)
                table[which][bits] = evaluator.evaluate(base.replace(**{layer.name: changed}), [layer.name]).loss - reference
                evaluations += 1
        out[layer.name] = {which: _monotone(costs) for which, costs in table.items()}
    return out, evaluations


def _monotone(costs: dict[int, float]) -> dict[int, float]:
    """Non-negative and never smaller at fewer bits (a measured dip below a higher bit's cost is noise)."""
    out, running = {}, 0.0
    for bits in sorted(costs, reverse=True):
        running = max(running, costs[bits])
        out[bits] = running
    return out
