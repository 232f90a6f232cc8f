"""RFQ mechanisms on crafted inputs: Eq. 6-7 scheduler, Eq. 8 IDM, fairness and QE terms, step structure."""

from __future__ import annotations

import pytest
import torch

from mpqfx import Policy
from mpqfx.train import Trainer
from mpqfx.train.oneshot import freeze_count, idm_distance, unstable_criterion


def record_runs(trainer: Trainer, monkeypatch, steps: int) -> list[tuple[Policy, dict]]:
    """Train ``steps`` steps and return every ``trainer.run`` call's policy and keyword arguments, in order."""
    seen = []
    original = trainer.run

    def spy(policy, *args, **kwargs):
        seen.append((policy, kwargs))
        return original(policy, *args, **kwargs)

    monkeypatch.setattr(trainer, "run", spy)
    trainer.fit(stop_after=steps)
    return seen


def test_unstable_criterion_counts_weights_near_bounds():
    step = torch.tensor(0.1)
    at_levels = torch.tensor([0.0, 0.1, -0.2, 0.3])
    near_bounds = torch.tensor([0.049, 0.151, -0.249, 0.051])  # within eps*step/2 of a midpoint
    clipped = torch.tensor([5.0, -5.0])  # beyond the 4-bit range [-8, 7] * 0.1
    assert unstable_criterion(at_levels, {4: step}, eps=0.25) == 0
    assert unstable_criterion(near_bounds, {4: step}, eps=0.25) == pytest.approx(1 / 16)
    assert unstable_criterion(clipped, {4: step}, eps=0.25) == 0
    # summed over the candidate bits with weight 2^-b (Eq. 6); at 2 bits the range is [-2, 1],
    # so 1.51 and -2.49 (in steps) are clipped, not near a bound: 2 of 4 count
    assert unstable_criterion(near_bounds, {2: step, 4: step}, eps=0.25) == pytest.approx(0.5 / 4 + 1 / 16)


def test_freeze_count_decays_by_cosine():
    assert freeze_count(0.5, 10, 0.0) == 5
    assert freeze_count(0.5, 10, 0.5) == round(2.5)
    assert freeze_count(0.5, 10, 1.0) == 0


def test_scheduler_freezes_exactly_the_layers_nearest_the_bounds(make_net, small_recipe, dataset):
    net = make_net(small_recipe("oneshot"))
    searchable = [l.name for l in net.layers if l.role.value == "normal" and len(l.w_bits) > 1]
    unstable = set(searchable[1:6:2])
    recipe = small_recipe("oneshot", {"freeze_ratio": len(unstable) / len(searchable)})  # K = 3 at the start
    strategy = Trainer(net, dataset, recipe, progress=False).strategy
    modules = net.layer_modules()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name in searchable:
            quant, w = modules[name].weight_quant, modules[name].weight
            for b in net.layer(name).w_bits:
                quant.step(b).fill_(0.1)
            levels = torch.randint(-1, 1, w.shape, generator=gen).float() * 0.1
            # unstable layers: every weight just inside a rounding bound; the others on a level
            w.copy_(levels + (0.049 if name in unstable else 0.0))
    strategy.reschedule()
    assert set(strategy.frozen) == unstable
    for name in unstable:  # a frozen layer never draws its smallest weight bit
        low = min(net.layer(name).w_bits)
        assert all(strategy._sample()[name].w != low for _ in range(50))


def test_idm_loss_is_zero_for_identical_inputs_and_positive_otherwise():
    x = torch.randn(4, 8, 5, 5)
    assert idm_distance(x, x, floor=0.0) == 0
    assert idm_distance(x, x + 0.1, floor=0.0) > 0
    assert idm_distance(x, x + 0.1, floor=float("-inf")) == pytest.approx(0.1, rel=1e-4)
    # the floor Q rectifies both sides: below it nothing differs
    assert idm_distance(-x.abs() - 1, -x.abs() - 2, floor=0.0) == 0


def test_each_step_runs_the_max_policy_then_k_samples(make_net, small_recipe, dataset, monkeypatch):
    recipe = small_recipe("oneshot", {"samples": 2, "qe_start": 0.0})
    net = make_net(recipe)
    trainer = Trainer(net, dataset, recipe, progress=False)
    seen = [(policy, kwargs.get("sync"), kwargs.get("weight"), kwargs.get("teacher_logits") is not None)
            for policy, kwargs in record_runs(trainer, monkeypatch, steps=1)]
    assert len(seen) == 3 and seen[0][0] == Policy.max(net)
    assert [s[1] for s in seen] == [False, False, True]  # one all-reduce per step, on the last backward
    assert all(s[2] == pytest.approx(1 / 3) for s in seen)  # Eq. 2: the average over the step's policies
    assert [s[3] for s in seen] == [False, True, True]  # in-place distillation from the max policy


