"""Policy helpers, validation and YAML/JSON round trips."""

from __future__ import annotations

import random

import pytest
import torch

import mpqfx
from mpqfx import LayerBits, LayerKind, Policy, PolicyError, Role


def _restrictions_hold(net, policy):
    for info in net.layers:
        bits = policy[info.name]
        if info.role is not Role.NORMAL:
            assert bits == LayerBits(8, 8), info.name
        if info.kind is LayerKind.DEPTHWISE:
            assert bits.w != 2, info.name
        assert bits.w in info.w_bits and bits.a in info.a_bits


@pytest.fixture
def toy_supernet(toy_net):
    return mpqfx.prepare(toy_net, example_input=torch.randn(1, 3, 8, 8))


def test_helpers_respect_first_last_and_depthwise(toy_supernet):
    net = toy_supernet
    for b in range(1, 9):
        _restrictions_hold(net, Policy.uniform(net, b))
    _restrictions_hold(net, Policy.max(net))
    _restrictions_hold(net, Policy.min(net))
    for seed in range(50):
        _restrictions_hold(net, Policy.sample(net, seed))
    assert Policy.uniform(net, 2)["dw"] == LayerBits(3, 2)  # nearest allowed weight bit for a depthwise conv
    assert Policy.min(net)["pw"] == LayerBits(2, 2) and Policy.max(net)["pw"] == LayerBits(6, 6)


def test_sampling_is_seeded_with_every_rng_kind(toy_supernet):
    net = toy_supernet
    assert Policy.sample(net, 3) == Policy.sample(net, 3)
    assert Policy.sample(net, random.Random(3)) == Policy.sample(net, random.Random(3))
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert Policy.sample(net, g1) == Policy.sample(net, g2)
    assert len({Policy.sample(net, s) for s in range(20)}) > 1


def test_sampling_is_uniform_over_allowed_bits(toy_supernet):
    rng = random.Random(0)
    counts = {}
    for _ in range(2000):
        w = Policy.sample(toy_supernet, rng)["pw"].w
        counts[w] = counts.get(w, 0) + 1
    assert sorted(counts) == [2, 3, 4, 5, 6]
    assert all(abs(c / 2000 - 0.2) < 0.04 for c in counts.values())


def test_yaml_and_json_round_trip(tmp_path, toy_supernet):
    p = Policy.sample(toy_supernet, 7)
    assert Policy.from_yaml(p.to_yaml()) == p
    assert Policy.from_json(p.to_json()) == p
    assert Policy.load(p.save(tmp_path / "p.yaml")) == p
    assert Policy.load(p.save(tmp_path / "p.json")) == p
    bypass = Policy.bypass(toy_supernet)
    assert bypass.is_bypass and Policy.from_yaml(bypass.to_yaml()) == bypass


def test_validation_names_the_layer_and_allowed_bits(toy_supernet):
    good = Policy.uniform(toy_supernet, 4)
    with pytest.raises(PolicyError, match=r"'dw'.*weight bit-width 2 not allowed \(allowed: \[3, 4, 5, 6\]\)"):
        toy_supernet.set_policy(good.replace(dw=(2, 4)))
    with pytest.raises(PolicyError, match=r"'stem'.*activation bit-width 4 not allowed \(allowed: \[8\]\)"):
        toy_supernet.set_policy(good.replace(stem=(8, 4)))
    with pytest.raises(PolicyError, match=r"unknown layer 'nope'"):
        toy_supernet.set_policy(good.replace(nope=(4, 4)))
    with pytest.raises(PolicyError, match=r"no bit-widths for layer 'stem'"):
        toy_supernet.set_policy(Policy({k: v for k, v in good.items() if k != "stem"}))
    assert toy_supernet.policy.is_bypass  # a rejected policy changes nothing


@pytest.mark.parametrize("text,match", [
    ("layers: {fc: {w: four, a: 4}}", "must be integers"),
    ("layers: [1, 2]", "'layers' mapping"),
    ("format: other/9\nlayers: {}", "unknown format"),
    ("layers: {fc: [4]}", r"expected \(w_bits, a_bits\)"),
    ("layers: {fc: {w: 4, a: 4}", "not valid YAML"),
])
def test_malformed_policy_files_raise_policy_error(text, match):
    with pytest.raises(PolicyError, match=match):
        Policy.from_yaml(text)


def test_use_policy_restores_the_previous_one(toy_supernet):
    p = Policy.uniform(toy_supernet, 3)
    with toy_supernet.use_policy(p):
        assert toy_supernet.policy == p
    assert toy_supernet.policy.is_bypass
