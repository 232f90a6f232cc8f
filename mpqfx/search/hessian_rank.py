"""``hessian``: Bit-Mixer's sub-net selection (§4.2).

The largest Hessian eigenvalue of every layer (power iteration at the max policy) forms the
cost vector v_C. Among the policies meeting the budget, those with the largest ranking cost
C_total = [b_0 ... b_N] . v_C (bits on the layers most sensitive to noise) are enumerated best
first (ILP k-best with no-good cuts, b_l = (w + a) / 2), the top ``top_k`` are evaluated on
data, and the most accurate (lowest loss on ties) is returned.
"""

from __future__ import annotations

import functools
import time

from mpqfx.evaluate import evaluate, recalibrated_bn
from mpqfx.hessian import top_eigenvalues
from mpqfx.quant.policy import Policy
from mpqfx.search.backend import SearchBackend, SearchResult, register_search
from mpqfx.search.constraints import Constraints
from mpqfx.search.options import HessianOptions
from mpqfx.search.ilp import fixed_costs
from mpqfx.search.solver import SolverError, pairs, solve_ilp


@register_search("hessian")
class HessianSearch(SearchBackend):
    """Rank budget-meeting policies by bits x top Hessian eigenvalue; evaluate the top-k; keep the best."""

    options_cls = HessianOptions

    @classmethod
    def uses_data(cls, options) -> bool:
        return True

    @functools.cached_property
    def eigenvalues(self) -> dict[str, float]:
        """Top Hessian eigenvalue per layer at the max policy (budget-independent: computed once per instance)."""
        o = self.options
        return top_eigenvalues(self.net, self.require_batches()[0], iters=o.power_iters, tol=o.tol,
                               policy=Policy.max(self.net))

    def run(self, constraints: Constraints) -> SearchResult:
        o = self.options
        batches = self.require_batches()
        start = time.perf_counter()
        eigen = self.eigenvalues
        coef = {l.name: {(w, a): eigen[l.name] * (w + a) / 2 for w, a in pairs(l)} for l in self.net.layers}
        offsets = fixed_costs(self.net)
        ranked: list[Policy] = []
        for _ in range(o.top_k):
            try:
                sol = solve_ilp(self.net.layers, coef, constraints, *offsets, exclude=ranked, maximize=True)
            except SolverError:
                break  # fewer than top_k policies meet the budget
            ranked.append(sol.policy)
        scored = []
        for policy in ranked:
            self.report("top-k policies", len(scored), len(ranked))
            with recalibrated_bn(self.net, policy, self.context.calibration[: o.recalibrate_batches]):
                result = evaluate(self.net, policy, batches)
            scored.append((-result.accuracy, result.loss, len(scored), policy))
        best = min(scored)[3]
        return self.result(best, constraints, policies=ranked, eigenvalues=eigen, evaluated=len(ranked),
                           accuracies=[-s[0] for s in scored], seconds=time.perf_counter() - start)
