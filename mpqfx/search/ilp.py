"""``ilp``: one binary variable per (layer, (w_bits, a_bits)), exactly one per layer (LIMPQ Eq. 4).

Objectives: LIMPQ's indicators (Eq. 4: sum of s_a + alpha * s_w; the supernet's learned steps, or
external ones, mpqfx/search/indicators.py), Hessian-trace weighted bits (Double Rounding Alg. 2),
measured per-layer loss increases or their Fisher estimate (``estimate``, mpqfx/search/sensitivity.py,
mpqfx/search/fisher.py) or user-given per-layer costs;
constraints: BitOPs, size, average bits. Solved exactly and validated (mpqfx/search/solver.py).
``pareto=True`` sweeps the budget from the smallest reachable value to the target and keeps the
distinct non-dominated optima (Alg. 2's iterative scheme, with its per-layer forcing when
``alg2_variants`` is on).

An additive objective misjudges policies that lower many layers at once (their errors compound).
``floors=True`` guards against that: the ILP is solved again with every layer held at or above
each candidate bit-width in turn, each distinct solution is measured on the search images (after
re-estimating its BatchNorm statistics on the calibration images, as the reported accuracies
are; mpqfx/search/candidates.py), and the one with the lowest measured loss is returned (the
top-k verification of Bit-Mixer §4.2). ``split_floors=True`` floors weights and activations
separately, every (weight floor, activation floor) pair: low-bit activations and low-bit weights
cost a network very differently, and the joint floors alone cannot offer "weights low,
activations at least b". Without search images (a bare supernet file, external indicators on a
model) the floors are skipped and the result says so.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from typing import Mapping, Sequence

from mpqfx.cost.report import bitops as cost_report
from mpqfx.errors import MpqfxError
from mpqfx.graph.layer_info import LayerInfo
from mpqfx.quant.policy import Policy, layer_table
from mpqfx.search.backend import SearchBackend, SearchError, SearchResult, register_search
from mpqfx.search.candidates import uniform_baselines
from mpqfx.search.constraints import Constraints
from mpqfx.search.indicators import load_indicators
from mpqfx.search.options import DATA_OBJECTIVES, IlpOptions
from mpqfx.search.sensitivity import cached_sensitivities
from mpqfx.search.solver import IlpSolution, Pair, SolverError, pairs, solve_ilp


def limpq_coefficients(layers: Sequence[LayerInfo], indicators, alpha: float) -> dict[str, dict[Pair, float]]:
    """LIMPQ Eq. 4: s_a,j + alpha * s_w,i for the pair (b_i, b_j) of each layer; a layer with one
    pair and no indicators (fixed by the rules) costs 0."""
    return {l.name: {(w, a): indicators[l.name]["a"][a] + alpha * indicators[l.name]["w"][w] for w, a in pairs(l)}
            if l.name in indicators or len(pairs(l)) > 1 else {pairs(l)[0]: 0.0} for l in layers}


def hessian_coefficients(layers: Sequence[LayerInfo], traces: Mapping[str, float]) -> dict[str, dict[Pair, float]]:
    """Double Rounding Alg. 2's t_l / n_l * b_l, with b_l = (w + a) / 2, negated: minimising it gives
    the bits to the layers with the largest trace per parameter (the paper's intent, "higher bits
    for sensitive layers"; minimising the positive form would do the opposite)."""
    return {l.name: {(w, a): -traces[l.name] / l.params * (w + a) / 2 for w, a in pairs(l)} for l in layers}


def cost_coefficients(layers: Sequence[LayerInfo], costs) -> dict[str, dict[Pair, float]]:
    """User costs per layer: {"w": {bits: c}, "a": {bits: c}} (added) or {"w/a" or (w, a): c}."""
    out = {}
    for l in layers:
        table = costs.get(l.name)
        if table is None:
            raise MpqfxError(f"costs: no entry for layer {l.name!r}")
        row = {}
        for w, a in pairs(l):
            if "w" in table or "a" in table:
                row[(w, a)] = float(table.get("w", {}).get(w, 0.0)) + float(table.get("a", {}).get(a, 0.0))
            else:
                row[(w, a)] = float(table.get((w, a), table.get(f"{w}/{a}", 0.0)))
        out[l.name] = row
    return out


def fixed_costs(net_or_layers) -> tuple[float, float]:
    """BitOPs and size bits that no layer choice changes (float layers, biases, norms)."""
    table = layer_table(net_or_layers)
    names = {l.name for l in table}
    report = cost_report(net_or_layers, Policy.min(table))
    bitops = sum(r.bitops for r in report.layers if r.name not in names)
    size = report.size_bits - sum(r.weight_bits for r in report.layers if r.name in names)
    return float(bitops), float(size)


def _primary(constraints: Constraints) -> str:
    return next(k for k in ("bitops", "size_bits", "avg_bits") if getattr(constraints, k) is not None)


@register_search("ilp")
class IlpSearch(SearchBackend):
    """One-time ILP over (w_bits, a_bits) pairs (LIMPQ Eq. 4), optionally a Pareto sweep (DR Alg. 2)."""

    options_cls = IlpOptions

    @classmethod
    def uses_data(cls, options: IlpOptions) -> bool:
        return options.objective in DATA_OBJECTIVES or options.verifies

    @functools.cached_property
    def coefficients(self) -> dict[str, dict[Pair, float]]:
        """The objective's per-(layer, pair) coefficients; they do not depend on the budget, so one
        instance searching several budgets (``search_many``) computes them once."""
        o, ctx, layers = self.options, self.context, self.net.layers
        if o.objective == "limpq":
            from mpqfx.train.limpq import importance_indicators
            source = ctx.indicators if ctx.indicators is not None else importance_indicators(self.net)
            return limpq_coefficients(layers, load_indicators(source, layers), o.alpha)
        if o.objective == "hessian":
            traces = ctx.traces
            if traces is None:
                from mpqfx.hessian import hutchinson_traces
                traces = hutchinson_traces(self.net, self.require_batches("objective: hessian")[:8])
            return hessian_coefficients(layers, traces)
        if o.objective == "sensitivity":
            return cost_coefficients(layers, cached_sensitivities(self.net, self.require_batches("objective: sensitivity"), ctx.cache_dir,
                                                                     self.report, o.estimate))
        if ctx.costs is None:
            raise SearchError("ILP objective 'costs' needs per-layer costs (mpqfx.search(..., costs=...))")
        return cost_coefficients(layers, ctx.costs)

    def _solve(self, constraints: Constraints, coef, offsets, **kwargs) -> IlpSolution:
        return solve_ilp(self.net.layers, coef, constraints, *offsets, time_limit=self.options.time_limit, **kwargs)

    def run(self, constraints: Constraints) -> SearchResult:
        coef = self.coefficients
        offsets = fixed_costs(self.net)
        best = self._solve(constraints, coef, offsets)
        if self.options.verifies and self.context.batches:
            return self._verified(constraints, coef, offsets, best)
        if not self.options.pareto:
            skipped = {"floors": "skipped: no search images"} if self.options.verifies else {}
            return self.result(best.policy, constraints, status=best.status, objective=best.objective,
                               solve_seconds=best.seconds, **skipped)
        key = _primary(constraints)
        lowest = constraints.measure(self.net, Policy.min(self.net))
        low = {"bitops": lowest["bitops"], "size_bits": lowest["size_bits"],
               "avg_bits": max(lowest["avg_w_bits"], lowest["avg_a_bits"])}[key]
        target = getattr(constraints, key)
        found: dict[Policy, float] = {best.policy: best.objective}
        solves = [best]
        for i in range(self.options.pareto_points):
            budget = low + (target - low) * i / (self.options.pareto_points - 1)
            sweep = dataclasses.replace(constraints, **{key: budget})
            try:
                sol = self._solve(sweep, coef, offsets)
            except SolverError:
                continue
            solves.append(sol)
            found.setdefault(sol.policy, sol.objective)
            if self.options.alg2_variants:  # Alg. 2: pin one layer to each lower bit-width in turn
                for layer in self.net.layers:
                    for bits in [b for b in layer.w_bits if b < sol.policy[layer.name].w]:
                        try:
                            variant = self._solve(sweep, coef, offsets, forced={layer.name: bits})
                        except SolverError:
                            continue
                        solves.append(variant)
                        found.setdefault(variant.policy, variant.objective)
        front = pareto_front(self.net, found)
        return self.result(best.policy, constraints, policies=front, status=_status(solves), objective=best.objective,
                           solves=len(solves), solve_seconds=sum(s.seconds for s in solves))

    def _verified(self, constraints: Constraints, coef, offsets, best: IlpSolution) -> SearchResult:
        """The lowest-loss policy among the optimum and the optima with every layer's bits floored,
        measured together with the uniform baselines that the search is then compared with."""
        solves = {best.policy: best}
        for w_floor, a_floor in floor_pairs(self.net.layers, self.options.split_floors)[1:]:  # [0]: the optimum
            floored = [floored_layer(l, w_floor, a_floor) for l in self.net.layers]
            try:
                sol = solve_ilp(floored, coef, constraints, *offsets, time_limit=self.options.time_limit)
            except SolverError:
                continue  # these floors do not meet the budget
            solves.setdefault(sol.policy, sol)
        baselines = [p for _, p in uniform_baselines(self.net, constraints)]
        measured = self.meter.measure(list(solves) + baselines, "candidates")
        chosen = min(solves, key=lambda p: (measured[p].loss, solves[p].objective))
        return self.result(chosen, constraints, policies=[chosen], status=_status(solves.values()),
                           objective=solves[chosen].objective, solves=len(solves),
                           solve_seconds=sum(s.seconds for s in solves.values()),
                           candidate_losses=sorted(measured[p].loss for p in solves))


def _status(solves) -> str:
    """"optimal" when every solve was proven optimal, else CBC's time-limit status."""
    return next((s.status for s in solves if not s.proven), "optimal")


def floor_pairs(layers: Sequence[LayerInfo], split: bool) -> list[Pair]:
    """The (weight floor, activation floor) pairs ``floors`` tries: every pair of the layers' bit-widths
    when ``split``, else equal floors; the first pair, the lowest bit-widths, floors nothing."""
    levels = sorted({b for l in layers for b in (*l.w_bits, *l.a_bits)})
    return list(itertools.product(levels, levels) if split else zip(levels, levels))


def floored_layer(layer: LayerInfo, w_floor: int, a_floor: int) -> LayerInfo:
    """The layer with only the weight and activation bit-widths at or above their floors (its
    highest one where none is)."""
    def keep(bits: tuple[int, ...], floor: int) -> tuple[int, ...]:
        return tuple(b for b in bits if b >= floor) or (max(bits),)
    return dataclasses.replace(layer, w_bits=keep(layer.w_bits, w_floor), a_bits=keep(layer.a_bits, a_floor))


def pareto_front(net, objectives: Mapping[Policy, float]) -> list[Policy]:
    """Distinct policies not beaten on both BitOPs and objective, sorted by BitOPs."""
    costed = sorted(((cost_report(net, p).total, objectives[p], p) for p in objectives), key=lambda t: (t[0], t[1]))
    front, best = [], float("inf")
    for cost, objective, policy in costed:
        if objective < best - 1e-12:
            front.append(policy)
            best = objective
    return front
