"""The exact ILP: optimum against brute-force enumeration (near-ties, several constraints), solution
validation, Pareto sets, objectives, and infeasible budgets."""

from __future__ import annotations

import itertools
import math
import random
import re
import stat
import sys
import time

import pulp
import pytest

from mpqfx import LayerInfo, LayerKind, Policy, Role
from mpqfx.cost.report import bitops as cost_report
from mpqfx.search import solver
from mpqfx.search.constraints import Constraints, InfeasibleBudgetError
from mpqfx.search.ilp import cost_coefficients, hessian_coefficients, limpq_coefficients
from mpqfx.search.solver import SolverError, pairs, solve_ilp

GAPS = (1e-5, 1e-6, 1e-7, 1e-8, 1e-9)  # how much better the planted optimum is than the runner-up


def random_layers(rng: random.Random, n: int) -> list[LayerInfo]:
    layers = []
    for i in range(n):
        w = tuple(sorted(rng.sample([2, 3, 4, 5, 6, 8], rng.randint(1, 3))))
        a = tuple(sorted(rng.sample([2, 3, 4, 5, 6, 8], rng.randint(1, 3))))
        layers.append(LayerInfo(f"l{i}", LayerKind.CONV, "Conv2d", rng.randint(100, 10_000), rng.randint(10, 1000),
                                (1,), (1,), (1,), Role.NORMAL, True, "graph", True, w, a, i))
    return layers


def feasible_objectives(layers, coef, constraints) -> list[tuple[float, tuple]]:
    """Every policy meeting ``constraints``, counted by hand (not with mpqfx's cost model), as
    (objective, choice), best first."""
    out = []
    for combo in itertools.product(*(pairs(l) for l in layers)):
        totals = (sum(l.macs * w * a for l, (w, a) in zip(layers, combo)), sum(l.params * w for l, (w, _) in zip(layers, combo)))
        if constraints.bitops is not None and totals[0] > constraints.bitops:
            continue
        if constraints.size_bits is not None and totals[1] > constraints.size_bits:
            continue
        if constraints.avg_bits is not None and max(sum(w for w, _ in combo), sum(a for _, a in combo)) > \
                constraints.avg_bits * len(layers) + 1e-9:
            continue
        out.append((math.fsum(coef[l.name][p] for l, p in zip(layers, combo)), combo))
    return sorted(out)


def random_instance(seed: int):
    """Layers, coefficients and two or three simultaneous constraints; in 4 of 5 instances the
    runner-up is planted 1e-5 .. 1e-9 behind the optimum (a near-tie CBC's default tolerances miss)."""
    rng = random.Random(seed)
    layers = random_layers(rng, rng.randint(2, 4))
    coef = {l.name: {p: rng.uniform(0, 5) for p in pairs(l)} for l in layers}
    low, high = Policy.min(layers), Policy.max(layers)
    def between(key):
        a, b = Constraints().measure(layers, low)[key], Constraints().measure(layers, high)[key]
        return a + rng.random() * (b - a)
    kinds = rng.sample(["bitops", "size_bits", "avg"], rng.randint(2, 3))
    constraints = Constraints(bitops=math.floor(between("bitops")) if "bitops" in kinds else None,
                              size_bits=math.floor(between("size_bits")) if "size_bits" in kinds else None,
                              avg_bits=max(between("avg_w_bits"), between("avg_a_bits")) if "avg" in kinds else None)
    ranked = feasible_objectives(layers, coef, constraints)
    if seed % 5 and len(ranked) >= 2:  # make the runner-up the optimum by GAPS[seed % 5]
        (best, first), (second, runner_up) = ranked[0], ranked[1]
        i = next(i for i in range(len(layers)) if first[i] != runner_up[i])
        coef[layers[i].name][runner_up[i]] -= (second - best) + GAPS[seed % 5]
        ranked = feasible_objectives(layers, coef, constraints)
    return layers, coef, constraints, ranked


@pytest.mark.parametrize("seed", range(250))
def test_ilp_optimum_equals_brute_force_including_near_ties(seed):
    layers, coef, constraints, ranked = random_instance(seed)
    if not ranked:
        with pytest.raises(SolverError, match="Infeasible"):
            solve_ilp(layers, coef, constraints)
        return
    solution = solve_ilp(layers, coef, constraints)
    assert solution.objective == pytest.approx(ranked[0][0], abs=1e-12)  # exactly the optimum, not the runner-up
    if len(ranked) > 1 and ranked[1][0] - ranked[0][0] > 1e-12:
        assert tuple(solution.policy[l.name] for l in layers) == ranked[0][1]
    assert solution.proven and solution.status == "optimal"
    assert constraints.satisfied_by(layers, solution.policy, slack=0)
    solution.policy.validate(layers)


