"""One policy of a supernet in its deployed form, trainable: folding-aware quantization-aware training.

:func:`folded_model` builds the graph :func:`mpqfx.export.deploy.deploy` builds, with the same
BatchNorm folding and the same placement of the output quantizers
(:func:`mpqfx.export.deploy.deployed_graph`), but with layers that train:

* :class:`FoldedLayer`: the latent weight quantized with LSQ at the policy's bit-width (the
  supernet's step, learned as the supernet learns it), the BatchNorm that follows the conv folded
  into its per-channel weight scale and its bias. Until :meth:`FoldedModel.freeze_batchnorm` the
  BatchNorm normalizes with batch statistics, updating its running ones; afterwards it is folded
  with the frozen running statistics (folding-aware QAT: Jacob et al. 2018, Krishnamoorthi 2018
  Sec. 3.2) and the folded bias is rounded to the int32 kernel's unit, input step x weight scale,
  with a straight-through estimator.
* :class:`TrainedQuantizer`: the deployed :class:`~mpqfx.export.qdq.ActivationQuantizer` with a
  straight-through estimator; the b-bit input quantizers learn their step with LSQ's gradient,
  the 8-bit ones between layers are calibrated min/max as in export.

In eval mode (frozen statistics) each layer computes exactly the deployed arithmetic: integer
weights times the per-channel scale, the integer bias times its unit. :meth:`FoldedModel.to_deployed`
writes those integers into the module ``deploy`` builds, which exports to ONNX and safetensors.
"""

from __future__ import annotations

import math
from types import EllipsisType
from typing import Iterable, Iterator

import torch
import torch.fx as fx
import torch.nn.functional as F
from timm.layers.padding import pad_same
from torch import nn

from mpqfx.export.deploy import _bn_factors, _quantized_layer, bn_multiplier, deployed_graph
from mpqfx.export.qdq import ActivationQuantizer, container_bounds
from mpqfx.export.requantize import calibrate
from mpqfx.export.run import on_cpu
from mpqfx.quant.double_rounding import DoubleRoundingQuantizer
from mpqfx.quant.layers import LayerBits, MultiBitMixin
from mpqfx.quant.lsq import STEP_EPS, int_range, lsq_quantize
from mpqfx.quant.policy import Policy
from mpqfx.supernet import Supernet

Batch = tuple[torch.Tensor, torch.Tensor]
INT32 = (-(2**31), 2**31 - 1)


class TrainedQuantizer(ActivationQuantizer):
    """An :class:`ActivationQuantizer` computing the same values with gradients: straight through
    the rounding inside the integer range, and (``learn``) LSQ's step gradient, scaled by
    1/sqrt(features x Qp) as the supernet's activation quantizers are."""

    def __init__(self, bits: int, signed: bool, step: float | torch.Tensor | None = None, learn: bool = False):
        super().__init__(bits, signed, step)
        self.reader: ActivationQuantizer | None = None  # 8-bit: the b-bit reader whose grid this one contains
        if learn:
            value = self._buffers.pop("step")
            self.step = nn.Parameter(value)

    @torch.no_grad()
    def refresh_range(self) -> None:
        """Integer range of a learned step again: the bits' range, then a folded clamp (ReLU6) at the new step."""
        _, lo, hi = container_bounds(self.bits, self.signed)
        self.lo.fill_(lo)
        self.hi.fill_(hi)
        self._apply_restriction()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observing or not self.calibrated:
            return super().forward(x)
        if isinstance(self.step, nn.Parameter):
            self.refresh_range()
        zero_point = int(self.zero_point)
        qmax = int_range(self.bits, self.signed)[1]
        return lsq_quantize(x, self.step, int(self.lo) - zero_point, int(self.hi) - zero_point,
                            1.0 / math.sqrt(x[0].numel() * qmax))


def _requantizer() -> TrainedQuantizer:
    return TrainedQuantizer(8, signed=True)


