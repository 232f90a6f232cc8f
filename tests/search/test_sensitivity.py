"""Measured per-layer sensitivities and the ILP objective built on them."""

from __future__ import annotations

import dataclasses

import pytest

from mpqfx import Policy
from mpqfx.evaluate import evaluate, recalibrated_bn
from mpqfx.search import SearchError, search, search_many
from mpqfx.search.run import uses_data
from mpqfx.search import sensitivity
from mpqfx.search.ilp import fixed_costs, floor_pairs, floored_layer, limpq_coefficients, solve_ilp
from mpqfx.search.sensitivity import measure_sensitivities
from mpqfx.train.limpq import importance_indicators


def test_sensitivities_are_measured_loss_increases_monotone_in_bits(trained):
    net, evaluation, _ = trained
    table, evaluations = measure_sensitivities(net, evaluation)
    assert evaluations == sum(len(l.w_bits) - 1 + len(l.a_bits) - 1 for l in net.layers)
    base = Policy.max(net)
    reference = evaluate(net, base, evaluation).loss
    layer = next(l for l in net.layers if len(l.w_bits) > 1)
    lowest = min(layer.w_bits)
    measured = evaluate(net, base.replace(**{layer.name: (lowest, base[layer.name].a)}), evaluation).loss - reference
    assert table[layer.name]["w"][lowest] == pytest.approx(max(measured, max(table[layer.name]["w"].values())), abs=1e-6)
    for l in net.layers:
        for which, allowed in (("w", l.w_bits), ("a", l.a_bits)):
            costs = [table[l.name][which][b] for b in sorted(allowed, reverse=True)]
            assert costs[0] == 0.0 and all(b >= a for a, b in zip(costs, costs[1:]))


def test_ilp_with_sensitivities_minimises_their_sum_under_the_budget(trained):
    net, evaluation, _ = trained
    plain = {"objective": "sensitivity", "floors": False}  # the oneshot recipe's search has floors on
    assert uses_data(net, "ilp", plain) and not uses_data(net, "ilp", {"objective": "limpq", "floors": False})
    result = search(net, "uniform:4", backend="ilp", options=plain, data=evaluation)
    table, _ = measure_sensitivities(net, evaluation)
    cost = lambda p: sum(table[n]["w"][b.w] + table[n]["a"][b.a] for n, b in p.items())  # noqa: E731
    budget = result.constraints
    assert budget.satisfied_by(net, result.policy)
    feasible = [p for p in (Policy.sample(net, seed) for seed in range(300)) if budget.satisfied_by(net, p)]
    feasible.append(Policy.uniform(net, 4))
    assert len(feasible) > 20
    assert all(cost(result.policy) <= cost(p) + 1e-9 for p in feasible)  # no feasible policy found costs less
    with pytest.raises(SearchError, match="evaluates policies on data"):
        search(net, "uniform:4", backend="ilp", options=plain)


def test_sensitivities_are_kept_for_later_searches_of_the_same_supernet(trained, tmp_path, monkeypatch):
    net, evaluation, _ = trained
    options = {"objective": "sensitivity"}
    first = search(net, "uniform:4", backend="ilp", options=options, data=evaluation, cache_dir=tmp_path)
    assert (tmp_path / "sensitivities.json").is_file()

    def no_measuring(*args):
        raise AssertionError("measured again")

    monkeypatch.setattr(sensitivity, "measure_sensitivities", no_measuring)
    again = search(net, "uniform:4", backend="ilp", options=options, data=evaluation, cache_dir=tmp_path)
    assert again.policy == first.policy
    with pytest.raises(AssertionError, match="measured again"):  # other images: the cache does not apply
        search(net, "uniform:4", backend="ilp", options=options, data=evaluation[:1], cache_dir=tmp_path)


def test_search_many_measures_once_for_every_budget(trained, monkeypatch):
    net, evaluation, _ = trained
    calls, real = [], sensitivity.measure_sensitivities
    monkeypatch.setattr(sensitivity, "measure_sensitivities", lambda *a: calls.append(1) or real(*a))
    results = list(search_many(net, ["uniform:4", "uniform:3", "size=6x"], backend="ilp",
                               options={"objective": "sensitivity"}, data=evaluation))
    assert len(results) == 3 and len(calls) == 1
    assert [r.constraints.satisfied_by(net, r.policy) for r in results] == [True] * 3