def test_the_brute_force_instances_hold_near_ties_and_several_constraints():
    instances = [random_instance(seed) for seed in range(250)]
    gaps = [r[1][0] - r[0][0] for *_, r in instances if len(r) > 1]
    assert sum(1 for g in gaps if g < 2e-9) >= 40  # runner-up within 1e-9 (+ float noise) of the optimum
    assert all(sum(v is not None for v in (c.bitops, c.size_bits, c.avg_bits)) >= 2 for _, _, c, _ in instances)
    assert sum(1 for *_, r in instances if r) >= 200


@pytest.fixture
def fake_cbc(tmp_path, monkeypatch):
    """Replaces CBC by a program that writes the solution file it is told to: ``fake_cbc(header, values)``."""
    def install(header: str, values: list[str]) -> None:
        script = tmp_path / "cbc"
        script.write_text(f"""#!{sys.executable}
import sys
import time
mps, solution = sys.argv[1], sys.argv[sys.argv.index("-solution") + 1]
columns = []
section = None
for line in open(mps):
    if not line.startswith(" "):
        section = line.split()[0]
    elif section == "COLUMNS" and "MARKER" not in line and line.split()[0] not in columns:
        columns.append(line.split()[0])
values = {values!r}
with open(solution, "w") as out:
    out.write({header!r} + "\\n")
    for i, (name, value) in enumerate(zip(columns, values)):
        out.write(f"{{i:>7}} {{name}} {{value:>15}} 0\\n")
""")
        script.chmod(script.stat().st_mode | stat.S_IXUSR)
        monkeypatch.setattr(solver, "cbc", lambda time_limit: FakeCbc(path=str(script), msg=False))
    return install


class FakeCbc(solver.ReadsStatedObjective, pulp.COIN_CMD):
    """The fake program above, read as CBC is: the objective on its solution file's first line is kept."""


def one_layer() -> tuple[list[LayerInfo], dict]:
    layer = LayerInfo("l0", LayerKind.CONV, "Conv2d", 100, 10, (1,), (1,), (1,), Role.NORMAL, True, "graph", True,
                      (2, 8), (8,), 0)
    return [layer], {"l0": {(2, 8): 1.0, (8, 8): 3.0}}


def test_a_solution_file_with_non_binary_values_is_rejected(fake_cbc):
    fake_cbc("Optimal - objective value 4.69071", ["2.37", "-2.37"])
    layers, coef = one_layer()
    with pytest.raises(SolverError, match=r"non-binary value -?2\.37 for layer 'l0' at w[28]/a8 .*rejected"):
        solve_ilp(layers, coef, Constraints())


def test_a_solution_with_two_pairs_for_a_layer_is_rejected(fake_cbc):
    fake_cbc("Optimal - objective value 4", ["1", "1"])
    layers, coef = one_layer()
    with pytest.raises(SolverError, match="chose 2 bit pairs for layer 'l0' .exactly one is allowed"):
        solve_ilp(layers, coef, Constraints())


def test_a_solution_with_fractional_values_is_rejected(fake_cbc):
    """0.3 and 0.7 round to one chosen pair, and with equal coefficients every objective agrees:
    only the integrality check can reject them."""
    layers, _ = one_layer()
    fake_cbc("Optimal - objective value 0", ["0.3", "0.7"])
    with pytest.raises(SolverError, match=r"non-binary value 0\.[37] for layer 'l0' at w[28]/a8 .*rejected"):
        solve_ilp(layers, {"l0": {(2, 8): 1.0, (8, 8): 1.0}}, Constraints())


def test_a_layer_with_no_chosen_pair_is_rejected(fake_cbc):
    layers, coef = two_layers()
    fake_cbc("Optimal - objective value 0", ["0", "0", "1", "0"])  # l0 has no pair, l1 has one
    with pytest.raises(SolverError, match="chose 0 bit pairs for layer 'l0' .exactly one is allowed"):
        solve_ilp(layers, coef, Constraints())