class _FoldedWeight(torch.autograd.Function):
    """``deployed`` (the folded weight rounded as deployed) forward; backward, the gradients of
    ``weight`` x ``k`` per output channel (straight through the rounding), without computing it."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, k: torch.Tensor, deployed: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(weight, k)
        return deployed

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        weight, k = ctx.saved_tensors
        per_channel = k.reshape((-1,) + (1,) * (weight.dim() - 1))
        grad_weight = grad * per_channel if ctx.needs_input_grad[0] else None
        grad_k = (grad * weight).sum(tuple(range(1, weight.dim()))) if ctx.needs_input_grad[1] else None
        return grad_weight, grad_k, None


class FoldedLayer(nn.Module):
    """A quantized conv/linear with the BatchNorm after it folded in, trainable (module docstring)."""

    def __init__(self, module: MultiBitMixin, bits: LayerBits, a_signed: bool, bn: nn.Module | None,
                 call_bias: torch.Tensor | None | EllipsisType = ...):
        super().__init__()
        self.w_bits, self.a_bits = bits.w, bits.a
        self.shift = 8 - bits.w
        self.is_conv = not isinstance(module, nn.Linear)
        if self.is_conv:
            self.stride, self.padding, self.dilation, self.groups = (module.stride, module.padding, module.dilation,
                                                                     module.groups)
            self.kernel_size, self.same_pad = module.kernel_size, getattr(module, "same_pad", False)
        quant = module.weight_quant
        weight = module.float_weight().detach().clone().float()
        step = quant.step(bits.w).detach().clone().float().clamp(min=STEP_EPS)
        if isinstance(quant, DoubleRoundingQuantizer):  # its integers derive from the 8-bit ones: start on them
            weight = quant.integers(weight, bits.w) * step
        channels = weight.shape[0]
        self.weight = nn.Parameter(weight)
        self.weight_step = nn.Parameter(step.reshape(step.shape if step.dim() else ()))
        own = module.bias if call_bias is ... else call_bias
        self.bias = nn.Parameter(own.detach().clone().float()) if own is not None else None
        self.norm = bn  # the folded BatchNorm (its gamma, beta and statistics), or None
        self.register_buffer("frozen", torch.tensor(False))  # BatchNorm folded with frozen statistics
        a_step = module.act_quant.step(bits.a)
        self.input_quant: nn.Module = TrainedQuantizer(bits.a, a_signed, a_step.detach().clamp(min=STEP_EPS),
                                                       learn=a_step.requires_grad)
        self.output_quant: nn.Module = nn.Identity()
        self.input_from: str | None = None
        self.input_step_of: ActivationQuantizer = self.input_quant  # set by folded_model: where the input is quantized
        self._channels = channels

    def __setattr__(self, name: str, value) -> None:
        if name == "input_step_of":  # a reference, not a submodule (it belongs to the layer that applies it)
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)


    @staticmethod
    def _per_channel(t: torch.Tensor, like: torch.Tensor, dim: int) -> torch.Tensor:
        """``t`` (one value per channel) shaped to broadcast along ``like``'s dimension ``dim``."""
        shape = [1] * like.dim()
        shape[dim] = -1
        return t.reshape(shape)

    def _op(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if not self.is_conv:
            return F.linear(x, weight, bias)
        conv = {3: F.conv1d, 4: F.conv2d, 5: F.conv3d}[weight.dim()]
        return conv(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)

    def _quantized_input(self, x: torch.Tensor) -> torch.Tensor:
        if self.is_conv and self.same_pad:
            x = pad_same(x, self.kernel_size, self.stride, self.dilation)
        return self.input_quant(x)

    def _bn_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(k, offset): BN(y) = y * k + offset with the running statistics (k = 1, offset 0 without BN)."""
        if self.norm is None:
            ones = torch.ones(self._channels, device=self.weight.device)
            return ones, torch.zeros_like(ones)
        return _bn_factors(self.norm)  # deploy's folding (it folds only BatchNorms with running statistics)

    def _quantized_weight(self) -> torch.Tensor:
        qmin, qmax = int_range(self.w_bits, True)
        per = self.weight[0].numel() if self.weight_step.dim() else self.weight.numel()
        return lsq_quantize(self.weight, self.weight_step, qmin, qmax, 1.0 / math.sqrt(per * qmax))

    def _channel_scales(self) -> tuple[torch.Tensor, ...]:
        """(k, dead, scale, bias, unit) per output channel: BN's multiplier, the b-bit integers' scale,
        weight step x k (1 where k is zero, ``dead``: the output is the bias alone), the folded float
        bias and the int32 bias's unit, input step x scale / 2^(8-b); with gradients."""
        step = self.weight_step.clamp(min=STEP_EPS)
        k, offset = self._bn_factors()
        scale = step.reshape(-1).expand(self._channels) * k
        bias = (self.bias if self.bias is not None else 0) * k + offset
        dead = scale == 0
        scale = torch.where(dead, torch.ones_like(scale), scale)
        unit = self.input_step_of.step.clamp(min=STEP_EPS) * (scale / 2**self.shift)
        return k, dead, scale, bias, unit

    def deployed_tensors(self) -> dict[str, torch.Tensor]:
        """The deployed layer's ``weight_int`` (int8: b-bit integers x 2^(8-b)), ``weight_scale``,
        ``bias_int`` (int32), ``bias_scale`` and the float bias, as ``_quantized_layer`` lays them out."""
        with torch.no_grad():
            qmin, qmax = int_range(self.w_bits, True)
            ints = torch.div(self.weight, self.weight_step.clamp(min=STEP_EPS)).clamp_(qmin, qmax).round_()
            _, dead, scale, bias, unit = self._channel_scales()
            ints[dead] = 0
            bias_int = torch.round(bias / unit).clamp_(*INT32)
            return {"weight_int": (ints * 2**self.shift).to(torch.int8), "weight_scale": scale / 2**self.shift,
                    "bias_int": bias_int.to(torch.int32), "bias_scale": unit, "float_bias": bias}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.is_conv and x.dim() != 2:  # tokens (..., features) as one matrix, as QuantizedLinear
            y = self.forward(x.reshape(-1, x.shape[-1]))
            return y.reshape(*x.shape[:-1], y.shape[-1])
        x = self._quantized_input(x)
        weight = self._quantized_weight()  # integers x step, LSQ gradients
        bn = self.norm
        if bn is not None and self.training and not bool(self.frozen):  # warm-up: batch statistics
            y = self._op(x, weight, None)
            dims = [d for d in range(y.dim()) if d != 1]
            mean, var = y.mean(dims), y.var(dims, unbiased=False)
            with torch.no_grad():  # as nn.BatchNorm updates them: momentum None is a cumulative average
                n = y.numel() / y.shape[1]
                bn.num_batches_tracked.add_(1)
                factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
                bn.running_mean.lerp_(mean, factor)
                bn.running_var.lerp_(var * n / max(n - 1, 1), factor)
            k = bn_multiplier(bn, var)
            y = (y - self._per_channel(mean, y, 1)) * self._per_channel(k, y, 1)
            return self.output_quant(y + self._per_channel(bn.bias, y, 1) if bn.bias is not None else y)
        k, dead, scale, bias, unit = self._channel_scales()
        with torch.no_grad():  # the deployed values: b-bit integers (weight / step) x scale, exactly what the
            # deployed module's int8 integers x 2^(8-b) times scale / 2^(8-b) give (powers of 2 scale exactly)
            multiplier = torch.where(dead, torch.zeros_like(scale), scale)
            step = self._per_channel(self.weight_step.clamp(min=STEP_EPS).reshape(-1), weight, 0)
            deployed_weight = torch.div(weight, step).round_().mul_(self._per_channel(multiplier, weight, 0))
            deployed_bias = torch.round(bias / unit).clamp_(*INT32) * unit
        if torch.is_grad_enabled():  # gradients of the unrounded folded form: straight through both roundings
            deployed_weight = _FoldedWeight.apply(weight, k, deployed_weight)
            deployed_bias = bias + (deployed_bias - bias).detach()
        return self.output_quant(self._op(x, deployed_weight, deployed_bias))

    def extra_repr(self) -> str:
        return f"w_bits={self.w_bits}, a_bits={self.a_bits}, bn={self.norm is not None}"


class FoldedModel(nn.Module):
    """The trainable deployed form of one policy (see the module docstring); ``graph`` is the
    GraphModule, ``layers`` its quantized layer names."""

    def __init__(self, graph: fx.GraphModule, layers: list[str]):
        super().__init__()
        self.graph = graph
        self.layers = list(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.graph(x)

    def folded_layers(self) -> Iterator[tuple[str, FoldedLayer]]:
        for name in self.layers:
            yield name, self.graph.get_submodule(name)

    @property
    def frozen(self) -> bool:
        return all(bool(layer.frozen) for _, layer in self.folded_layers())

    def train(self, mode: bool = True) -> "FoldedModel":
        super().train(mode)
        if mode and self.frozen:  # BatchNorms that fold into nothing keep their frozen statistics too
            for module in self.graph.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    @torch.no_grad()
    def freeze_batchnorm(self, batches: Iterable[Batch]) -> None:
        """End of the warm-up: re-estimate every BatchNorm's statistics on ``batches`` (a cumulative
        average, as evaluation does) with the weights as they are, then fold them frozen."""
        norms = [m for m in self.graph.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        norms += [layer.norm for _, layer in self.folded_layers() if layer.norm is not None]
        was_training = self.training
        momenta = [bn.momentum for bn in norms]
        self.train()
        for bn in norms:
            bn.reset_running_stats()
            bn.momentum = None
        device = next(self.parameters()).device
        for x, _ in batches:
            self(x.to(device))
        for bn, momentum in zip(norms, momenta):
            bn.momentum = momentum
        for _, layer in self.folded_layers():
            layer.frozen.fill_(True)
        self.train(was_training)

    @torch.no_grad()
    def recalibrate(self, batches: Iterable[Batch]) -> None:
        """Calibrate the 8-bit quantizers between layers again (min/max on ``batches``), each on an odd
        fraction of its b-bit reader's step as it is now, as export calibrates them."""
        quants = [m for m in self.graph.modules() if isinstance(m, TrainedQuantizer) and m.from_data]
        for quant in quants:
            if quant.reader is not None:
                quant.reader_step = float(quant.reader.step)
            quant.step.zero_()
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        calibrate(self.graph, [(x.to(device), y) for x, y in batches])
        self.train(was_training)

    @torch.no_grad()
    def to_deployed(self, net: Supernet, policy: Policy) -> fx.GraphModule:
        """The module :func:`mpqfx.export.deploy.deploy` builds for ``net`` at ``policy``, holding this
        model's integers, scales and quantizers: what the export writes. Eval mode, on the CPU."""
        with on_cpu(net):
            deployed = deployed_graph(net, policy, _quantized_layer)
        ours = dict(self.graph.state_dict())
        state = {k: ours[k].detach().cpu().clone() if k in ours else v for k, v in deployed.state_dict().items()}
        for name, layer in self.folded_layers():
            tensors = {k: v.cpu() for k, v in layer.deployed_tensors().items()}
            for key in ("weight_int", "weight_scale", "bias_int", "bias_scale"):
                state[f"{name}.{key}"] = tensors[key]
            target = deployed.get_submodule(name)
            target.float_weight_scale, target.float_bias = tensors["weight_scale"], tensors["float_bias"]
        deployed.load_state_dict(state, strict=True)
        return deployed.eval()


def _readers(graph: fx.GraphModule) -> dict[int, ActivationQuantizer]:
    """For each 8-bit quantizer whose tensor a b-bit layer reads (``reader_step`` set), that reader's quantizer."""
    learned = [m for m in graph.modules() if isinstance(m, TrainedQuantizer) and not m.from_data]
    out = {}
    for quant in graph.modules():
        if isinstance(quant, TrainedQuantizer) and quant.from_data and quant.reader_step is not None:
            out[id(quant)] = next((m for m in learned if float(m.step) == quant.reader_step), None)
    return out


def folded_model(net: Supernet, policy: Policy, calibration: Iterable[Batch]) -> FoldedModel:
    """``net`` at ``policy`` in its deployed form, trainable, with the supernet's weights, steps and
    BatchNorm statistics as they are now (re-estimate them first, as evaluation does) and the
    8-bit quantizers between layers calibrated on ``calibration`` (training batches). On ``net``'s device."""
    device = next(net.parameters()).device
    with on_cpu(net):  # the graph is built where deploy builds it
        graph = deployed_graph(net, policy, FoldedLayer, _requantizer)
    layers = [info.name for info in net.layers]
    for name in layers:
        layer = graph.get_submodule(name)
        if layer.input_from:
            producer = graph.get_submodule(layer.input_from)
            layer.input_step_of = producer.output_quant if isinstance(producer, FoldedLayer) else producer
    readers = _readers(graph)
    for quant in graph.modules():
        if isinstance(quant, TrainedQuantizer):
            quant.reader = readers.get(id(quant))
    model = FoldedModel(graph, layers).to(device)
    model.eval().requires_grad_(True)  # steps the supernet keeps fixed (the raw input's) are buffers here
    calibrate(graph, [(x.to(device), y) for x, y in calibration])
    return model
