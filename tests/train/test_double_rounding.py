"""Double Rounding: Eq. 1-3 from the stored integers, Eq. 13 gradients, ALRS (Eq. 6-7), roulette (Alg. 1), HASB."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest
import torch

from mpqfx.quant.double_rounding import DoubleRoundingQuantizer, derive_integers
from mpqfx.quant.lsq import int_range
from mpqfx.train import Trainer
from mpqfx.train.double_rounding import alrs_factor, alrs_lr, roulette


def direct_formula(w: torch.Tensor, s_h: float, high: int, low: int) -> torch.Tensor:
    """Eq. 1-3 written out as printed."""
    w_h = torch.clamp(torch.round(w / s_h), -(2 ** (high - 1)), 2 ** (high - 1) - 1)
    delta = high - low
    w_l = torch.clamp(torch.round(w_h / 2**delta), -(2 ** (low - 1)), 2 ** (low - 1) - 1)
    return w_l * s_h * 2**delta


def test_lower_bits_from_stored_8bit_integers_equal_the_direct_formula():
    w = torch.randn(64, 32, 3, 3, generator=torch.Generator().manual_seed(0)) * 0.05
    quant = DoubleRoundingQuantizer((2, 4, 6, 8))
    quant.init_steps(w)
    s_h = float(quant.scale.detach())
    stored = quant.integers(w)  # what an export keeps: 8-bit integers + s_h
    assert stored.abs().max() <= 128 and torch.equal(stored, stored.round())
    for bits in (2, 4, 6, 8):
        direct = direct_formula(w, s_h, 8, bits)
        from_file = derive_integers(stored, 8, bits) * s_h * 2 ** (8 - bits)
        torch.testing.assert_close(from_file, direct, rtol=0, atol=1e-7)
        torch.testing.assert_close(quant(w, bits).detach(), direct, rtol=1e-6, atol=1e-7)
        lo, hi = int_range(bits, signed=True)
        ints = quant.integers(w, bits)
        assert ints.min() >= lo and ints.max() <= hi


def test_gradients_follow_eq13_at_the_effective_scale():
    w = (torch.randn(200, generator=torch.Generator().manual_seed(1)) * 0.3).requires_grad_()
    quant = DoubleRoundingQuantizer((2, 4, 8))
    quant.scale.data.fill_(0.01)
    up = torch.randn(200, generator=torch.Generator().manual_seed(2))
    quant(w, 4).backward(up)
    eff = 0.01 * 2**4
    v = w.detach() / eff
    inside = (v > -8) & (v < 7)
    ints = quant.integers(w.detach(), 4)  # the double-rounded 4-bit integers of the forward
    local = torch.where(inside, ints - v, torch.where(v <= -8, torch.tensor(-8.0), torch.tensor(7.0)))
    g = 1 / (200 * 7) ** 0.5
    assert quant.scale.grad.item() == pytest.approx(float((up * local).sum() * g), rel=1e-4)
    torch.testing.assert_close(w.grad, up * inside)


@pytest.mark.parametrize("bits,eta", [(8, 1.0), (7, 0.5), (6, 0.1), (5, 0.05), (4, 0.01), (3, 0.005), (2, 0.001)])
def test_alrs_factors_follow_eq7(bits, eta):
    assert alrs_factor(bits, 8) == pytest.approx(eta)


def test_alrs_learning_rate_follows_eq6():
    grads = [[torch.tensor(0.3), torch.tensor(-0.4)],  # norm 0.5 -> unclipped, max_abs 0.4
             [torch.tensor(3.0), torch.tensor(4.0)]]  # norm 5 -> clipped to norm 1: max_abs 0.8
    expected = alrs_factor(4, 8) * (1.0 - (0.4 + 0.8) / 2)
    assert alrs_lr(1.0, 4, 8, grads) == pytest.approx(expected)
    assert alrs_lr(0.1, 4, 8, grads) == 0.0  # lambda below the mean: floored at zero


def test_roulette_frequencies_match_alg1():
    rng = random.Random(0)
    bits = [2, 4, 6, 8]
    n = 40_000
    insensitive = Counter(roulette(bits, trace=1.0, mean_trace=2.0, rng=rng) for _ in range(n))
    sensitive = Counter(roulette(bits, trace=3.0, mean_trace=2.0, rng=rng) for _ in range(n))
    for b in bits:
        assert insensitive[b] / n == pytest.approx(0.25, abs=0.01)
        assert sensitive[b] / n == pytest.approx(b / 20, abs=0.01)


def test_hasb_sigma_rises_per_epoch_of_its_stage(make_net, small_recipe, dataset):
    recipe = small_recipe("double_rounding", {"multi_precision": 0.5, "sigma": 0.8, "hessian_images": 32},
                          epochs=4)
    net = make_net(recipe)
    strategy = Trainer(net, dataset, recipe, progress=False).strategy
    # HASB stage = last 2 of 4 epochs: sigma * (epoch + 1) / 2
    assert strategy.sigma_at(0.5) == pytest.approx(0.4)
    assert strategy.sigma_at(0.74) == pytest.approx(0.4)
    assert strategy.sigma_at(0.76) == pytest.approx(0.8)
    assert strategy.sigma_at(0.999) == pytest.approx(0.8)


def test_setup_measures_hessian_traces_of_every_layer(make_net, small_recipe, dataset):
    recipe = small_recipe("double_rounding", {"hessian_images": 64, "hessian_samples": 4})
    net = make_net(recipe)
    trainer = Trainer(net, dataset, recipe, progress=False)
    trainer.strategy.setup()
    traces = trainer.strategy.traces
    assert set(traces) == {l.name for l in net.layers}
    assert all(math.isfinite(t) for t in traces.values()) and any(t != 0 for t in traces.values())
    assert net.policy.is_bypass  # the float model is measured and the policy restored


def test_multi_precision_step_updates_after_each_bit_width(make_net, small_recipe, dataset, monkeypatch):
    recipe = small_recipe("double_rounding", {"multi_precision": 1.0})
    net = make_net(recipe)
    trainer = Trainer(net, dataset, recipe, progress=False)
    calls = []
    original = trainer.optimizer_step
    monkeypatch.setattr(trainer, "optimizer_step", lambda quant_lr=None: (calls.append(quant_lr), original(quant_lr))[1])
    trainer.fit(stop_after=1)
    assert len(calls) == len(trainer.strategy.bits) == 4  # {8, 6, 4, 2}: an update per precision (Alg. A.2)
    lr = trainer.quant_lr
    assert calls[0] <= lr and calls[-1] <= alrs_factor(2, 8) * lr  # ALRS scales each precision
