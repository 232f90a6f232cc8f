"""The int32 bias choice on a one-channel layer worked by hand: one accumulator unit is 0.25,
one output step 1, the float bias 0.3 (1.2 units: 1 unit is the nearer integer, 2 the farther).

Outputs y + 0.3 with y = 0.25 x for input integers x; the target integers are round(y + 0.3):
* the nearer integer (bias 0.25) misses wherever y = 0.25: round(0.5) = 0 against round(0.55) = 1;
* the farther integer (bias 0.5) misses only at odd integers y: round(y + 0.5) rounds half to even;
* the exact-bias scales (x 1.2 or x 0.6) miss at y = 1 and y = 0.25 respectively.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mpqfx.export.bias import quantize_biases
from mpqfx.export.deploy import QuantizedConv
from mpqfx.export.qdq import ActivationQuantizer
from mpqfx.quant.layers import LayerBits


def _layer() -> QuantizedConv:
    layer = QuantizedConv(nn.Conv2d(1, 1, 1, bias=False), LayerBits(8, 4), a_signed=False, a_step=torch.tensor(1.0))
    layer.weight_int.fill_(1)
    layer.float_weight_scale, layer.float_bias = torch.tensor([0.25]), torch.tensor([0.3])
    layer.output_quant = ActivationQuantizer(4, False, 1.0)
    return layer


def _images(ones: int) -> torch.Tensor:
    """16 images of 4x4 input integers, all 0 but ``ones`` of them 1 (y = 0.25 there)."""
    x = torch.zeros(16 * 16)
    x[:ones] = 1.0
    return x.reshape(16, 1, 4, 4)


def _choose(calibration: torch.Tensor) -> QuantizedConv:
    layer = _layer()
    quantize_biases(nn.Sequential(layer), {"0": torch.tensor(1.0)}, [(calibration, None)])
    return layer


def _misses(layer: QuantizedConv, x: torch.Tensor) -> int:
    """Output integers that differ from round(0.25 x + 0.3) (hand-written, not mpqfx's quantizer)."""
    target = torch.round(0.25 * x + 0.3).clamp(0, 15)
    return int((torch.round(layer(x)) != target).sum())


def test_when_every_pair_misses_nothing_the_supernets_scale_and_the_nearer_integer_win():
    layer = _choose(_images(0))  # y = 0 only: 0.25, 0.5 and 0.3 all round to 0
    assert int(layer.bias_int) == 1 and float(layer.weight_scale) == 0.25
    assert float(layer.bias_scale) == 0.25


def test_one_miss_outweighs_every_preference_and_the_choice_holds_on_held_out_images():
    layer = _choose(_images(1))  # one y = 0.25 among 256 outputs: the nearer integer misses once
    assert int(layer.bias_int) == 2 and float(layer.weight_scale) == 0.25  # the farther integer, no misses
    held_out = _images(100)  # other images: 100 outputs at y = 0.25
    assert _misses(layer, held_out) == 0
    nearer = _layer()
    nearer.use_float_bias()
    nearer.bias_int.fill_(1)
    nearer.bias_scale.fill_(0.25)
    assert _misses(nearer, held_out) == 100  # what rounding to the nearer integer would have cost


def test_the_last_preferred_pair_wins_when_it_alone_misses_nothing():
    """Unit 2, bias 5.46 (2.73 units), inputs 3, 10, 10 and 15: targets round(2x + 5.46) in [0, 15]
    are 11, 15, 15, 15. Biases 4 and 6 miss at x = 3 (10 and 12); the exact bias at scale x 1.365
    misses there too (13.65 -> 14); only the exact bias at scale x 0.91 misses nothing (10.92 -> 11):
    its one miss less outweighs its last place among the preferences."""
    layer = _layer()
    layer.float_weight_scale, layer.float_bias = torch.tensor([2.0]), torch.tensor([5.46])
    quantize_biases(nn.Sequential(layer), {"0": torch.tensor(1.0)}, [(torch.tensor([[[[3.0, 10.0], [10.0, 15.0]]]]), None)])
    assert int(layer.bias_int) == 3 and float(layer.weight_scale) == pytest.approx(2.0 * 5.46 / 6.0, rel=1e-6)
    held_out = torch.full((4, 1, 2, 2), 3.0)  # every output at x = 3: bias 6 at scale 2 would miss all 16
    target = torch.round(2.0 * held_out + 5.46).clamp(0, 15)
    assert int((torch.round(layer(held_out)) != target).sum()) == 0


def test_the_nearer_integer_above_wins_a_tie_of_no_misses():
    """Bias 0.45 = 1.8 units: 2 units (0.5) is the nearer integer; at y = 0 every pair rounds to 0."""
    layer = _layer()
    layer.float_bias = torch.tensor([0.45])
    quantize_biases(nn.Sequential(layer), {"0": torch.tensor(1.0)}, [(_images(0), None)])
    assert int(layer.bias_int) == 2 and float(layer.weight_scale) == 0.25


def test_the_exact_bias_of_one_unit_wins_when_it_alone_misses_nothing():
    """Unit 0.5, bias 0.6 (1.2 units), inputs 1 and 4 (y = 0.5, 2.0): targets round(y + 0.6) = 1, 3.
    Bias 1 unit misses at y = 2 (2.5 -> 2), 2 units at y = 0.5 (1.5 -> 2), the exact bias of 2 units
    (scale x 0.6) at y = 2 (1.8 -> 2); the exact bias of 1 unit (scale x 1.2: 1.2 -> 1, 3.0 -> 3) none."""
    layer = _layer()
    layer.float_weight_scale, layer.float_bias = torch.tensor([0.5]), torch.tensor([0.6])
    quantize_biases(nn.Sequential(layer), {"0": torch.tensor(1.0)}, [(torch.tensor([[[[1.0, 4.0]]]]), None)])
    assert int(layer.bias_int) == 1 and float(layer.weight_scale) == pytest.approx(0.6, rel=1e-6)
    held_out = torch.full((3, 1, 2, 2), 4.0)  # y = 2 everywhere: bias 1 unit at scale 0.5 would miss all 12
    assert int((torch.round(layer(held_out)) != torch.round(0.5 * held_out + 0.6)).sum()) == 0


def test_misses_add_up_over_the_calibration_batches():
    """The one y = 0.25 output (a miss of the nearer integer) is in the first of two batches."""
    layer = _layer()
    quantize_biases(nn.Sequential(layer), {"0": torch.tensor(1.0)}, [(_images(1), None), (_images(0), None)])
    assert int(layer.bias_int) == 2


@pytest.mark.parametrize("weight", [81, -79])
def test_outputs_clipped_to_the_range_are_no_misses(weight):
    """Input integer 1 and weight integer 81 or -79: y = 20.25 (above 15) or -19.75 (below 0). Unclipped,
    the nearer integer would miss (20.5 -> 20 against 20.55 -> 21; -19.5 -> -20 against -19.45 -> -19)
    and the farther one would not, but every pair clips to the same 15 or 0: the tie goes to the nearer."""
    layer = _layer()
    layer.weight_int.fill_(weight)
    quantize_biases(nn.Sequential(layer), {"0": torch.tensor(1.0)}, [(torch.ones(2, 1, 2, 2), None)])
    assert int(layer.bias_int) == 1 and float(layer.weight_scale) == 0.25


def test_a_signed_output_counts_misses_around_its_zero_point():
    """A signed 4-bit output (zero point 128 in the uint8 container, range [120, 135]): the one miss
    of the nearer integer at y = 0.25 (round(0.5) = 0 against round(0.55) = 1) counts as unsigned."""
    layer = _layer()
    layer.output_quant = ActivationQuantizer(4, True, 1.0)
    quantize_biases(nn.Sequential(layer), {"0": torch.tensor(1.0)}, [(_images(1), None)])
    assert int(layer.bias_int) == 2


def test_bias_integers_stay_in_the_int32_range():
    """float64, where the int32 bounds are exact: beyond them the integers are the bounds."""
    from mpqfx.export.bias import _candidates

    _, ints, _ = _candidates(torch.tensor([1e10, -1e10, 0.3], dtype=torch.float64),
                             torch.tensor([1.0, 1.0, 0.25], dtype=torch.float64))
    assert ints[0].tolist() == [2**31 - 2, -2**31, 1.0] and ints[1].tolist() == [2**31 - 1, -2**31 + 1, 2.0]


def test_a_float32_bias_beyond_int32_keeps_its_sign():
    """float32 rounds 2**31 - 2 up to 2**31, which int32 wraps to -2**31: the bound is the largest
    float32 below it, 2**31 - 128 (a bias of 3e9 accumulator units, a nearly dead channel)."""
    from mpqfx.export.bias import _candidates

    _, ints, _ = _candidates(torch.tensor([3e9, -3e9]), torch.tensor([1.0, 1.0]))
    assert ints.to(torch.int32)[:, 0].tolist() == [2**31 - 128] * 4
    assert ints.to(torch.int32)[:, 1].tolist() == [-2**31] * 4  # float32 has no -2**31 + 1 either


def test_the_exact_bias_of_minus_one_unit_wins_when_it_alone_misses_nothing():
    """Signed input and output, unit 0.5, bias -0.4 (-0.8 units), inputs -6 and 3 (y = -3, 1.5):
    targets round(y - 0.4) = -3, 1. Bias -1 unit misses at y = -3 (-3.5 -> -4), 0 units at y = 1.5
    (1.5 -> 2); the exact bias of -1 unit (scale x 0.8: -2.8 -> -3, 0.8 -> 1) none."""
    layer = QuantizedConv(nn.Conv2d(1, 1, 1, bias=False), LayerBits(8, 4), a_signed=True, a_step=torch.tensor(1.0))
    layer.weight_int.fill_(1)
    layer.float_weight_scale, layer.float_bias = torch.tensor([0.5]), torch.tensor([-0.4])
    layer.output_quant = ActivationQuantizer(4, True, 1.0)
    quantize_biases(nn.Sequential(layer), {"0": torch.tensor(1.0)}, [(torch.tensor([[[[-6.0, 3.0]]]]), None)])
    assert int(layer.bias_int) == -1 and float(layer.weight_scale) == pytest.approx(0.4, rel=1e-6)
