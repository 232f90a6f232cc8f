"""``greedy``: RFQ's bidirectional greedy search (§3.5, supplementary C), inference only.

From a start policy, every iteration tries one bit up and one bit down on each searchable
layer's weights and activations (2L-4L candidates), scores each on a fixed evaluation set as
J = min-max-normalised loss + lambda * min-max-normalised cost (Eq. 9), and keeps the best,
until the constraints hold. Policies already visited are not revisited, so it terminates.

BatchNorm during candidate evaluation: each candidate runs in eval mode with the statistics its
Transitional BN sets learned in training (no re-estimation, so candidates are compared on
equal footing and activations upstream of the changed layer can be reused). With
``recalibrate_batches > 0`` every candidate first re-estimates its BatchNorm statistics on
that many training batches (slower: no reuse).
"""

from __future__ import annotations

import time

from mpqfx.evaluate import IncrementalEvaluator, evaluate, recalibrated_bn
from mpqfx.graph.layer_info import Role
from mpqfx.quant.policy import Policy
from mpqfx.search.backend import SearchBackend, SearchError, SearchResult, register_search
from mpqfx.search.constraints import Constraints
from mpqfx.search.options import GreedyOptions


def _normalise(values: list[float]) -> list[float]:
    low, high = min(values), max(values)
    return [0.0 if high == low else (v - low) / (high - low) for v in values]


def _budget_cost(constraints: Constraints, measured: dict[str, float]) -> float:
    """The cost term of Eq. 9 for any set of bounds: each bounded quantity as a multiple of its
    limit, counted down to the limit only, so a move is rewarded for cutting what still breaks a
    bound and penalised for pushing a met one over it (one BitOPs bound: Eq. 9's BitOPs term)."""
    bounds = [(constraints.bitops, measured["bitops"]), (constraints.size_bits, measured["size_bits"]),
              (constraints.avg_bits, measured["avg_w_bits"]), (constraints.avg_bits, measured["avg_a_bits"])]
    return sum(max(value / limit, 1.0) for limit, value in bounds if limit is not None)


@register_search("greedy")
class GreedySearch(SearchBackend):
    """Bidirectional greedy: +-1 bit on one layer's weights or activations per iteration (Eq. 9)."""

    options_cls = GreedyOptions

    @classmethod
    def uses_data(cls, options) -> bool:
        return True

    def moves(self, policy: Policy) -> list[tuple[str, Policy]]:
        """Every one-bit move up or down of one searchable layer's weights or activations."""
        out = []
        for layer in self.net.layers:
            if layer.role is not Role.NORMAL:
                continue
            bits = policy[layer.name]
            for which, allowed in (("w", layer.w_bits), ("a", layer.a_bits)):
                index = allowed.index(getattr(bits, which))
                for step in (-1, 1):
                    if 0 <= index + step < len(allowed):
                        new = (allowed[index + step], bits.a) if which == "w" else (bits.w, allowed[index + step])
                        out.append((layer.name, policy.replace(**{layer.name: new})))
        return out

    def run(self, constraints: Constraints) -> SearchResult:
        o = self.options
        batches = self.require_batches()
        start = time.perf_counter()
        policy = Policy.max(self.net) if o.start == "max" else Policy.uniform(self.net, int(o.start.split(":")[1]))
        steps_to_min = sum(len(l.w_bits) + len(l.a_bits) - 2 for l in self.net.layers)
        limit = o.max_iterations or 2 * steps_to_min + 1
        reuse = o.reuse_activations and o.recalibrate_batches == 0
        incremental = IncrementalEvaluator(self.net, batches) if reuse else None
        visited, iterations, evaluations = {policy}, 0, 0
        while not constraints.satisfied_by(self.net, policy):
            if iterations >= limit:
                raise SearchError(f"greedy search did not meet {constraints.describe()} within {limit} iterations")
            if incremental is not None:
                incremental.set_base(policy)
            candidates = [(name, p) for name, p in self.moves(policy) if p not in visited]
            if not candidates:
                raise SearchError(f"greedy search ran out of unvisited moves before meeting {constraints.describe()}")
            losses = []
            for name, p in candidates:  # the total grows by one iteration's candidates at a time
                self.report("greedy candidates", evaluations + len(losses), evaluations + len(candidates))
                losses.append(self._loss(p, name, incremental))
            costs = [_budget_cost(constraints, constraints.measure(self.net, p)) for _, p in candidates]
            scores = [l + o.lam * c for l, c in zip(_normalise(losses), _normalise(costs))]  # Eq. 9
            policy = candidates[min(range(len(scores)), key=scores.__getitem__)][1]
            visited.add(policy)
            iterations += 1
            evaluations += len(candidates)
        details = {"iterations": iterations, "evaluations": evaluations,
                   "batch_forwards": evaluations * len(batches), "seconds": time.perf_counter() - start}
        if incremental is not None:
            details["recomputed_fraction"] = incremental.recomputed / max(incremental.full, 1)
        return self.result(policy, constraints, **details)

    def _loss(self, policy: Policy, changed: str, incremental: IncrementalEvaluator | None) -> float:
        if incremental is not None:
            return incremental.evaluate(policy, [changed]).loss
        with recalibrated_bn(self.net, policy, self.context.calibration[: self.options.recalibrate_batches]):
            return evaluate(self.net, policy, self.context.batches).loss
