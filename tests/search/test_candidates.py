"""A search never returns a policy that measures worse on its search images than the uniform
policies meeting the budget; candidates are measured once each, with progress."""

from __future__ import annotations

import pytest

from mpqfx import Policy
from mpqfx.search import TargetError, parse_target, search
from mpqfx.search.backend import SearchResult
from mpqfx.search.candidates import Measurement, Meter, describe_selection, keep_best, uniform_baselines


def test_the_baselines_are_max_when_it_fits_else_the_highest_uniform_policy_that_fits(trained):
    net, _, _ = trained
    assert uniform_baselines(net, parse_target("uniform:4", net)) == [("uniform 4/4", Policy.uniform(net, 4))]
    assert uniform_baselines(net, parse_target("uniform:4/3", net)) == [("uniform 3/3", Policy.uniform(net, 3))]
    # the max policy is uniform 6/6 here (first/last at 8 either way): one candidate, named as uniform
    assert Policy.max(net) == Policy.uniform(net, 6)
    assert uniform_baselines(net, parse_target("uniform:6", net)) == [("uniform 6/6", Policy.max(net))]
    assert uniform_baselines(net, parse_target("uniform:2/3", net)) == [("uniform 2/2", Policy.uniform(net, 2))]


def test_a_searched_policy_measuring_worse_than_uniform_is_replaced_by_it(trained):
    net, evaluation, calibration = trained
    target = parse_target("uniform:4", net)
    calls = []
    meter = Meter(net, evaluation, calibration, lambda what, done, total: calls.append((what, done, total)))
    proposed = Policy.min(net)  # every layer at its lowest bits: within the budget, and far worse
    result = keep_best(SearchResult(proposed, [proposed], target, "ilp", 0.0), meter, net)
    low, uniform = meter.measured[proposed], meter.measured[Policy.uniform(net, 4)]
    assert uniform.loss < low.loss
    assert result.policy == result.policies[0] == Policy.uniform(net, 4)
    selection = result.details["selection"]
    assert selection["chosen"] == "uniform 4/4" and selection["proposed"] == "search" and selection["search_images"] == 64
    assert [c["name"] for c in selection["candidates"]] == ["uniform 4/4", "search"]
    assert [c["loss"] for c in selection["candidates"]] == [uniform.loss, low.loss]
    assert calls == [("uniform baselines", 0, 2), ("uniform baselines", 1, 2), ("uniform baselines", 2, 2)]
    line = describe_selection(result.details)
    assert line.startswith(f"uniform 4/4 chosen: loss {uniform.loss:.4f}, top-1 {100 * uniform.accuracy:.2f}% against "
                           f"the searched mixed policy's {low.loss:.4f}") and line.endswith("on 64 search images")
    keep_best(SearchResult(proposed, [proposed], target, "ilp", 0.0), meter, net)  # measured once per policy
    assert len(calls) == 3


def test_ties_go_to_the_uniform_policy_and_a_better_search_is_kept(trained):
    net, evaluation, calibration = trained
    target = parse_target("uniform:4", net)
    mixed = Policy({**Policy.uniform(net, 4), net.layers[3].name: (3, 4)})
    meter = Meter(net, evaluation, calibration)
    meter.measured = {Policy.uniform(net, 4): Measurement(0.5, 0.8), mixed: Measurement(0.5, 0.9)}
    tied = keep_best(SearchResult(mixed, [mixed], target, "ilp", 0.0), meter, net)
    assert tied.policy == Policy.uniform(net, 4) and tied.details["selection"]["chosen"] == "uniform 4/4"
    meter.measured[mixed] = Measurement(0.5 - 1e-9, 0.7)
    kept = keep_best(SearchResult(mixed, [mixed], target, "ilp", 0.0), meter, net)
    assert kept.policy == mixed and kept.details["selection"]["chosen"] == "search"
    assert describe_selection(kept.details).startswith("the searched mixed policy chosen")


def test_every_search_with_search_images_is_at_least_as_good_as_uniform_there(trained):
    net, evaluation, calibration = trained
    uniform = Meter(net, evaluation, calibration).measure([Policy.uniform(net, 3)])[Policy.uniform(net, 3)]
    costs = {l.name: {"w": {b: -b if i % 2 else b for b in l.w_bits}, "a": {b: float(b) for b in l.a_bits}}
             for i, l in enumerate(net.layers)}  # an objective that spends the bits badly
    for backend, options, extra in [("ilp", {"objective": "costs", "floors": False}, {"costs": costs}),
                                    ("ilp", {"objective": "limpq", "floors": True}, {}),
                                    ("hessian", {"top_k": 2, "power_iters": 2}, {})]:
        calls = []
        result = search(net, "uniform:3", backend=backend, options=options, data=evaluation, calibration=calibration,
                        report=lambda what, done, total: calls.append((what, done, total)), **extra)
        selection = result.details["selection"]
        chosen = next(c for c in selection["candidates"] if c["name"] == selection["chosen"])
        assert chosen["loss"] <= uniform.loss + 1e-12 and chosen == selection["candidates"][0], backend
        assert "uniform 3/3" in [c["name"] for c in selection["candidates"]]
        assert calls and calls[-1][1] == calls[-1][2]  # progress ends at measured == total


def test_the_search_without_search_images_says_it_was_not_compared(trained):
    net, _, _ = trained
    result = search(net, "uniform:4", options={"objective": "limpq", "floors": False})
    assert result.details["selection"] == {"chosen": "search", "measured": False,
                                           "note": "not compared with uniform policies: no search images"}


@pytest.mark.parametrize("target,message", [
    ("uniform:9", "target 'uniform:9': 9 is not a candidate weight bit-width (candidates: 2, 3, 4, 5, 6)"),
    ("uniform:4/7", "target 'uniform:4/7': 7 is not a candidate activation bit-width (candidates: 2, 3, 4, 5, 6)"),
    ("size=uniform:8", "target 'uniform:8': 8 is not a candidate weight bit-width"),
])
def test_uniform_targets_must_name_candidate_bit_widths(trained, target, message):
    net, _, _ = trained
    with pytest.raises(TargetError) as info:
        parse_target(target, net)
    assert message in str(info.value)
