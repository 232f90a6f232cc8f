"""The int32 bias of each integer kernel.

An integer kernel adds its bias to the int32 accumulator, so the bias is an integer in units of
input step x weight scale (onnxruntime fuses only that exact product). Of the two integers
around the float bias, :func:`quantize_biases` keeps, per output channel, the one whose output
integers differ least from the float bias's on the calibration images (most often the ones
where an all-zero input window, common after ReLU, leaves the bias alone); on a tie the nearer one.
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


@torch.no_grad()
def quantize_biases(gm: fx.GraphModule, input_steps: Mapping[str, torch.Tensor],
                    batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Set ``bias_int`` / ``bias_scale`` of every layer in ``input_steps`` (layer -> its input step)."""
    layers = {name: gm.get_submodule(name) for name in input_steps}
    units = {name: input_steps[name] * layer.weight_scale for name, layer in layers.items()}
    low = {name: torch.floor(layer.float_bias / units[name]).clamp(-2**31, 2**31 - 2) for name, layer in layers.items()}
    misses = {name: torch.zeros(2, len(units[name])) for name in layers}
    for name, layer in layers.items():  # the pass below runs the float biases
        layer.bias_int.fill_(1)
        layer.bias_scale.copy_(layer.float_bias)

    def count(name: str):
        def hook(layer, inputs, _):
            y = layer.op(layer.quantized_input(inputs[0]), None).movedim(layer.channel_dim, -1)
            target = _output_integers(layer.output_quant, y + layer.float_bias)
            for i, bias in enumerate((low[name], low[name] + 1)):
                wrong = _output_integers(layer.output_quant, y + bias * units[name]) != target
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
        unit, b, lo = units[name], layer.float_bias, low[name]
        nearer_high = ((lo + 1) * unit - b).abs() < (b - lo * unit).abs()
        fewer, same = misses[name][1] < misses[name][0], misses[name][1] == misses[name][0]
        layer.bias_int.copy_(torch.where(fewer | (same & nearer_high), lo + 1, lo).to(torch.int32))
        layer.bias_scale.copy_(unit)
