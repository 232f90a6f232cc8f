"""Transitional / switchable / shared BatchNorm: keys, selection and training isolation."""

from __future__ import annotations

import pytest
import torch

import mpqfx
from mpqfx import Policy, Recipe
from mpqfx.quant.transitional_bn import FLOAT_KEY, TransitionalBatchNorm
from mpqfx.recipe import BnMode, QuantConfig


def _bns(net):
    return {bn.layer: bn for bn in net.transitional_bns()}


def test_transitional_sets_are_keyed_by_previous_and_own_weight_bits(toy_net):
    net = mpqfx.prepare(toy_net, example_input=torch.randn(1, 3, 8, 8))
    bns = _bns(net)
    assert set(bns) == {"stem", "dw", "pw"}
    assert set(bns["stem"].sets) == {FLOAT_KEY, "pin_c8"}
    assert set(bns["dw"].sets) == {FLOAT_KEY} | {f"p8_c{w}" for w in (3, 4, 5, 6)}
    assert set(bns["pw"].sets) == {FLOAT_KEY} | {f"p{p}_c{w}" for p in (3, 4, 5, 6) for w in (2, 3, 4, 5, 6)}
    policy = Policy.uniform(net, 4).replace(dw=(5, 3), pw=(2, 6))
    net.set_policy(policy)
    assert (bns["stem"].active, bns["dw"].active, bns["pw"].active) == ("pin_c8", "p8_c5", "p5_c2")
    net.set_policy(Policy.bypass(net))
    assert all(bn.active == FLOAT_KEY for bn in bns.values())


def test_switchable_keys_use_own_bits(toy_net):
    recipe = Recipe(quant=QuantConfig(bn=BnMode.SWITCHABLE))
    net = mpqfx.prepare(toy_net, recipe, example_input=torch.randn(1, 3, 8, 8))
    bns = _bns(net)
    assert len(bns["pw"].sets) == 1 + 25
    net.set_policy(Policy.uniform(net, 4).replace(pw=(2, 6)))
    assert bns["pw"].active == "w2_a6"


def test_shared_mode_keeps_plain_batchnorms(toy_net):
    net = mpqfx.prepare(toy_net, Recipe(quant=QuantConfig(bn=BnMode.SHARED)), example_input=torch.randn(1, 3, 8, 8))
    assert net.transitional_bns() == []
    assert type(net.graph_module.bn1) is torch.nn.BatchNorm2d


def test_training_updates_only_the_selected_set(toy_net, toy_input):
    net = mpqfx.prepare(toy_net, example_input=toy_input[:1]).train()
    bn = _bns(net)["pw"]
    net.set_policy(Policy.uniform(net, 4).replace(dw=(3, 4), pw=(2, 2)))
    before = {k: s.running_mean.clone() for k, s in bn.sets.items()}
    net(toy_input).sum().backward()
    used = bn.sets["p3_c2"]
    assert used.weight.grad is not None and not torch.equal(used.running_mean, before["p3_c2"])
    for key, s in bn.sets.items():
        if key != "p3_c2":
            assert s.weight.grad is None and torch.equal(s.running_mean, before[key]), key


def test_every_set_starts_as_a_copy_of_the_original(toy_net):
    toy_net.bn2.running_mean.fill_(0.25)
    net = mpqfx.prepare(toy_net, example_input=torch.randn(1, 3, 8, 8))
    for s in _bns(net)["pw"].sets.values():
        assert torch.equal(s.running_mean, toy_net.bn2.running_mean)
        assert s.running_mean.data_ptr() != toy_net.bn2.running_mean.data_ptr()


def test_unknown_key_is_an_error(toy_net):
    net = mpqfx.prepare(toy_net, example_input=torch.randn(1, 3, 8, 8))
    with pytest.raises(KeyError, match="no BatchNorm set"):
        _bns(net)["pw"].select("p9_c9")
    assert isinstance(net.graph_module.bn2, TransitionalBatchNorm)
