"""Measured per-layer sensitivities: the loss increase on a fixed evaluation set when one layer's
weights (or its input activations) alone drop from the max policy to a lower bit-width.

With costs ``c[l][(w, a)] = dw[l][w] + da[l][a]`` the ILP minimises the sum of per-layer loss
increases under the budget, an additive surrogate of the loss of the whole policy (the
measured-sensitivity + ILP/Pareto scheme of ZeroQ, Cai et al. CVPR'20, and HAWQ-V3's ILP). It
needs sum_l (|w_bits| - 1 + |a_bits| - 1) evaluations, each re-running only the part of the
network downstream of the changed layer (``IncrementalEvaluator``); BatchNorm uses the
statistics each Transitional BN set learned in training, as the greedy search does.

``estimate="fisher"`` estimates the same table from one pass of gradients instead
(mpqfx/search/fisher.py). The table depends only on the supernet's state, the evaluation images
and the estimate, so it is kept in the run directory (``sensitivities.json``, keyed by a SHA-256
of the three): later searches of the same run with any budget read it instead of measuring again.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Sequence

from mpqfx.evaluate import IncrementalEvaluator
from mpqfx.integrity import digest
from mpqfx.io import atomic_write_text
from mpqfx.quant.policy import Policy
from mpqfx.supernet import Supernet

CACHE_NAME = "sensitivities.json"
CACHE_FORMAT = "mpqfx.sensitivities/1"

Sensitivities = dict[str, dict[str, dict[int, float]]]  # {layer: {"w"|"a": {bits: loss increase}}}


def measure_sensitivities(net: Supernet, batches: Sequence,
                          report: Callable[[str, int, int], None] | None = None) -> tuple[Sensitivities, int]:
    """Per-layer, per-bit loss increases against the max policy, and how many evaluations it took;
    ``report("sensitivities", done, total)`` follows the progress."""
    report = report or (lambda what, done, total: None)
    total = sum(len(l.w_bits) - 1 + len(l.a_bits) - 1 for l in net.layers)
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
                report("sensitivities", evaluations, total)
                changed = (bits, top.a) if which == "w" else (top.w, bits)
                table[which][bits] = evaluator.evaluate(base.replace(**{layer.name: changed}), [layer.name]).loss - reference
                evaluations += 1
        out[layer.name] = {which: _monotone(costs) for which, costs in table.items()}
    report("sensitivities", evaluations, total)
    return out, evaluations


def _monotone(costs: dict[int, float]) -> dict[int, float]:
    """Non-negative and never smaller at fewer bits (a measured dip below a higher bit's cost is noise)."""
    out, running = {}, 0.0
    for bits in sorted(costs, reverse=True):
        running = max(running, costs[bits])
        out[bits] = running
    return out


def sensitivities(net: Supernet, batches: Sequence, estimate: str = "measured",
                  report: Callable[[str, int, int], None] | None = None) -> tuple[Sensitivities, int]:
    """The table by ``estimate``: "measured" loss changes (and the evaluations they took) or the
    "fisher" estimate (mpqfx/search/fisher.py; 0 evaluations)."""
    if estimate == "fisher":
        from mpqfx.search.fisher import fisher_sensitivities
        return {layer: {which: _monotone(costs) for which, costs in kinds.items()}
                for layer, kinds in fisher_sensitivities(net, batches, report=report).items()}, 0
    return measure_sensitivities(net, batches, report)


def cached_sensitivities(net: Supernet, batches: Sequence, cache_dir: str | Path | None,
                         report: Callable[[str, int, int], None] | None = None,
                         estimate: str = "measured") -> Sensitivities:
    """``sensitivities``, read from / written to ``cache_dir/sensitivities.json`` when given."""
    if cache_dir is None:
        return sensitivities(net, batches, estimate, report)[0]
    path = Path(cache_dir) / CACHE_NAME
    identity = {"state": net.state_dict(), "batches": [list(batch) for batch in batches]}
    key = digest(identity if estimate == "measured" else {**identity, "estimate": estimate})
    try:
        cached = json.loads(path.read_text(encoding="utf-8"))
        if cached.get("format") == CACHE_FORMAT and cached.get("key") == key:
            return {layer: {which: {int(b): float(c) for b, c in costs.items()} for which, costs in kinds.items()}
                    for layer, kinds in cached["layers"].items()}
    except (OSError, ValueError, AttributeError, TypeError):
        pass  # no cache yet, or one that is unreadable: measure again
    table, evaluations = sensitivities(net, batches, estimate, report)
    atomic_write_text(path, json.dumps({"format": CACHE_FORMAT, "key": key, "estimate": estimate,
                                        "evaluations": evaluations, "layers": table}, indent=1))
    return table
