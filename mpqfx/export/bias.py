"""The int32 bias of each integer kernel.

An integer kernel adds its bias to the int32 accumulator, so the bias is an integer in units of
input step x weight scale (onnxruntime fuses only that exact product). Rounding the float bias
to such a unit shifts every output of a channel by up to half a unit, and after BatchNorm
folding a unit can be several output steps wide (a channel BN scales up), so per output channel
:func:`quantize_biases` tries four (weight scale, bias integer) pairs: the supernet's scale with
either integer around the float bias, and, with either integer n, the scale that makes n units
exactly the float bias (scale x float bias / (n x unit)). It keeps the pair whose output
integers differ least from the supernet's on the calibration images; on a tie, the supernet's
scale and the nearer integer.
"""

from __future__ import annotations

from typing import Iterable, Mapping

import torch
import torch.fx as fx

from mpqfx.export.qdq import ActivationQuantizer


def _output_integers(quant: torch.nn.Module, y: torch.Tensor) -> torch.Tensor:
    if not isinstance(quant, ActivationQuantizer):
        return y
    return (torch.div(y, quant.step).round_() + quant.zero_point.float()).clamp_(quant.lo.float(), quant.hi.float())


def _int32_top(dtype: torch.dtype) -> float:
    """The largest value of ``dtype`` at most 2**31 - 2, so that it and one more convert to int32
    without wrapping (float32 rounds 2**31 - 2 up to 2**31; its largest value below is 2**31 - 128)."""
    top = torch.tensor(2**31 - 2, dtype=dtype)
    return float(top if float(top) <= 2**31 - 2 else torch.nextafter(top, torch.zeros((), dtype=dtype)))


def _candidates(bias: torch.Tensor, unit: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(scale factors, bias integers, preference) of the four candidate pairs, each (4, channels);
    a pair that cannot be (an exact bias of zero units) has preference infinity."""
    low = torch.floor(bias / unit).clamp(-2**31, _int32_top(bias.dtype))
    ints = torch.stack((low, low + 1, low, low + 1))
    exact = bias / (ints[2:] * unit)  # > 0: n has the sign of bias / unit
    factors = torch.cat((torch.ones_like(ints[:2]), torch.where(ints[2:] != 0, exact, torch.ones_like(exact))))
    nearer_high = ((low + 1) * unit - bias).abs() < (bias - low * unit).abs()
    preference = torch.stack((nearer_high.float(), (~nearer_high).float(), torch.full_like(low, 2.0),
                              torch.full_like(low, 3.0)))
    preference[2:][ints[2:] == 0] = float("inf")
    return factors, ints, preference


@torch.no_grad()
def quantize_biases(gm: fx.GraphModule, input_steps: Mapping[str, torch.Tensor],
                    batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Set ``weight_scale``, ``bias_int`` and ``bias_scale`` of every layer in ``input_steps``
    (layer -> its input step)."""
    layers = {name: gm.get_submodule(name) for name in input_steps}
    units = {name: input_steps[name] * layer.float_weight_scale for name, layer in layers.items()}
    candidates = {name: _candidates(layer.float_bias, units[name]) for name, layer in layers.items()}
    misses = {name: torch.zeros(4, len(units[name]), dtype=torch.float64) for name in layers}
    for layer in layers.values():  # the pass below runs what the supernet computes
        layer.use_float_bias()

    def count(name: str):
        def hook(layer, inputs, _):
            y = layer.op(layer.quantized_input(inputs[0]), None).movedim(layer.channel_dim, -1)
            target = _output_integers(layer.output_quant, y + layer.float_bias)
            for i, (factor, n) in enumerate(zip(*candidates[name][:2])):
                wrong = _output_integers(layer.output_quant, (y + n * units[name]) * factor) != target
                misses[name][i] += wrong.reshape(-1, wrong.shape[-1]).sum(0)
        return hook

    handles = [layer.register_forward_hook(count(name)) for name, layer in layers.items()]
    try:
        for x, _ in batches:
            gm(x)
    finally:
        for handle in handles:
            handle.remove()
    for name, layer in layers.items():
        factors, ints, preference = candidates[name]
        chosen = (misses[name] * 4 + preference).argmin(0, keepdim=True)  # fewest misses, then preference
        factor = factors.gather(0, chosen)[0]
        layer.weight_scale.copy_(layer.float_weight_scale * factor)
        layer.bias_int.copy_(ints.gather(0, chosen)[0].to(torch.int32))
        layer.bias_scale.copy_(input_steps[name] * layer.weight_scale)