def test_the_objective_cbc_states_must_match_the_policy(fake_cbc):
    """CBC's own objective (its solution file's first line) is compared with the returned policy's."""
    layers, coef = one_layer()
    low = ["1", "0"] if _column_of(layers, coef, (2, 8)) == 0 else ["0", "1"]
    fake_cbc("Optimal - objective value 1000000", low)  # the objective of w8/a8, stated for w2/a8
    with pytest.raises(SolverError, match=r"reports objective 3, but the policy it returned scores 1; .*rejected"):
        solve_ilp(layers, coef, Constraints())
    fake_cbc("Optimal - objective value 0", low)
    assert solve_ilp(layers, coef, Constraints()).objective == 1.0
    fake_cbc("Optimal - objective unknown", low)
    with pytest.raises(SolverError, match="stated no objective value"):
        solve_ilp(layers, coef, Constraints())


def test_cbc_states_the_objective_of_the_policy_it_returns(monkeypatch):
    rng = random.Random(7)
    layers = random_layers(rng, 3)
    coef = {l.name: {p: rng.uniform(-2, 5) for p in pairs(l)} for l in layers}
    real = solver.cbc
    for maximize in (False, True):
        command = real(60.0)
        monkeypatch.setattr(solver, "cbc", lambda time_limit: command)
        solution = solve_ilp(layers, coef, Constraints(), maximize=maximize)
        everything = [math.fsum(coef[l.name][p] for l, p in zip(layers, c)) for c in itertools.product(*(pairs(l) for l in layers))]
        assert solution.objective == pytest.approx(max(everything) if maximize else min(everything), abs=1e-9)
        assert command.stated_objective is not None


def test_a_solution_breaking_the_budget_is_rejected(fake_cbc):
    layers, coef = one_layer()
    budget = Constraints(bitops=100 * 2 * 8)  # only w2/a8 fits
    fake_cbc("Optimal - objective value 1000000", ["0", "1"] if _column_of(layers, coef, (8, 8)) == 1 else ["1", "0"])
    with pytest.raises(SolverError, match=r"breaks BitOPs 6\.4K > 1\.6K; the solution is rejected"):
        solve_ilp(layers, coef, budget)


def test_a_solve_stopped_by_its_time_limit_is_not_reported_optimal(fake_cbc):
    layers, coef = one_layer()
    fake_cbc("Stopped on time - objective value 0", ["1", "0"] if _column_of(layers, coef, (2, 8)) == 0 else ["0", "1"])
    solution = solve_ilp(layers, coef, Constraints())
    assert solution.policy["l0"] == (2, 8) and solution.objective == 1.0
    assert not solution.proven and solution.status == "not proven optimal (time limit)"


def two_layers() -> tuple[list[LayerInfo], dict]:
    layers, coef = one_layer()
    second = LayerInfo("l1", LayerKind.CONV, "Conv2d", 100, 10, (1,), (1,), (1,), Role.NORMAL, True, "graph", True,
                       (2, 8), (8,), 1)
    return layers + [second], {**coef, "l1": {(2, 8): 1.0, (8, 8): 1.0}}


def _column_of(layers, coef, pair) -> int:
    """The MPS column index PuLP gives the variable of ``pair`` (variables are written sorted by name)."""
    names = sorted(f"x0_{w}_{a}" for w, a in pairs(layers[0]))
    return names.index(f"x0_{pair[0]}_{pair[1]}")


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


def test_cbc_runs_quietly_with_the_exact_settings(tmp_path, monkeypatch, capfd):
    """The command line CBC receives (gap 0, increment 1e-12, no preprocessing, the time limit) and
    its log kept off the terminal, read by a program standing in for CBC."""
    script, argv = tmp_path / "cbc", tmp_path / "argv"
    script.write_text(f"""#!{sys.executable}
import sys
import time
open({str(argv)!r}, "w").write(" ".join(sys.argv[2:]))
print("CBC's log")
with open(sys.argv[sys.argv.index("-solution") + 1], "w") as out:
    out.write("Optimal - objective value 0\\n")
""")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)

    class Recording(solver.ReadsStatedObjective, pulp.COIN_CMD):
        def __init__(self, **kwargs):
            super().__init__(path=str(script), **kwargs)

    monkeypatch.setattr(solver, "BundledCbc", Recording)
    layers, _ = one_layer()
    coef = {"l0": {(2, 8): 1.0, (8, 8): 1.0}}  # every column 0 in the file: rejected, but after the call
    for kwargs, limit in (({"time_limit": 7.5}, "7.5"), ({}, "60.0")):
        with pytest.raises(SolverError, match="chose 0 bit pairs"):
            solve_ilp(layers, coef, Constraints(), **kwargs)
        options = set(f" {argv.read_text()}".split(" -"))
        assert {f"sec {limit}", "preprocess off", "increment 1e-12", "ratio 0", "allow 0", "solve"} <= options
    assert "CBC's log" not in capfd.readouterr().out


