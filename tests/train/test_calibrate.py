"""Strategy ``calibrate`` (recipe ``ptq``): MSE-fitted steps against brute force, sensitivities
against full evaluations, the ILP against enumeration, and its errors."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

import mpqfx
from mpqfx import Policy, Recipe
from mpqfx.errors import MpqfxError, RecipeError
from mpqfx.evaluate import evaluate
from mpqfx.quant.lsq import int_range
from mpqfx.search import search
from mpqfx.search.constraints import Constraints
from mpqfx.search.sensitivity import measure_sensitivities
from mpqfx.train.calibrate import calibrate, calibration_batches, input_samples, mse_steps
from mpqfx.train.options import CalibrateOptions
from mpqfx.train.strategy import STRATEGIES


def brute_force_error(x: torch.Tensor, qmin: int, qmax: int, points: int = 4000) -> torch.Tensor:
    """The smallest squared error over a dense grid of steps up to the unclipped one, per row of x [G, n]."""
    top = torch.maximum(x.amax(1) / qmax, x.amin(1) / qmin if qmin < 0 else torch.zeros(len(x)))
    best = torch.full((len(x),), math.inf, dtype=torch.float64)
    for k in range(1, points + 1):
        s = (top * k / points)[:, None]
        best = torch.minimum(best, ((x / s).clamp(qmin, qmax).round() * s - x).double().square().sum(1))
    return best


def error(x: torch.Tensor, step: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    s = step.reshape(-1, 1)
    return ((x / s).clamp(qmin, qmax).round() * s - x).double().square().sum(1)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_fitted_weight_step_is_as_good_as_a_dense_brute_force_grid(bits):
    torch.manual_seed(bits)
    weight = torch.distributions.Laplace(0.0, 0.05).sample((6, 3, 5, 5))  # heavy tails: clipping pays
    weight[0, 0, 0, 0] = 0.9  # one outlier channel
    rows = weight.reshape(6, -1)
    qmin, qmax = int_range(bits, signed=True)
    per_channel = mse_steps(weight, qmin, qmax, per_channel=True)
    assert per_channel.shape == (6,)
    brute = brute_force_error(rows, qmin, qmax)
    assert torch.all(error(rows, per_channel, qmin, qmax) <= brute * 1.0001)
    whole = mse_steps(weight, qmin, qmax, per_channel=False)
    assert whole.shape == ()
    assert error(rows.reshape(1, -1), whole, qmin, qmax) <= brute_force_error(rows.reshape(1, -1), qmin, qmax) * 1.0001
    unclipped = torch.maximum(rows.amax(1) / qmax, rows.amin(1) / qmin)  # no value clipped: worse at low bits
    if bits <= 3:
        assert error(rows, per_channel, qmin, qmax).sum() < 0.95 * error(rows, unclipped, qmin, qmax).sum()


def toy_net(recipe: Recipe, images: torch.Tensor) -> mpqfx.Supernet:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    return mpqfx.prepare(model, recipe, example_input=images[:1])


@pytest.fixture(scope="module")
def calibrated():
    """A calibrated toy supernet (recipe ptq), its calibration batches and its evaluation batches."""
    gen = torch.Generator().manual_seed(0)
    templates = torch.rand(4, 3, 8, 8, generator=gen)
    labels = torch.randint(0, 4, (160,), generator=gen)
    images = templates[labels] + 0.3 * torch.rand(160, 3, 8, 8, generator=gen)  # non-negative inputs
    net = toy_net(Recipe.load("ptq"), images)
    batches = [(images[i:i + 32], labels[i:i + 32]) for i in range(0, 96, 32)]
    calibrate(net, batches, CalibrateOptions(images=96, samples=4096))
    return net, batches, [(images[96:], labels[96:])]


def test_activation_steps_fit_every_input_value_as_a_brute_force_grid_does(calibrated):
    net, batches, _ = calibrated
    name, module = next(iter(net.layer_modules().items()))  # the first conv reads the images themselves
    images = torch.cat([x for x, _ in batches]).reshape(1, -1)
    quant = module.act_quant
    for bits in quant.bits:
        qmin, qmax = int_range(bits, quant.signed)
        fitted = error(images, quant.step(bits).detach(), qmin, qmax)
        assert fitted <= brute_force_error(images, qmin, qmax, 1000) * 1.01, (name, bits)
    assert bool(quant.initialized.all()) and bool(module.weight_quant.initialized.all())
    samples = input_samples(net, batches, per_layer=1000)
    assert len(samples[name]) == 3 * 334  # a third of 1000 values from each of the 3 batches
    assert len(samples[net.layers[-1].name]) == 3 * 32 * 8  # the classifier reads fewer: all of them
    assert set(samples[name].tolist()) <= set(images[0].tolist())  # drawn from the inputs themselves


def test_weight_steps_are_per_output_channel_fits_of_the_float_weights(calibrated):
    net, _, _ = calibrated
    for module in net.layer_modules().values():
        quant = module.weight_quant
        rows = module.weight.detach().reshape(module.weight.shape[0], -1)
        for bits in quant.bits:
            step = quant.step(bits).detach().reshape(-1)
            assert step.shape == (rows.shape[0],)
            qmin, qmax = int_range(bits, True)
            assert torch.all(error(rows, step, qmin, qmax) <= brute_force_error(rows, qmin, qmax, 1000) * 1.002)


def test_sensitivity_table_equals_loss_changes_of_full_evaluations(calibrated):
    net, _, evaluation = calibrated
    table, evaluations = measure_sensitivities(net, evaluation)
    top = Policy.max(net)
    reference = evaluate(net, top, evaluation).loss
    assert evaluations == sum(len(l.w_bits) + len(l.a_bits) - 2 for l in net.layers)
    for layer in net.layers:
        for which, allowed in (("w", layer.w_bits), ("a", layer.a_bits)):
            running = 0.0  # by hand: the loss change, never smaller at fewer bits
            for bits in sorted(allowed, reverse=True):
                changed = (bits, top[layer.name].a) if which == "w" else (top[layer.name].w, bits)
                running = max(running, evaluate(net, top.replace(**{layer.name: changed}), evaluation).loss - reference)
                assert table[layer.name][which][bits] == pytest.approx(running, abs=1e-5)
    assert any(v > 0 for kinds in table.values() for costs in kinds.values() for v in costs.values())


def test_ilp_on_the_measured_sensitivities_picks_the_brute_force_optimum(calibrated):
    net, _, evaluation = calibrated
    table, _ = measure_sensitivities(net, evaluation)
    free = [l for l in net.layers if len(l.w_bits) * len(l.a_bits) > 1]
    assert len(free) == 2  # the first conv and the classifier stay at 8/8
    kernel_bits = lambda p: sum(l.params * p[l.name].w for l in net.layers)  # noqa: E731  size by hand
    budget_bits = kernel_bits(Policy.uniform(net, 4)) + 600
    fixed = net.float_params * 32
    result = search(net, Constraints(size_bits=budget_bits + fixed), backend="ilp",
                    options={"objective": "sensitivity", "floors": False}, data=evaluation)
    best = None
    for combo in itertools.product(*(itertools.product(l.w_bits, l.a_bits) for l in free)):
        policy = Policy.max(net).replace(**{l.name: c for l, c in zip(free, combo)})
        if kernel_bits(policy) > budget_bits:
            continue
        cost = sum(table[l.name]["w"][w] + table[l.name]["a"][a] for l, (w, a) in zip(free, combo))
        best = min(best or (math.inf, None), (cost, combo), key=lambda t: t[0])
    chosen = sum(table[l.name]["w"][result.policy[l.name].w] + table[l.name]["a"][result.policy[l.name].a] for l in free)
    assert chosen == pytest.approx(best[0], abs=1e-9)
    assert kernel_bits(result.policy) <= budget_bits


class Labelled(torch.utils.data.TensorDataset):
    """A tensor data set with the ``targets`` the class-stratified draws read."""

    @property
    def targets(self):
        return self.tensors[1]


def test_too_few_calibration_images_is_an_error_naming_the_minimum():
    few = Labelled(torch.zeros(20, 3, 8, 8), torch.arange(20) % 4)
    with pytest.raises(MpqfxError, match=r"strategy.options.images: the training split has 20 images; .* at least 32"):
        calibration_batches(few, CalibrateOptions(), 32, print)
    said = []
    some = calibration_batches(Labelled(torch.zeros(40, 1), torch.arange(40) % 4), CalibrateOptions(images=64), 16,
                               said.append)
    assert sum(len(y) for _, y in some) == 40 and "all of them are used" in said[0]


def test_recipe_checks_calibrate_options_and_weight_quantizer():
    recipe = Recipe.load("ptq")
    assert recipe.strategy.name == "calibrate" and recipe.warm_start.epochs == 0
    assert STRATEGIES.get("calibrate").trains is False
    with pytest.raises(RecipeError, match="images: must be >= 32"):
        Recipe.from_dict({"base": "ptq", "strategy": {"options": {"images": 8}}})
    with pytest.raises(RecipeError, match="quant.weight_quantizer: calibrate fits one step per bit-width"):
        Recipe.from_dict({"base": "ptq", "quant": {"weight_quantizer": "double_rounding"}})
