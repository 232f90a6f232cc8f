"""The greedy search against exhaustive search: every feasible policy of a small trained network
measured, and the greedy's pick within a stated margin of the best of them."""

from __future__ import annotations

import dataclasses
import itertools
from contextlib import contextmanager

import pytest
import torch
from torch import nn

import mpqfx
from mpqfx import Policy, Recipe, Role
from mpqfx.evaluate import evaluate
from mpqfx.search import parse_target, search
from mpqfx.search.backend import SearchError

MARGIN = 0.25  # the greedy's loss may exceed the exhaustive optimum's by this fraction of it


class SmallNet(nn.Module):
    """stem (8/8) -> a (3x3, most of the BitOPs) -> b (1x1) -> fc (8/8): two searchable layers."""

    def __init__(self):
        super().__init__()
        self.stem, self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 16, 3, padding=1), nn.Conv2d(16, 8, 1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = torch.relu(self.b(torch.relu(self.a(torch.relu(self.stem(x))))))
        return self.fc(x.mean((2, 3)))


@contextmanager
def one_thread():
    """Tiny tensors: one thread is faster, and far faster on a shared machine (43 s against 1.4 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def small():
    """A SmallNet trained in float on four noisy templates, its supernet with bits {2, 4, 6}, and
    two held-out batches with their labels."""
    torch.manual_seed(0)
    model = SmallNet()
    gen = torch.Generator().manual_seed(1)
    templates = torch.randn(4, 3, 6, 6, generator=gen)
    labels = torch.randint(0, 4, (352,), generator=gen)
    images = templates[labels] + 1.5 * torch.randn(352, 3, 6, 6, generator=gen)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    with one_thread():
        for _ in range(150):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(images[:256]), labels[:256]).backward()
            optimizer.step()
    recipe = Recipe.load("default")
    recipe = dataclasses.replace(recipe, quant=dataclasses.replace(recipe.quant, w_bits=(2, 4, 6), a_bits=(2, 4, 6)))
    x, y = images[256:], labels[256:]
    net = mpqfx.prepare(model.eval(), recipe.check(), example_input=x[:8]).eval()
    with torch.no_grad():
        for bits in (2, 4, 6, 8):  # fit every activation step on the held-out images
            net.set_policy(Policy.uniform(net, bits))
            net(x)
    net.set_policy(Policy.bypass(net))
    return net, [(x[:48], y[:48]), (x[48:], y[48:])]


def test_greedy_lands_within_the_margin_of_the_exhaustive_optimum(small):
    net, batches = small
    target = parse_target("uniform:4", net)
    searchable = [l for l in net.layers if l.role is Role.NORMAL]
    assert [l.name for l in searchable] == ["a", "b"]
    base = Policy.max(net)
    losses = {}
    with one_thread():
        result = search(net, target, backend="greedy", data=batches, calibration=batches)
        for combo in itertools.product(*(list(itertools.product(l.w_bits, l.a_bits)) for l in searchable)):
            policy = base.replace(**{l.name: pair for l, pair in zip(searchable, combo)})
            if target.satisfied_by(net, policy):
                losses[policy] = evaluate(net, policy, batches).loss
    optimum, uniform = min(losses.values()), losses[Policy.uniform(net, 4)]
    assert len(losses) > 40 and uniform > (1 + MARGIN) * optimum  # the uniform fallback alone misses the margin
    assert result.policy in losses  # feasible
    assert losses[result.policy] <= (1 + MARGIN) * optimum, (losses[result.policy], optimum)
    assert result.details["selection"]["chosen"] == "search"  # not rescued by the uniform baseline


def test_losses_and_costs_are_scaled_by_their_range_before_eq_9():
    from mpqfx.search.greedy import _normalise

    assert _normalise([2.0, 4.0, 3.0, 2.5]) == pytest.approx([0.0, 1.0, 0.5, 0.25])  # (v - 2) / (4 - 2)
    assert _normalise([1.5, 1.5]) == [0.0, 0.0]


def test_eq_9_cost_counts_each_bound_down_to_its_limit_only():
    from mpqfx.search.constraints import Constraints
    from mpqfx.search.greedy import _budget_cost

    measured = {"bitops": 50.0, "size_bits": 30.0, "avg_w_bits": 3.0, "avg_a_bits": 6.0}
    assert _budget_cost(Constraints(bitops=100.0), measured) == 1.0  # met: counts as the limit itself
    assert _budget_cost(Constraints(bitops=100.0, size_bits=10.0, avg_bits=4.0), measured) == 1 + 3 + 1 + 1.5


def test_moves_are_one_candidate_step_of_one_layer_s_weights_or_activations(small):
    from mpqfx.search.backend import SearchContext
    from mpqfx.search.greedy import GreedySearch
    from mpqfx.search.options import GreedyOptions

    net, _ = small  # searchable a and b, bits {2, 4, 6}
    policy = Policy.max(net).replace(a=(4, 4), b=(2, 6))
    moves = GreedySearch(net, GreedyOptions(), SearchContext()).moves(policy)
    got = sorted((name, p[name].w, p[name].a) for name, p in moves)
    assert got == [("a", 2, 4), ("a", 4, 2), ("a", 4, 6), ("a", 6, 4), ("b", 2, 4), ("b", 4, 6)]


def test_a_uniform_start_that_meets_the_budget_is_the_answer(small):
    from mpqfx.search.backend import SearchContext
    from mpqfx.search.greedy import GreedySearch
    from mpqfx.search.options import GreedyOptions

    net, batches = small
    greedy = GreedySearch(net, GreedyOptions(start="uniform:4"), SearchContext(batches=batches))
    with one_thread():
        assert greedy.run(parse_target("uniform:4", net)).policy == Policy.uniform(net, 4)


def test_an_unreachable_budget_stops_after_twice_the_steps_from_max_to_min(small):
    from mpqfx.search.backend import SearchContext
    from mpqfx.search.constraints import Constraints
    from mpqfx.search.greedy import GreedySearch
    from mpqfx.search.options import GreedyOptions

    net, batches = small  # a and b: 2 + 2 one-bit steps each from 6/6 down to 2/2; stem and fc fixed
    greedy = GreedySearch(net, GreedyOptions(), SearchContext(batches=batches[:1]))
    with one_thread(), pytest.raises(SearchError, match="within 17 iterations"):
        greedy.run(Constraints(bitops=1.0))


@pytest.mark.parametrize("options", [{}, {"reuse_activations": False}, {"recalibrate_batches": 1}])
def test_one_move_below_max_is_one_iteration_of_four_candidates(small, options):
    from mpqfx.search.backend import SearchContext
    from mpqfx.search.constraints import Constraints
    from mpqfx.search.greedy import GreedySearch
    from mpqfx.search.options import GreedyOptions

    net, batches = small  # from max (6/6 on a and b) the only moves are one step down: 4 candidates
    progress = []
    context = SearchContext(batches=batches, calibration=batches[:1], report=lambda *step: progress.append(step))
    budget = Constraints(bitops=mpqfx.bitops(net, Policy.max(net)).total - 1)
    with one_thread():
        result = GreedySearch(net, GreedyOptions(**options), context).run(budget)
    moved = [name for name in ("a", "b") if result.policy[name] != Policy.max(net)[name]]
    assert len(moved) == 1 and budget.satisfied_by(net, result.policy)
    assert progress == [("greedy candidates", done, 4) for done in range(4)]
    details = result.details
    assert (details["iterations"], details["evaluations"], details["batch_forwards"]) == (1, 4, 4 * len(batches))
    assert 0 < details["seconds"] < 60
    assert ("recomputed_fraction" in details) is (not options) and 0 < details.get("recomputed_fraction", 0.5) < 1


def test_without_the_cost_term_the_move_with_the_lowest_measured_loss_wins(small):
    from mpqfx.search.backend import SearchContext
    from mpqfx.search.constraints import Constraints
    from mpqfx.search.greedy import GreedySearch
    from mpqfx.search.options import GreedyOptions

    net, batches = small
    top = Policy.max(net)
    moves = [top.replace(a=(4, 6)), top.replace(a=(6, 4)), top.replace(b=(4, 6)), top.replace(b=(6, 4))]
    budget = Constraints(bitops=mpqfx.bitops(net, top).total - 1)  # any one move meets it: one iteration
    with one_thread():
        losses = [evaluate(net, p, batches).loss for p in moves]
        result = GreedySearch(net, GreedyOptions(lam=0.0), SearchContext(batches=batches)).run(budget)
    assert result.policy == moves[losses.index(min(losses))] != moves[0]  # not merely the first candidate
