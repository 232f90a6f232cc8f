"""ILP optimum against brute-force enumeration, Pareto sets, objectives, and infeasible budgets."""

from __future__ import annotations

import itertools
import random

import pytest

from mpqfx import LayerInfo, LayerKind, Policy, Role
from mpqfx.cost.report import bitops as cost_report
from mpqfx.search.constraints import Constraints, InfeasibleBudgetError
from mpqfx.search.ilp import SolverError, cost_coefficients, hessian_coefficients, limpq_coefficients, pairs, solve_ilp


def random_layers(rng: random.Random, n: int) -> list[LayerInfo]:
    layers = []
    for i in range(n):
        w = tuple(sorted(rng.sample([2, 3, 4, 5, 6, 8], rng.randint(1, 3))))
        a = tuple(sorted(rng.sample([2, 3, 4, 5, 6, 8], rng.randint(1, 3))))
        layers.append(LayerInfo(f"l{i}", LayerKind.CONV, "Conv2d", rng.randint(100, 10_000), rng.randint(10, 1000),
                                (1,), (1,), (1,), Role.NORMAL, True, "graph", True, w, a, i))
    return layers


def brute_force(layers, coef, constraints):
    best = None
    for combo in itertools.product(*(pairs(l) for l in layers)):
        policy = Policy({l.name: p for l, p in zip(layers, combo)})
        if constraints.satisfied_by(layers, policy, slack=0):
            value = sum(coef[l.name][p] for l, p in zip(layers, combo))
            best = value if best is None else min(best, value)
    return best


@pytest.mark.parametrize("seed", range(60))
def test_ilp_optimum_equals_brute_force(seed):
    rng = random.Random(seed)
    layers = random_layers(rng, rng.randint(2, 4))
    coef = {l.name: {p: rng.uniform(-1, 1) for p in pairs(l)} for l in layers}
    low, high = Policy.min(layers), Policy.max(layers)
    def between(key):
        a, b = Constraints().measure(layers, low)[key], Constraints().measure(layers, high)[key]
        return a + rng.random() * (b - a)
    kinds = rng.sample(["bitops", "size_bits", "avg"], rng.randint(1, 3))
    constraints = Constraints(bitops=between("bitops") if "bitops" in kinds else None,
                              size_bits=between("size_bits") if "size_bits" in kinds else None,
                              avg_bits=max(between("avg_w_bits"), between("avg_a_bits")) if "avg" in kinds else None)
    expected = brute_force(layers, coef, constraints)
    if expected is None:
        with pytest.raises(SolverError, match="Infeasible"):
            solve_ilp(layers, coef, constraints)
        return
    solution = solve_ilp(layers, coef, constraints)
    assert solution.objective == pytest.approx(expected, abs=1e-6)
    assert constraints.satisfied_by(layers, solution.policy)
    solution.policy.validate(layers)


def test_k_best_with_no_good_cuts_enumerates_distinct_policies_in_order():
    rng = random.Random(3)
    layers = random_layers(rng, 3)
    coef = {l.name: {p: rng.random() for p in pairs(l)} for l in layers}
    found, values = [], []
    for _ in range(4):
        sol = solve_ilp(layers, coef, Constraints(), exclude=found)
        found.append(sol.policy)
        values.append(sol.objective)
    assert len(set(found)) == 4 and values == sorted(values)
    everything = sorted(sum(coef[l.name][p] for l, p in zip(layers, c))
                        for c in itertools.product(*(pairs(l) for l in layers)))
    assert values == pytest.approx(everything[:4])


def test_objectives_follow_their_papers():
    layer = random_layers(random.Random(0), 1)[0]
    indicators = {layer.name: {"w": {b: 1.0 / b for b in layer.w_bits}, "a": {b: 10.0 / b for b in layer.a_bits}}}
    w, a = layer.w_bits[0], layer.a_bits[0]
    assert limpq_coefficients([layer], indicators, 2.0)[layer.name][(w, a)] == pytest.approx(10 / a + 2 / w)  # Eq. 4
    assert hessian_coefficients([layer], {layer.name: 3.0})[layer.name][(w, a)] == pytest.approx(-3.0 / layer.params * (w + a) / 2)
    costs = cost_coefficients([layer], {layer.name: {"w": {w: 1.5}, "a": {a: 0.25}}})
    assert costs[layer.name][(w, a)] == pytest.approx(1.75)


def test_infeasible_budget_states_the_minimum(toy_net):
    import mpqfx
    import torch

    net = mpqfx.prepare(toy_net, example_input=torch.randn(1, 3, 8, 8))
    minimum = cost_report(net, Policy.min(net)).total
    with pytest.raises(InfeasibleBudgetError, match=r"BitOPs target 100 is below the minimum .* reachable with "
                                                    r"first/last at 8 bits and depthwise convs at their smallest"):
        Constraints(bitops=100).check_feasible(net)
    Constraints(bitops=minimum).check_feasible(net)  # exactly the minimum is reachable
    with pytest.raises(InfeasibleBudgetError, match="size target"):
        Constraints(size_bits=10).check_feasible(net)
    with pytest.raises(InfeasibleBudgetError, match=r"average bit-width target 2 is below the minimum 5\.25"):
        Constraints(avg_bits=2).check_feasible(net)