def test_a_forced_layer_keeps_its_weight_bits():
    layers, coef = one_layer()  # w2/a8 costs 1, w8/a8 3
    solution = solve_ilp(layers, coef, Constraints(), forced={"l0": 8})
    assert solution.policy["l0"] == (8, 8) and solution.objective == 3.0
    with pytest.raises(SolverError) as caught:
        solve_ilp(layers, coef, Constraints(), forced={"l0": 4})
    assert str(caught.value) == "layer 'l0': no allowed bit pair left to choose"


@pytest.mark.parametrize("budget, fixed, best", [
    # 100 MACs a layer: w2/a8 1.6K BitOPs, w8/a8 6.4K; 10K less 3K fixed: both at w2 (8K would not fit)
    (dict(bitops=10_000), dict(fixed_bitops=3_000), ((2, 8), (2, 8))),
    # 10 weights a layer: 20 or 80 bits; 150 less 30 fixed: one layer at w8 (l0, the cheaper 8-bit choice)
    (dict(size_bits=150), dict(fixed_size_bits=30), ((8, 8), (2, 8))),
])
def test_the_fixed_part_of_a_budget_is_taken_off_it(budget, fixed, best):
    layers, _ = two_layers()
    coef = {"l0": {(2, 8): 3.0, (8, 8): 0.5}, "l1": {(2, 8): 3.0, (8, 8): 1.0}}  # 8 bits preferred
    solution = solve_ilp(layers, coef, Constraints(**budget), **fixed)
    assert (solution.policy["l0"], solution.policy["l1"]) == best
    assert solution.objective == math.fsum(coef[l.name][p] for l, p in zip(layers, best))


def test_an_infeasible_budget_and_the_solve_time_are_reported():
    layers, coef = one_layer()
    start = time.perf_counter()
    solution = solve_ilp(layers, coef, Constraints())
    assert 0 < solution.seconds <= time.perf_counter() - start
    with pytest.raises(SolverError) as caught:
        solve_ilp(layers, coef, Constraints(bitops=1_000))  # w2/a8 alone takes 1.6K
    assert re.fullmatch(r"ILP solver status 'Infeasible' for BitOPs <= 1(\.0)?K after \d+\.\d\ds", str(caught.value))


def test_the_stated_objective_may_differ_by_no_more_than_one_millionth(fake_cbc):
    """w2/a8 scores 0 in CBC's units (shifted by the cheapest pair, range scaled to 1e6)."""
    layers, coef = one_layer()
    low = ["1", "0"] if _column_of(layers, coef, (2, 8)) == 0 else ["0", "1"]
    fake_cbc("Optimal - objective value 0.0000009", low)
    assert solve_ilp(layers, coef, Constraints()).policy["l0"] == (2, 8)
    fake_cbc("Optimal - objective value 0.0000015", low)
    with pytest.raises(SolverError, match=r"reports objective 1, but the policy it returned scores 1; .*rejected"):
        solve_ilp(layers, coef, Constraints())
    fake_cbc("Optimal - objective unknown", low)
    with pytest.raises(SolverError) as caught:
        solve_ilp(layers, coef, Constraints())
    assert str(caught.value) == "the ILP solver stated no objective value in its solution file; the solution is rejected"


TOY_FIXED_SIZE = 32 * (3 * 16 + 10)  # float-kept: three BatchNorms' weight and bias (8 each), the head's 10 biases


def _toy_measures(net, policy) -> dict[str, float]:
    """BitOPs, size bits and the larger average bit-width of a ToyNet policy, counted by hand."""
    bits = [policy[l.name] for l in net.layers]
    return {"bitops": sum(l.macs * w * a for l, (w, a) in zip(net.layers, bits)),
            "size_bits": sum(l.params * w for l, (w, _) in zip(net.layers, bits)) + TOY_FIXED_SIZE,
            "avg_bits": max(sum(w for w, _ in bits), sum(a for _, a in bits)) / len(bits)}