def test_floors_return_the_lowest_measured_loss_among_the_floored_optima(trained):
    net, evaluation, calibration = trained
    options = {"objective": "sensitivity", "floors": True}
    assert uses_data(net, "ilp", {"objective": "limpq", "floors": True})
    assert not uses_data(net, "ilp", {"objective": "limpq", "floors": True, "pareto": True})  # a sweep returns its front
    result = search(net, "uniform:4", backend="ilp", options=options, data=evaluation, calibration=calibration)
    plain = search(net, "uniform:4", backend="ilp", options={"objective": "sensitivity", "floors": False}, data=evaluation)
    assert result.constraints.satisfied_by(net, result.policy)
    candidates = result.details["candidate_losses"]
    assert result.details["solves"] == len(candidates) >= 2

    def loss(policy):  # as the search measures it: BN re-estimated on the calibration images
        with recalibrated_bn(net, policy, calibration):
            return evaluate(net, policy, evaluation).loss

    assert loss(result.policy) == pytest.approx(min(candidates), abs=1e-6)
    assert min(candidates) <= loss(plain.policy) + 1e-6  # the plain optimum is one of the candidates


def test_floor_pairs_are_every_pair_of_bit_widths_or_equal_floors_lowest_first(trained):
    layer = trained[0].layers[0]
    layers = [dataclasses.replace(layer, w_bits=(2, 4), a_bits=(4, 8)), dataclasses.replace(layer, w_bits=(4,), a_bits=(8,))]
    assert floor_pairs(layers, split=False) == [(2, 2), (4, 4), (8, 8)]
    split = floor_pairs(layers, split=True)
    assert len(split) == 9 and split[0] == (2, 2) and set(split) == {(w, a) for w in (2, 4, 8) for a in (2, 4, 8)}


def test_split_floors_also_floor_weights_and_activations_separately(trained):
    net, evaluation, calibration = trained
    data = {"data": evaluation, "calibration": calibration}
    joint = search(net, "uniform:3", backend="ilp", options={"objective": "limpq", "floors": True, "split_floors": False}, **data)
    split = search(net, "uniform:3", backend="ilp", options={"objective": "limpq", "floors": True, "split_floors": True}, **data)
    assert split.constraints.satisfied_by(net, split.policy)
    losses = split.details["candidate_losses"]
    assert set(joint.details["candidate_losses"]) < set(losses)  # the joint floors' optima, and more
    assert split.details["solves"] == len(losses) and min(losses) <= min(joint.details["candidate_losses"])
    # one of the new candidates: the optimum with the weights free and every activation at >= 3 bits
    low = min(min(l.w_bits) for l in net.layers)
    floored = [floored_layer(l, low, 3) for l in net.layers]
    acts_floored = solve_ilp(floored, limpq_coefficients(floored, importance_indicators(net), 1.0), split.constraints,
                             *fixed_costs(net)).policy
    assert all(acts_floored[l.name].a >= min(3, max(l.a_bits)) for l in net.layers)
    with recalibrated_bn(net, acts_floored, calibration):
        measured = evaluate(net, acts_floored, evaluation).loss
    assert any(measured == pytest.approx(x, abs=1e-6) for x in losses)
    plain = search(net, "uniform:3", backend="ilp", options={"objective": "limpq", "floors": False, "split_floors": True})
    assert "candidate_losses" not in plain.details  # without floors nothing is verified


def test_sensitivities_are_loss_increases_over_the_max_policy_by_hand(monkeypatch):
    """Losses set by hand (a fake evaluator): each entry is the loss minus the max policy's 1.25,
    raised to the entry of the next higher bit-width where a measured loss dips below it."""
    from types import SimpleNamespace

    from mpqfx import LayerInfo, LayerKind, Role

    layers = [LayerInfo(name, LayerKind.CONV, "Conv2d", 100, 10, (1,), (1,), (1,), Role.NORMAL, True, "graph", True,
                        (2, 4, 8), (4, 8), i) for i, name in enumerate(("a", "b"))]
    losses = {("a", 4, 8): 1.5, ("a", 2, 8): 2.0, ("a", 8, 4): 1.75,
              ("b", 4, 8): 2.25, ("b", 2, 8): 2.0, ("b", 8, 4): 1.0}  # b's w2 and a4 dip: noise

    class HandLosses:
        def __init__(self, net, batches):
            pass

        def set_base(self, policy):
            assert all(tuple(policy[l.name]) == (8, 8) for l in layers)
            return SimpleNamespace(loss=1.25)

        def evaluate(self, policy, changed):
            (name,) = changed
            return SimpleNamespace(loss=losses[(name, *policy[name])])

    monkeypatch.setattr(sensitivity, "IncrementalEvaluator", HandLosses)
    table, evaluations = measure_sensitivities(SimpleNamespace(layers=layers), [])
    assert evaluations == 6
    assert table == {"a": {"w": {8: 0.0, 4: 0.25, 2: 0.75}, "a": {8: 0.0, 4: 0.5}},
                     "b": {"w": {8: 0.0, 4: 1.0, 2: 1.0}, "a": {8: 0.0, 4: 0.0}}}


