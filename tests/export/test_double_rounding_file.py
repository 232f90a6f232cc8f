"""One 8-bit integer file of a Double Rounding supernet gives every policy's weights (Eq. 2-3)."""

from __future__ import annotations

import pytest
import torch
from timm.layers import StdConv2d

import mpqfx
from mpqfx import MpqfxError, Policy
from mpqfx.export.double_rounding_file import load_double_rounding, save_double_rounding
from mpqfx.quant.double_rounding import DoubleRoundingQuantizer


def test_switching_bits_from_the_8_bit_file_matches_the_supernet(tmp_path, images, perturbed_supernet):
    net = perturbed_supernet("double_rounding")
    path = save_double_rounding(net, tmp_path / "supernet.dr8.safetensors")
    loaded = load_double_rounding(path).eval()
    x = images
    for policy in [Policy.max(net), Policy.min(net), Policy.uniform(net, 4), Policy.sample(net, 3), Policy.sample(net, 4)]:
        with torch.no_grad(), net.use_policy(policy), loaded.use_policy(policy):
            assert torch.equal(loaded(x), net(x))
        for name, module in loaded.layer_modules().items():
            original = net.layer_modules()[name]
            b = policy[name].w
            assert torch.equal(module.weight_quant.integers(module.weight, b), original.weight_quant.integers(original.weight, b))
    stored = [m.weight_quant for m in loaded.layer_modules().values()]
    assert all(isinstance(q, DoubleRoundingQuantizer) and q.high == 8 for q in stored)


def test_lsq_supernets_have_no_double_rounding_file(tmp_path, perturbed_supernet):
    with pytest.raises(MpqfxError, match="weight_quantizer: double_rounding"):
        save_double_rounding(perturbed_supernet(), tmp_path / "x.safetensors")


def test_weight_standardized_convs_have_no_double_rounding_file(tmp_path):
    model = torch.nn.Sequential(StdConv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 2))
    net = mpqfx.prepare(model, "double_rounding", example_input=torch.randn(1, 3, 6, 6))
    with pytest.raises(MpqfxError, match=r"layer '0' \(MultiBitStdConv2d\) quantizes a weight computed from its latent"):
        save_double_rounding(net, tmp_path / "supernet.dr8.safetensors")
