"""Fisher-estimated sensitivities (ILP ``estimate: fisher``) against the closed-form Fisher of a
linear softmax classifier, where the Fisher is the Hessian of the cross-entropy exactly."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import mpqfx
from mpqfx import Recipe
from mpqfx.errors import MpqfxError
from mpqfx.quant.lsq import int_range
from mpqfx.search import search
from mpqfx.search.fisher import fisher_sensitivities
from mpqfx.search.sensitivity import CACHE_NAME, cached_sensitivities
from mpqfx.train.calibrate import calibrate
from mpqfx.train.options import CalibrateOptions

IMAGES = 3000


@pytest.fixture(scope="module")
def linear():
    """A calibrated one-layer softmax classifier (every bit-width searchable) and its inputs."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(IMAGES, 1, 3, 4, generator=gen)
    recipe = Recipe.from_dict({"base": "ptq", "name": "ptq-linear", "quant": {"first_last_bits": None}})
    torch.manual_seed(0)
    net = mpqfx.prepare(nn.Sequential(nn.Flatten(), nn.Linear(12, 3)), recipe, example_input=x[:1])
    with torch.no_grad():
        next(iter(net.layer_modules().values())).weight.mul_(4)  # confident but not saturated predictions
    batches = [(x[i:i + 500], torch.zeros(500, dtype=torch.long)) for i in range(0, IMAGES, 500)]
    calibrate(net, batches, CalibrateOptions(images=IMAGES, samples=4096))
    return net, batches


def by_hand(quant, x: torch.Tensor, bits: int) -> torch.Tensor:
    step = quant.step(bits).detach()
    qmin, qmax = int_range(bits, quant.signed)
    return (x / step).clamp(qmin, qmax).round() * step


def closed_form(net, x: torch.Tensor) -> dict[str, dict[int, float]]:
    """1/2 sum_i F_ii delta_i^2 with the exact Fisher of softmax(W x + b): for W[k, j] the mean of
    p_k (1 - p_k) x_j^2, for x_j (per image) sum_k p_k W_kj^2 - (sum_k p_k W_kj)^2."""
    (layer,) = net.layers
    module = net.layer_modules()[layer.name]
    w, b = module.weight.detach(), module.bias.detach()
    x = x.reshape(len(x), -1)
    p = (x @ w.T + b).softmax(1)
    fisher_w = (p * (1 - p)).T @ x.square() / len(x)  # [3, 12]
    fisher_x = p @ w.square() - (p @ w).square()  # [N, 12]
    return {"w": {bits: 0.5 * float((fisher_w * (by_hand(module.weight_quant, w, bits) - w).square()).sum())
                  for bits in layer.w_bits},
            "a": {bits: 0.5 * float((fisher_x * (by_hand(module.act_quant, x, bits) - x).square()).sum()) / len(x)
                  for bits in layer.a_bits}}


@pytest.mark.parametrize("micro_batch", [10, 50])
def test_fisher_sensitivities_match_the_closed_form_of_a_softmax_classifier(linear, micro_batch):
    net, batches = linear
    (layer,) = net.layers
    expected = closed_form(net, torch.cat([x for x, _ in batches]))
    tables = [fisher_sensitivities(net, batches, micro_batch=micro_batch, seed=seed)[layer.name] for seed in range(4)]
    assert set(tables[0]["w"]) == set(layer.w_bits) == {2, 3, 4, 6, 8} and set(tables[0]["a"]) == set(layer.a_bits)
    for which in ("w", "a"):
        for bits, value in expected[which].items():
            assert value > 0
            # labels drawn from the model: an unbiased estimate, within a few percent over 4 x 3,000 draws
            mean = sum(t[which][bits] for t in tables) / len(tables)
            assert mean == pytest.approx(value, rel=0.1), (which, bits)
    assert tables[0]["w"][2] > 20 * tables[0]["w"][8]  # and it orders the bit-widths
    assert tables[0] != tables[1]  # the seed draws the labels


def test_labels_do_not_matter_and_the_model_is_left_as_it_was(linear):
    net, batches = linear
    relabelled = [(x, torch.full_like(y, 2)) for x, y in batches]
    state = {k: v.clone() for k, v in net.state_dict().items()}
    assert fisher_sensitivities(net, batches[:2]) == fisher_sensitivities(net, relabelled[:2])
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())
    assert all(not m._forward_pre_hooks for m in net.modules())
    assert all(p.grad is None for p in net.parameters())


def test_a_tensor_read_by_two_layers_gives_each_its_own_gradient():
    """Two heads read the same features: each head's input sensitivity is its own (the other head's
    Fisher would double it if the shared tensor's gradient were used)."""

    class TwoHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(6, 3), nn.Linear(6, 3)

        def forward(self, x):
            x = x.flatten(1)
            return self.a(x) + 0 * self.b(x)  # head b does not reach the loss: its inputs cost nothing

    gen = torch.Generator().manual_seed(1)
    x = torch.randn(64, 1, 2, 3, generator=gen)
    recipe = Recipe.from_dict({"base": "ptq", "name": "ptq-heads", "quant": {"first_last_bits": None}})
    net = mpqfx.prepare(TwoHeads(), recipe, example_input=x[:1])
    calibrate(net, [(x, torch.zeros(64, dtype=torch.long))], CalibrateOptions(images=64, samples=1024))
    table = fisher_sensitivities(net, [(x, torch.zeros(64, dtype=torch.long))])
    assert all(v > 0 for v in table["a"]["a"].values()) and all(v > 0 for v in table["a"]["w"].values())
    assert all(v == 0 for v in table["b"]["a"].values()) and all(v == 0 for v in table["b"]["w"].values())


def test_the_ilp_option_and_its_cache(linear, tmp_path):
    net, batches = linear
    with pytest.raises(MpqfxError, match="estimate: 'hutchinson' is not allowed; expected one of measured, fisher"):
        search(net, "avg=4", backend="ilp", options={"objective": "sensitivity", "estimate": "hutchinson"}, data=batches)
    fisher = cached_sensitivities(net, batches[:1], tmp_path, estimate="fisher")
    written = json.loads((tmp_path / CACHE_NAME).read_text())
    assert written["estimate"] == "fisher" and written["evaluations"] == 0
    measured = cached_sensitivities(net, batches[:1], tmp_path)  # another key: measured again, not read
    assert json.loads((tmp_path / CACHE_NAME).read_text())["estimate"] == "measured"
    assert measured != fisher
    result = search(net, "avg=4", backend="ilp", options={"objective": "sensitivity", "estimate": "fisher"},
                    data=batches[:1])
    assert result.policy[net.layers[0].name] == (4, 4)