@pytest.mark.parametrize("key", ["bitops", "size_bits", "avg_bits"])
def test_a_pareto_sweep_keeps_the_non_dominated_optima_of_its_budgets(toy_net, key):
    """Brute force over ToyNet's 500 policies: the optimum at each of the sweep's 5 budgets (evenly
    from the smallest reachable value to the target), those not beaten on BitOPs and objective."""
    import torch

    import mpqfx

    net = mpqfx.prepare(toy_net, example_input=torch.randn(1, 3, 8, 8))
    rng = random.Random(5)
    costs = {l.name: {"w": {b: rng.uniform(0, 3) / b for b in l.w_bits}, "a": {b: rng.uniform(0, 3) / b for b in l.a_bits}}
             for l in net.layers}
    everything = [Policy(dict(zip([l.name for l in net.layers], c))) for c in itertools.product(*(pairs(l) for l in net.layers))]
    objective = {p: math.fsum(costs[n]["w"][w] + costs[n]["a"][a] for n, (w, a) in p.items()) for p in everything}
    measures = {p: _toy_measures(net, p) for p in everything}
    target = measures[Policy({l.name: (max(min(l.w_bits), 4), max(min(l.a_bits), 4)) for l in net.layers})][key]
    low = min(m[key] for m in measures.values())
    optima = []
    for i in range(5):
        budget = low + (target - low) * i / 4
        optima.append(min((p for p in everything if measures[p][key] <= budget + 1e-9), key=objective.get))
    expected, best = [], float("inf")
    for p in sorted(set(optima), key=lambda p: (measures[p]["bitops"], objective[p])):
        if objective[p] < best:
            expected.append(p)
            best = objective[p]
    result = mpqfx.search(net, Constraints(**{key: target}), backend="ilp", costs=costs,
                          options={"objective": "costs", "pareto": True, "pareto_points": 5, "alg2_variants": False})
    assert result.policies == expected and len(expected) >= 2
    assert result.policy == optima[-1] and result.details["objective"] == pytest.approx(objective[optima[-1]], abs=1e-12)
    assert result.details["solves"] == 6 and result.details["status"] == "optimal"


def test_a_non_binary_value_is_named_with_its_layer_and_pair(fake_cbc):
    layers, coef = one_layer()
    fake_cbc("Optimal - objective value 0", ["0.3", "0.7"] if _column_of(layers, coef, (2, 8)) == 0 else ["0.7", "0.3"])
    with pytest.raises(SolverError) as caught:
        solve_ilp(layers, coef, Constraints())
    assert str(caught.value) == ("the ILP solver returned a non-binary value 0.3 for layer 'l0' at w2/a8 (every "
                                 "choice must be 0 or 1); the solution is rejected")


def test_a_solution_breaking_the_budget_with_its_fixed_part_is_rejected(fake_cbc):
    """w8/a8: 80 weight bits and 6.4K BitOPs; with 30 fixed bits the size is 110 bits (13.75 bytes) > 100."""
    layers, coef = one_layer()
    fake_cbc("Optimal - objective value 1000000", ["0", "1"] if _column_of(layers, coef, (8, 8)) == 1 else ["1", "0"])
    with pytest.raises(SolverError, match=r"breaks size 13\.8B > 12\.5B; the solution is rejected"):
        solve_ilp(layers, coef, Constraints(size_bits=100), fixed_size_bits=30)
    with pytest.raises(SolverError, match=r"breaks BitOPs 6\.4K > 1\.6K; size 13\.8B > 12\.5B; the solution is rejected"):
        solve_ilp(layers, coef, Constraints(bitops=1600, size_bits=100), fixed_size_bits=30)


def test_the_pareto_front_drops_equal_objectives_at_a_higher_cost_and_keeps_the_better_of_equal_costs(toy_net):
    """ToyNet's dw at w3/a4 and at w4/a3: the same 4608 x 12 BitOPs; its w4/a4 costs more."""
    import torch

    import mpqfx
    from mpqfx.search.ilp import pareto_front

    net = mpqfx.prepare(toy_net, example_input=torch.randn(1, 3, 8, 8))
    base = {"stem": (8, 8), "pw": (2, 2), "fc": (8, 8)}
    w3a4, w4a3, w4a4 = (Policy({**base, "dw": bits}) for bits in ((3, 4), (4, 3), (4, 4)))
    assert pareto_front(net, {w3a4: 2.0, w4a3: 1.0, w4a4: 1.0}) == [w4a3]  # w4a4: no better for more BitOPs
    assert pareto_front(net, {w4a3: 2.0, w3a4: 1.0, w4a4: 0.5}) == [w3a4, w4a4]
