"""A fine-tune stopped after a checkpoint and resumed in a fresh model ends with exactly the weights,
steps and statistics of an uninterrupted one (what ``mpqfx finetune --resume`` relies on after a kill)."""

from __future__ import annotations

import torch
from torch.utils.data import TensorDataset

import mpqfx
from mpqfx import Policy
from mpqfx.evaluate import recalibrated_bn
from mpqfx.finetune.model import folded_model
from mpqfx.finetune.train import FinetuneLoop, FinetuneSettings


def _loop(net, policy, data, calibration, folder):
    with recalibrated_bn(net, policy, calibration):
        model = folded_model(net, policy, calibration)
    settings = FinetuneSettings.from_recipe(net.recipe, epochs=2, lr=0.01)
    return model, FinetuneLoop(model, data, calibration, settings, folder, torch.device("cpu"))


def test_a_resumed_finetune_ends_as_an_uninterrupted_one(fashion_split, tiny_mobile, tmp_path):
    torch.manual_seed(0)
    images, labels = fashion_split("train", limit=256)  # 4 steps per epoch at the recipe's batch of 64
    net = mpqfx.prepare(tiny_mobile().eval(), "quickstart", example_input=images[:2]).eval()
    with torch.no_grad():
        net.set_policy(Policy.uniform(net, 4))
        net(images[:64])
    policy, data, calibration = Policy.uniform(net, 4), TensorDataset(images, labels), [(images[:64], labels[:64])]
    whole, loop = _loop(net, policy, data, calibration, tmp_path / "whole")
    loop.fit()
    cut, loop = _loop(net, policy, data, calibration, tmp_path / "cut")
    loop.fit(stop_after=6)  # the last checkpoint is the end of epoch 1 (step 4); steps 5-6 are lost
    assert loop.step == 6
    resumed, loop = _loop(net, policy, data, calibration, tmp_path / "cut")
    loop.fit(resume=True)
    assert loop.step == 8
    expected, got = whole.state_dict(), resumed.state_dict()
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected), [k for k in expected if not torch.equal(expected[k], got[k])]
