"""Every backend returns valid policies within budget; greedy terminates; Pareto sets are sorted."""

from __future__ import annotations

import random

import pytest

import mpqfx
from mpqfx import LayerKind, Policy, Role
from mpqfx.search import InfeasibleBudgetError, SearchError, TargetError, parse_target, search
from mpqfx.search.greedy import GreedySearch, GreedyOptions
from mpqfx.search.backend import SearchContext


def _valid(net, policy):
    policy.validate(net.layers)
    for info in net.layers:
        if info.role is not Role.NORMAL:
            assert tuple(policy[info.name]) == (8, 8)
        if info.kind is LayerKind.DEPTHWISE:
            assert policy[info.name].w != 2


@pytest.mark.parametrize("seed", range(6))
def test_ilp_meets_random_constraint_combinations(trained, seed):
    net, _, _ = trained
    rng = random.Random(seed)
    terms = [f"bitops=uniform:{rng.choice([3, 4, 5])}", f"size={rng.uniform(3, 6):.2f}x", f"avg={rng.uniform(3.5, 6):.2f}"]
    target = ",".join(rng.sample(terms, rng.randint(1, 3)))
    objective = rng.choice(["limpq", "hessian"])
    result = search(net, target, options={"objective": objective, "floors": False}, traces={l.name: rng.random() for l in net.layers})
    _valid(net, result.policy)
    assert parse_target(target, net).satisfied_by(net, result.policy)
    assert result.details["status"] == "optimal" and result.seconds < 5


def test_pareto_policies_are_distinct_sorted_and_within_budget(trained):
    net, _, _ = trained
    result = search(net, "uniform:5", options={"objective": "limpq", "pareto": True, "pareto_points": 6, "alg2_variants": True})
    costs = [mpqfx.bitops(net, p).total for p in result.policies]
    assert len(result.policies) >= 3 and len(set(result.policies)) == len(result.policies)
    assert costs == sorted(costs) and costs[-1] <= parse_target("uniform:5", net).bitops
    assert result.policy in result.policies


def test_greedy_terminates_with_a_feasible_policy(trained):
    net, evaluation, _ = trained
    target = parse_target("uniform:5", net)
    result = search(net, target, backend="greedy", data=evaluation)
    _valid(net, result.policy)
    assert target.satisfied_by(net, result.policy)
    assert result.details["iterations"] > 0 and result.details["evaluations"] >= result.details["iterations"]


def test_greedy_reusing_activations_finds_the_same_policy_cheaper(trained):
    net, evaluation, _ = trained
    target = parse_target("uniform:6", net).__class__(bitops=0.85 * mpqfx.bitops(net, Policy.max(net)).total)
    plain = search(net, target, backend="greedy", data=evaluation, options={"reuse_activations": False})
    reused = search(net, target, backend="greedy", data=evaluation, options={"reuse_activations": True})
    assert plain.policy == reused.policy
    assert reused.details["recomputed_fraction"] < 1.0


def test_greedy_moves_are_one_bit_up_or_down():
    import torch
    from torch import nn

    net = mpqfx.prepare(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3, groups=4), nn.ReLU(),
                                      nn.Conv2d(4, 4, 1), nn.Flatten(), nn.Linear(16, 2)),
                        example_input=torch.randn(1, 3, 6, 6))
    greedy = GreedySearch(net, GreedyOptions(), SearchContext())
    base = Policy.uniform(net, 4)
    moves = greedy.moves(base)
    assert len(moves) == 2 * 4  # two searchable layers x (w, a) x (up, down)
    for name, policy in moves:
        diff = [n for n in policy if policy[n] != base[n]]
        assert diff == [name]
        b, p = base[name], policy[name]
        assert abs(p.w - b.w) + abs(p.a - b.a) == 1
    depthwise = Policy.min(net)  # the depthwise conv cannot go below 3 weight bits
    assert all(p["2"].w >= 3 for _, p in greedy.moves(depthwise))


def test_hessian_ranking_returns_the_most_accurate_of_the_top_k(trained):
    net, evaluation, calibration = trained
    result = search(net, "avg=uniform:4", backend="hessian", data=evaluation, calibration=calibration,
                    options={"top_k": 3, "power_iters": 5, "recalibrate_batches": 1})
    assert 1 <= len(result.policies) <= 3 and len(set(result.policies)) == len(result.policies)
    accuracies = result.details["accuracies"]
    assert accuracies[result.policies.index(result.policy)] == max(accuracies)
    for p in result.policies:
        _valid(net, p)
    assert set(result.details["eigenvalues"]) == {l.name for l in net.layers}


def test_data_backends_say_they_need_data(trained):
    net, _, _ = trained
    with pytest.raises(SearchError, match="'greedy' evaluates policies on data"):
        search(net, "uniform:4", backend="greedy")


def test_bad_requests_are_clear(trained):
    net, _, _ = trained
    with pytest.raises(InfeasibleBudgetError, match=r"below the minimum .* reachable with first/last at 8 bits"):
        search(net, "0.001G")
    with pytest.raises(TargetError, match="unknown key 'speed'"):
        search(net, "speed=2")
    with pytest.raises(TargetError, match="cannot read bitops value '4.5Q'"):
        search(net, "4.5Q")
    with pytest.raises(mpqfx.errors.UnknownNameError, match="unknown search backend 'ilpp'.*did you mean 'ilp'"):
        search(net, "uniform:4", backend="ilpp")
    with pytest.raises(mpqfx.RecipeError, match="search.options.objective: 'x' is not allowed"):
        search(net, "uniform:4", options={"objective": "x"})


def test_targets_parse_to_the_documented_budgets(trained):
    net, _, _ = trained
    u4 = mpqfx.bitops(net, Policy.uniform(net, 4))
    assert parse_target("uniform:4", net).bitops == u4.total
    assert parse_target("4.5G", net).bitops == 4.5e9
    assert parse_target("bitops=12M", net).bitops == 12e6
    c = parse_target("size=8x,avg=3.5", net)
    assert c.size_bits == pytest.approx(mpqfx.bitops(net, Policy.bypass(net)).size_bits / 8) and c.avg_bits == 3.5
    assert parse_target("size=2.5MB", net).size_bits == 2.5 * 8e6
    assert parse_target("size=uniform:4", net).size_bits == u4.size_bits
    assert parse_target("uniform:4/6", net).bitops == mpqfx.bitops(net, Policy.uniform(net, 4, 6)).total


@pytest.mark.parametrize("backend,seed", [("greedy", 0), ("greedy", 1), ("hessian", 0), ("hessian", 1)])
def test_data_backends_meet_random_constraint_combinations(trained, backend, seed):
    net, evaluation, calibration = trained
    rng = random.Random(seed)
    terms = [f"bitops=uniform:{rng.choice([4, 5])}", f"size={rng.uniform(5, 6):.2f}x", f"avg={rng.uniform(4.5, 5.5):.2f}"]
    target = ",".join(rng.sample(terms, rng.randint(1, 3)))
    options = {"top_k": 2, "power_iters": 3} if backend == "hessian" else {}
    result = search(net, target, backend=backend, data=evaluation, calibration=calibration, options=options)
    for policy in result.policies + [result.policy]:
        _valid(net, policy)
        assert parse_target(target, net).satisfied_by(net, policy), target
