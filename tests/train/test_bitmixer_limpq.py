"""Bit-Mixer's stage schedule and LIMPQ's per-step policies and indicators."""

from __future__ import annotations

import json

import pytest

from mpqfx import LayerBits, Policy
from mpqfx.search.indicators import load_indicators
from mpqfx.train import Trainer
from mpqfx.train.limpq import INDICATORS_NAME


@pytest.fixture
def bitmixer(make_net, small_recipe, dataset):
    recipe = small_recipe("bitmixer", {"stages": (0.2, 0.3, 0.5), "k": 0.75})
    net = make_net(recipe)
    return net, Trainer(net, dataset, recipe, progress=False).strategy


def test_bitmixer_stage_probabilities_follow_the_schedule(bitmixer):
    _, strategy = bitmixer
    assert strategy.stage_at(0.1) == (0, pytest.approx(0.5))
    assert strategy.stage_at(0.35) == (1, pytest.approx(0.5))
    assert strategy.stage_at(0.75) == (2, pytest.approx(0.5))
    assert strategy.layerwise_probability(0.4) == 0
    assert strategy.layerwise_probability(0.5) == pytest.approx(0.0)
    assert strategy.layerwise_probability(0.75) == pytest.approx(0.375)
    assert strategy.layerwise_probability(1.0) == pytest.approx(0.75)


def test_bitmixer_policies_per_stage(bitmixer):
    net, strategy = bitmixer
    normal = [l for l in net.layers if l.role.value == "normal"]
    for _ in range(20):
        p = strategy.policy_at(0.1)  # stage I: float weights, one activation bit-width
        assert all(b.w is None for b in p.values())
        assert len({p[l.name].a for l in normal}) == 1
        p = strategy.policy_at(0.3)  # stage II: one bit-width for everything
        assert p == Policy.uniform(net, p[normal[0].name].w) or any(l.kind.value == "depthwise" for l in normal)
    # stage III at its end: about k of the policies are layer-wise random
    layerwise = 0
    trials = 2000
    for _ in range(trials):
        p = strategy.policy_at(0.999)
        if len({p[l.name].w for l in normal}) > 1:
            layerwise += 1
    assert layerwise / trials == pytest.approx(0.75, abs=0.04)


def test_limpq_runs_every_uniform_bitwidth_and_a_random_policy_then_one_update(make_net, small_recipe, dataset,
                                                                               monkeypatch, tmp_path):
    recipe = small_recipe("limpq")
    net = make_net(recipe)
    trainer = Trainer(net, dataset, recipe, run_dir=tmp_path, progress=False)
    runs, steps = [], []
    run, step = trainer.run, trainer.optimizer_step
    monkeypatch.setattr(trainer, "run", lambda p, *a, **k: (runs.append(p), run(p, *a, **k))[1])
    monkeypatch.setattr(trainer, "optimizer_step", lambda *a, **k: (steps.append(1), step(*a, **k))[1])
    trainer.fit(stop_after=1)
    assert runs[:5] == [Policy.uniform(net, b) for b in (6, 5, 4, 3, 2)]
    assert len(runs) == 6 and len(steps) == 1
    assert runs[5] not in runs[:5]


def test_limpq_saves_the_learned_steps_as_indicators(make_net, small_recipe, dataset, tmp_path):
    recipe = small_recipe("limpq", max_steps=2)
    net = make_net(recipe)
    Trainer(net, dataset, recipe, run_dir=tmp_path, progress=False).fit()
    indicators = load_indicators(tmp_path / INDICATORS_NAME, net.layers)
    assert set(indicators) == {l.name for l in net.layers if len(l.w_bits) * len(l.a_bits) > 1}  # fixed: no choice
    name = net.layers[3].name
    module = net.layer_modules()[name]
    assert set(indicators[name]["w"]) == set(net.layer(name).w_bits)
    assert indicators[name]["a"][4] == pytest.approx(float(module.act_quant.step(4).detach()))
    assert json.loads((tmp_path / INDICATORS_NAME).read_text())["format"] == "mpqfx.indicators/1"