def test_fairness_term_cancels_weight_decay_inside_the_smallest_range(make_net, small_recipe, dataset):
    recipe = small_recipe("oneshot", weight_decay=0.1)
    net = make_net(recipe)
    strategy = Trainer(net, dataset, recipe, progress=False).strategy
    name = strategy.searchable[0]
    module = net.layer_modules()[name]
    step = module.weight_quant.step(min(net.layer(name).w_bits)).detach()
    strategy._fairness_loss({name}).backward()
    w = module.weight.detach()
    inside = (w > -2 * step) & (w < 1 * step)
    torch.testing.assert_close(module.weight.grad[inside], -0.1 * w[inside])
    assert torch.all(module.weight.grad[~inside] == 0)


def test_qe_loss_pulls_latent_weights_to_their_quantized_values(make_net, small_recipe, dataset):
    recipe = small_recipe("oneshot")
    net = make_net(recipe)
    strategy = Trainer(net, dataset, recipe, progress=False).strategy
    policy = Policy.uniform(net, 3)
    loss = strategy._qe_loss(policy)
    assert loss > 0
    loss.backward()
    name = strategy.searchable[0]
    module = net.layer_modules()[name]
    assert module.weight.grad is not None and module.weight.grad.abs().sum() > 0
    assert module.weight_quant.step(3).grad is None  # the step is held fixed by this loss


def test_uniform_share_draws_one_weight_and_one_activation_bit_for_every_layer(make_net, small_recipe, dataset):
    recipe = small_recipe("oneshot", {"uniform_share": 1.0, "scheduler": False})
    net = make_net(recipe)
    strategy = Trainer(net, dataset, recipe, progress=False).strategy
    drawn = set()
    for _ in range(300):  # the seeded draws cover all 25 pairs
        policy = strategy._sample()
        normal = [policy[l.name] for l in net.layers if l.role.value == "normal" and len(l.w_bits) == 5]
        w, a = normal[0].w, normal[0].a
        assert policy == Policy.uniform(net, w, a)  # depthwise layers take their nearest allowed bits
        drawn.add((w, a))
    assert drawn == {(w, a) for w in range(2, 7) for a in range(2, 7)}  # both drawn independently


def test_uniform_share_zero_leaves_the_per_layer_draws_unchanged(make_net, small_recipe, dataset):
    draws = []
    for options in ({}, {"uniform_share": 0.0}):
        recipe = small_recipe("oneshot", options)
        strategy = Trainer(make_net(recipe), dataset, recipe, progress=False).strategy
        draws.append([strategy._sample() for _ in range(5)])
    assert draws[0] == draws[1]
    recipe = small_recipe("oneshot", {"uniform_share": 0.5})
    strategy = Trainer(make_net(recipe), dataset, recipe, progress=False).strategy
    full = [l.name for l in strategy.net.layers if l.role.value == "normal" and len(l.w_bits) == 5]
    policies = [strategy._sample() for _ in range(200)]
    uniform = sum(len({policy[name] for name in full}) == 1 for policy in policies)
    assert 80 <= uniform <= 130  # about half, plus the rare per-layer draw that comes out uniform


def test_sandwich_runs_the_min_policy_after_the_max_one_every_step(make_net, small_recipe, dataset, monkeypatch):
    recipe = small_recipe("oneshot", {"samples": 1, "sandwich": True, "scheduler": False})
    net = make_net(recipe)
    trainer = Trainer(net, dataset, recipe, progress=False)
    seen = [(policy, kwargs.get("weight")) for policy, kwargs in record_runs(trainer, monkeypatch, steps=2)]
    assert len(seen) == 6 and [s[0] for s in seen[::3]] == [Policy.max(net)] * 2
    assert [s[0] for s in seen[1::3]] == [Policy.min(net)] * 2  # depthwise layers at 3-bit weights: their min
    assert all(s[1] == pytest.approx(1 / 3) for s in seen)


def test_sandwich_min_policy_skips_the_smallest_weight_bit_of_frozen_layers(make_net, small_recipe, dataset):
    recipe = small_recipe("oneshot", {"sandwich": True})
    net = make_net(recipe)
    strategy = Trainer(net, dataset, recipe, progress=False).strategy
    frozen = strategy.searchable[0]
    strategy.frozen = [frozen]
    policy = strategy._min_policy()
    layer = net.layer(frozen)
    assert policy[frozen] == (layer.w_bits[1], min(layer.a_bits))
    assert all(policy[l.name] == Policy.min(net)[l.name] for l in net.layers if l.name != frozen)