def _hand_loss_net(monkeypatch, measured: list):
    """Two layers (w 2/4/8, a 4/8) whose losses are set by hand, and a fake evaluator that records
    each evaluation in ``measured``."""
    from types import SimpleNamespace

    import torch

    from mpqfx import LayerInfo, LayerKind, Role

    layers = [LayerInfo(name, LayerKind.CONV, "Conv2d", 100, 10, (1,), (1,), (1,), Role.NORMAL, True, "graph", True,
                        (2, 4, 8), (4, 8), i) for i, name in enumerate(("a", "b"))]
    losses = {("a", 4, 8): 1.5, ("a", 2, 8): 2.0, ("a", 8, 4): 1.75, ("b", 4, 8): 2.25, ("b", 2, 8): 2.5, ("b", 8, 4): 1.5}

    class HandLosses:
        def __init__(self, net, batches):
            pass

        def set_base(self, policy):
            return SimpleNamespace(loss=1.25)

        def evaluate(self, policy, changed):
            measured.append(changed)
            return SimpleNamespace(loss=losses[(changed[0], *policy[changed[0]])])

    monkeypatch.setattr(sensitivity, "IncrementalEvaluator", HandLosses)
    state = {"w": torch.ones(2)}
    return SimpleNamespace(layers=layers, state_dict=lambda: state)


HAND_TABLE = {"a": {"w": {8: 0.0, 4: 0.25, 2: 0.75}, "a": {8: 0.0, 4: 0.5}},
              "b": {"w": {8: 0.0, 4: 1.0, 2: 1.25}, "a": {8: 0.0, 4: 0.25}}}


def test_sensitivity_progress_is_reported_before_each_evaluation_and_at_the_end(monkeypatch):
    net, calls = _hand_loss_net(monkeypatch, []), []
    table, evaluations = measure_sensitivities(net, [], lambda *args: calls.append(args))
    assert table == HAND_TABLE and evaluations == 6
    assert calls == [("sensitivities", done, 6) for done in range(7)]


def test_the_sensitivity_cache_is_read_only_for_the_same_state_and_images(monkeypatch, tmp_path):
    import json

    import torch

    from mpqfx.search.sensitivity import cached_sensitivities

    measured = []
    net = _hand_loss_net(monkeypatch, measured)
    assert cached_sensitivities(net, [], None) == HAND_TABLE and len(measured) == 6
    assert not list(tmp_path.iterdir())
    assert cached_sensitivities(net, [], tmp_path) == HAND_TABLE and len(measured) == 12
    written = json.loads((tmp_path / "sensitivities.json").read_text())
    assert written["format"] == "mpqfx.sensitivities/1" and written["evaluations"] == 6
    assert {layer: {k: {int(b): c for b, c in v.items()} for k, v in kinds.items()}
            for layer, kinds in written["layers"].items()} == HAND_TABLE
    assert cached_sensitivities(net, [], tmp_path) == HAND_TABLE and len(measured) == 12  # read, not measured
    images = [(torch.zeros(1), torch.zeros(1))]
    assert cached_sensitivities(net, images, tmp_path) == HAND_TABLE and len(measured) == 18  # other images
    assert cached_sensitivities(net, images, tmp_path) == HAND_TABLE and len(measured) == 18
    net.state_dict()["w"].fill_(2.0)  # another supernet state
    assert cached_sensitivities(net, images, tmp_path) == HAND_TABLE and len(measured) == 24
    stale = written  # keyed by the first state and no images
    for broken in ("{not json", json.dumps([1]), json.dumps({**stale, "format": "mpqfx.sensitivities/0"}), json.dumps(stale)):
        (tmp_path / "sensitivities.json").write_text(broken)
        before = len(measured)
        assert cached_sensitivities(net, images, tmp_path) == HAND_TABLE and len(measured) == before + 6
