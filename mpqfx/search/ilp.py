"""``ilp``: one binary variable per (layer, (w_bits, a_bits)), exactly one per layer (LIMPQ Eq. 4).

Objectives: LIMPQ's indicators (Eq. 4: sum of s_a + alpha * s_w), Hessian-trace weighted bits
(Double Rounding Alg. 2), measured per-layer loss increases (mpqfx/search/sensitivity.py) or
user-given per-layer costs; constraints: BitOPs, size, average bits.
Solved with PuLP's bundled CBC; any status but Optimal is an error. Every constraint has integer
coefficients, so right-hand sides are floored and CBC's preprocessing is off: the bundled CBC
2.10.3 otherwise declared a wrong point optimal on 3 of 400 random instances (brute-force check). ``pareto=True`` sweeps the
budget from the smallest reachable value to the target and keeps the distinct non-dominated
optima (Alg. 2's iterative scheme, with its per-layer forcing when ``alg2_variants`` is on).

An additive objective misjudges policies that lower many layers at once (their errors compound).
``floors=True`` guards against that: the ILP is solved again with every layer held at or above
each candidate bit-width in turn, each distinct solution is evaluated on the search data (after
re-estimating its BatchNorm statistics on the calibration images, when given, as the reported
accuracies are), and the one with the lowest measured loss is returned (the top-k verification
of Bit-Mixer §4.2). ``split_floors=True`` floors weights and activations separately, every
(weight floor, activation floor) pair: low-bit activations and low-bit weights cost a network
very differently, and the joint floors alone cannot offer "weights low, activations at least b".
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import time
import warnings
from dataclasses import dataclass
from typing import Mapping, Sequence

import pulp

from mpqfx.cost.report import bitops as cost_report
from mpqfx.errors import MpqfxError
from mpqfx.evaluate import evaluate, recalibrated_bn
from mpqfx.graph.layer_info import LayerInfo
from mpqfx.quant.policy import Policy, layer_table
from mpqfx.search.backend import SearchBackend, SearchError, SearchResult, register_search
from mpqfx.search.constraints import Constraints
from mpqfx.search.options import DATA_OBJECTIVES, IlpOptions
from mpqfx.search.sensitivity import cached_sensitivities

Pair = tuple[int, int]
Coefficients = Mapping[str, Mapping[Pair, float]]


class SolverError(MpqfxError):
    """The ILP solver did not prove an optimum (the message carries its status)."""


@dataclass
class IlpSolution:
    policy: Policy
    objective: float
    status: str
    seconds: float


def pairs(layer: LayerInfo) -> list[Pair]:
    return list(itertools.product(layer.w_bits, layer.a_bits))


def solve_ilp(layers: Sequence[LayerInfo], coefficients: Coefficients, constraints: Constraints,
              fixed_bitops: float = 0.0, fixed_size_bits: float = 0.0, forced: Mapping[str, int] | None = None,
              exclude: Sequence[Policy] = (), maximize: bool = False, time_limit: float = 60.0) -> IlpSolution:
    """Optimise ``sum coefficients[l][(w, a)] * x[l, w, a]`` with one pair per layer under ``constraints``.

    ``fixed_bitops``/``fixed_size_bits`` are the parts of the totals no variable controls (float
    layers, biases, norms). ``forced`` pins a layer's weight bit-width (Alg. 2); ``exclude`` adds
    no-good cuts so that already found policies are not returned again (k-best enumeration).
    """
    forced = forced or {}
    prob = pulp.LpProblem("mpqfx", pulp.LpMaximize if maximize else pulp.LpMinimize)
    x: dict[tuple[str, Pair], pulp.LpVariable] = {}
    for i, layer in enumerate(layers):
        for w, a in pairs(layer):
            if layer.name in forced and forced[layer.name] != w:
                continue
            x[layer.name, (w, a)] = prob.add_variable(f"x{i}_{w}_{a}", 0, 1, cat=pulp.LpBinary)
    by_layer = {l.name: [(p, v) for (n, p), v in x.items() if n == l.name] for l in layers}
    for layer in layers:
        if not by_layer[layer.name]:
            raise SolverError(f"layer {layer.name!r}: no allowed bit pair left to choose")
        prob += pulp.lpSum(v for _, v in by_layer[layer.name]) == 1  # Eq. 4a
    prob += pulp.lpSum(coefficients[n][p] * v for (n, p), v in x.items())  # Eq. 4
    if constraints.bitops is not None:  # Eq. 4b
        macs = {l.name: l.macs for l in layers}
        prob += pulp.lpSum(macs[n] * p[0] * p[1] * v for (n, p), v in x.items()) <= math.floor(constraints.bitops - fixed_bitops)
    if constraints.size_bits is not None:
        params = {l.name: l.params for l in layers}
        prob += pulp.lpSum(params[n] * p[0] * v for (n, p), v in x.items()) <= math.floor(constraints.size_bits - fixed_size_bits)
    if constraints.avg_bits is not None:
        total = math.floor(constraints.avg_bits * len(layers) + 1e-9)
        prob += pulp.lpSum(p[0] * v for (_, p), v in x.items()) <= total
        prob += pulp.lpSum(p[1] * v for (_, p), v in x.items()) <= total
    for policy in exclude:  # no-good cut: at least one layer differs from this policy
        chosen = [x[l.name, tuple(policy[l.name])] for l in layers if (l.name, tuple(policy[l.name])) in x]
        if len(chosen) == len(layers):
            prob += pulp.lpSum(chosen) <= len(layers) - 1
    start = time.perf_counter()
    with warnings.catch_warnings():  # PuLP 3.x announces its 4.0 API; the bundled CBC is what 3.x ships
        warnings.simplefilter("ignore", DeprecationWarning)
        prob.solve(pulp.PULP_CBC_CMD(msg=False, timeLimit=time_limit, options=["preprocess off"]))
    seconds = time.perf_counter() - start
    status = pulp.LpStatus[prob.status]
    if status != "Optimal":
        raise SolverError(f"ILP solver status {status!r} for {constraints.describe()} after {seconds:.2f}s")
    chosen = {n: p for (n, p), v in x.items() if v.value() is not None and v.value() > 0.5}
    return IlpSolution(Policy(chosen), float(pulp.value(prob.objective) or 0.0), status, seconds)




def limpq_coefficients(layers: Sequence[LayerInfo], indicators, alpha: float) -> dict[str, dict[Pair, float]]:
    """LIMPQ Eq. 4: s_a,j + alpha * s_w,i for the pair (b_i, b_j) of each layer."""
    return {l.name: {(w, a): indicators[l.name]["a"][a] + alpha * indicators[l.name]["w"][w] for w, a in pairs(l)}
            for l in layers}


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
            return limpq_coefficients(layers, ctx.indicators or importance_indicators(self.net), o.alpha)
        if o.objective == "hessian":
            traces = ctx.traces
            if traces is None:
                from mpqfx.hessian import hutchinson_traces
                traces = hutchinson_traces(self.net, self.require_batches("objective: hessian")[:8])
            return hessian_coefficients(layers, traces)
        if o.objective == "sensitivity":
            return cost_coefficients(layers, cached_sensitivities(self.net, self.require_batches("objective: sensitivity"), ctx.cache_dir))
        if ctx.costs is None:
            raise SearchError("ILP objective 'costs' needs per-layer costs (mpqfx.search(..., costs=...))")
        return cost_coefficients(layers, ctx.costs)

    def _solve(self, constraints: Constraints, coef, offsets, **kwargs) -> IlpSolution:
        return solve_ilp(self.net.layers, coef, constraints, *offsets, time_limit=self.options.time_limit, **kwargs)

    def run(self, constraints: Constraints) -> SearchResult:
        coef = self.coefficients
        offsets = fixed_costs(self.net)
        best = self._solve(constraints, coef, offsets)
        if self.options.verifies:
            return self._verified(constraints, coef, offsets, best)
        if not self.options.pareto:
            return self.result(best.policy, constraints, status=best.status, objective=best.objective,
                               solve_seconds=best.seconds)
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
        return self.result(best.policy, constraints, policies=front, status=best.status, objective=best.objective,
                           solves=len(solves), solve_seconds=sum(s.seconds for s in solves))

    def _verified(self, constraints: Constraints, coef, offsets, best: IlpSolution) -> SearchResult:
        """The lowest-loss policy among the optimum and the optima with every layer's bits floored."""
        solves = {best.policy: best}
        for w_floor, a_floor in floor_pairs(self.net.layers, self.options.split_floors)[1:]:  # [0]: the optimum
            floored = [floored_layer(l, w_floor, a_floor) for l in self.net.layers]
            try:
                sol = solve_ilp(floored, coef, constraints, *offsets, time_limit=self.options.time_limit)
            except SolverError:
                continue  # these floors do not meet the budget
            solves.setdefault(sol.policy, sol)
        batches = self.require_batches("floors: true")
        losses = {policy: candidate_loss(self.net, policy, batches, self.context.calibration) for policy in solves}
        chosen = min(solves, key=lambda p: (losses[p], solves[p].objective))
        return self.result(chosen, constraints, policies=[chosen], status=best.status,
                           objective=solves[chosen].objective, solves=len(solves),
                           solve_seconds=sum(s.seconds for s in solves.values()),
                           candidate_losses=sorted(losses.values()))


def floor_pairs(layers: Sequence[LayerInfo], split: bool) -> list[Pair]:
    """The (weight floor, activation floor) pairs ``floors`` tries: every pair of the layers' bit-widths
    when ``split``, else equal floors; the first pair, the lowest bit-widths, floors nothing."""
    levels = sorted({b for l in layers for b in (*l.w_bits, *l.a_bits)})
    return list(itertools.product(levels, levels) if split else zip(levels, levels))


def candidate_loss(net, policy: Policy, batches, calibration) -> float:
    """How ``floors`` scores a candidate: the loss on the search batches with BatchNorm statistics
    re-estimated on the calibration images (when given), as for the reported accuracies."""
    with recalibrated_bn(net, policy, calibration):
        return evaluate(net, policy, batches).loss


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
