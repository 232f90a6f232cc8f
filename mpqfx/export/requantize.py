"""Where a deployed model quantizes the tensors between its integer kernels.

An integer kernel (onnxruntime's QLinearConv / QGemm) reads quantized inputs and writes a
quantized output. Each quantized layer already quantizes its input (its b-bit LSQ step); this
pass gives every layer an output quantizer:

* when the layer's output, through clamp activations (ReLU, ReLU6, Hardtanh) that nothing else
  reads, feeds only quantized layers with the same input quantizer, that quantizer moves up to
  the producer and the activations fold into its integer range: exact, nothing added;
* otherwise an 8-bit quantizer (asymmetric uint8, calibrated min/max on training images) takes
  the output, after those clamp activations, which fold into its range the same way. When a
  quantized layer reads that output, the 8-bit step is calibrated to an odd fraction of the
  reader's step (the finest, with several), so that the reader's integers are the supernet's.

Residual adds (two tensors summed) get a quantizer on their output as well, so that the runtime
adds in integers (QLinearAdd) instead of dequantizing around each add: their readers' shared
input quantizer when, as above, only quantized layers read the sum, else an 8-bit one. A max pooling of
a quantized tensor is followed by that tensor's own quantizer: the maximum of values on a grid
is on the grid, so nothing changes, and the runtime pools the integers.
"""

from __future__ import annotations

import operator
from typing import Callable, Iterable

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from mpqfx.export.qdq import ActivationQuantizer

INF = float("inf")
_ADDS = {operator.add, operator.iadd, torch.add}


def eight_bit_quantizer() -> ActivationQuantizer:
    """A new 8-bit quantizer for a tensor the supernet keeps in float (calibrated later)."""
    return ActivationQuantizer(8, signed=True)


def _clamp_range(gm: fx.GraphModule, node: fx.Node) -> tuple[float, float] | None:
    """The output range of ``node`` when it is a clamp activation of its first input, else None."""
    if node.op == "call_module":
        module = gm.get_submodule(node.target)
        if isinstance(module, nn.Sequential):  # what a folded BatchNormAct2d leaves: drop, act
            parts = [m for m in module if not isinstance(m, (nn.Identity, nn.Dropout))]
            module = parts[0] if len(parts) == 1 else module
            if not parts:
                return (-INF, INF)
        if isinstance(module, nn.ReLU):
            return (0.0, INF)
        if isinstance(module, nn.Hardtanh):  # ReLU6 is Hardtanh(0, 6)
            return (float(module.min_val), float(module.max_val))
        if isinstance(module, (nn.Identity, nn.Dropout)):
            return (-INF, INF)
        return None
    if node.op == "call_function" and node.target in (F.relu, torch.relu, torch.relu_):
        return (0.0, INF)
    if node.op == "call_function" and node.target is F.relu6:
        return (0.0, 6.0)
    if node.op == "call_method" and node.target in ("relu", "relu_"):
        return (0.0, INF)
    return None


def _follow_clamps(gm: fx.GraphModule, node: fx.Node) -> tuple[fx.Node, list[fx.Node], tuple[float, float]]:
    """From ``node``, the chain of clamp activations that are each their input's only reader."""
    chain, low, high = [], -INF, INF
    end = node
    while len(end.users) == 1:
        user = next(iter(end.users))
        bounds = _clamp_range(gm, user)
        if bounds is None or user.args[0] is not end:
            break
        low, high = max(low, bounds[0]), min(high, bounds[1])
        chain.append(user)
        end = user
    return end, chain, (low, high)


def _same(a: ActivationQuantizer, b: ActivationQuantizer) -> bool:
    return (a.bits, a.signed) == (b.bits, b.signed) and torch.equal(a.step, b.step)


def _readers_quantizer(gm: fx.GraphModule, end: fx.Node, layers: set[str]) -> ActivationQuantizer | None:
    """The input quantizer shared by every reader of ``end`` when all are quantized layers reading
    it as their input (not padding it first); None otherwise."""
    readers = list(end.users)
    if not readers or any(r.op != "call_module" or r.target not in layers or r.args[0] is not end
                          or len(r.args) != 1 or r.kwargs for r in readers):
        return None
    modules = [gm.get_submodule(r.target) for r in readers]
    quants = [m.input_quant for m in modules]
    if any(getattr(m, "same_pad", False) or not isinstance(q, ActivationQuantizer) for m, q in zip(modules, quants)):
        return None
    return quants[0] if all(_same(quants[0], q) for q in quants[1:]) else None


def _finest_reader_step(gm: fx.GraphModule, end: fx.Node, layers: set[str]) -> float | None:
    """The smallest input step among the quantized layers that read ``end`` (None: none does)."""
    steps = []
    for reader in end.users:
        if reader.op == "call_module" and reader.target in layers and reader.args and reader.args[0] is end:
            module = gm.get_submodule(reader.target)
            if isinstance(module.input_quant, ActivationQuantizer) and not getattr(module, "same_pad", False):
                steps.append(float(module.input_quant.step))
    return min(steps) if steps else None


def _drop(chain: list[fx.Node], into: fx.Node) -> None:
    if chain:
        chain[-1].replace_all_uses_with(into)
        for node in reversed(chain):
            node.graph.erase_node(node)


def _is_tensor_add(node: fx.Node) -> bool:
    adds = (node.op == "call_function" and node.target in _ADDS) or (node.op == "call_method" and node.target in ("add", "add_"))
    if not adds or len(node.args) != 2 or not all(isinstance(a, fx.Node) for a in node.args):
        return False
    meta = [a.meta.get("tensor_meta") for a in (node, *node.args)]
    return all(m is not None and hasattr(m, "shape") and len(m.shape) > 1 for m in meta)


def _is_max_pool(gm: fx.GraphModule, node: fx.Node) -> bool:
    if node.op == "call_module":
        module = gm.get_submodule(node.target)
        return isinstance(module, (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)) and not module.return_indices
    return node.op == "call_function" and node.target in (F.max_pool1d, F.max_pool2d, F.max_pool3d) and \
        not node.kwargs.get("return_indices", False)


def _quantizer_of(gm: fx.GraphModule, node: fx.Node, layers: set[str]) -> ActivationQuantizer | None:
    """The quantizer whose grid ``node``'s output is on: a layer's output quantizer or a requantization."""
    if node.op != "call_module":
        return None
    module = gm.get_submodule(node.target)
    quant = module.output_quant if node.target in layers else module
    return quant if isinstance(quant, ActivationQuantizer) else None


def place_output_quantizers(gm: fx.GraphModule, layers: set[str],
                            new_requantizer: Callable[[], ActivationQuantizer] = eight_bit_quantizer) -> dict[str, str]:
    """Give every quantized layer of ``gm`` its output quantizer and every residual add one (see the
    module docstring); folded activations leave the graph. Returns, for each layer whose input
    quantizer moved up to its producer, the producer's name (a layer or a ``requantize_<add>``).
    ``new_requantizer`` makes the 8-bit quantizers (fine-tuning passes one that trains through them)."""
    moved: dict[str, str] = {}
    nodes = [n for n in gm.graph.nodes if n.op == "call_module" and n.target in layers]
    for node in nodes:
        layer = gm.get_submodule(node.target)
        end, chain, bounds = _follow_clamps(gm, node)
        shared = _readers_quantizer(gm, end, layers)
        if shared is not None:
            quant = shared
            for reader in end.users:
                gm.get_submodule(reader.target).input_quant = nn.Identity()
                moved[reader.target] = node.target
        else:
            quant = new_requantizer()
            quant.reader_step = _finest_reader_step(gm, end, layers)
        quant.restrict(*bounds)
        layer.output_quant = quant
        _drop(chain, node)
    # untraced layers (inside leaf modules) are not graph nodes: their outputs get 8-bit quantizers
    for name in layers - {n.target for n in nodes}:
        gm.get_submodule(name).output_quant = new_requantizer()
    for node in [n for n in gm.graph.nodes if _is_tensor_add(n)]:
        end, chain, bounds = _follow_clamps(gm, node)
        name = f"requantize_{node.name}"
        shared = _readers_quantizer(gm, end, layers)
        if shared is not None:
            quant = shared
            for reader in end.users:
                gm.get_submodule(reader.target).input_quant = nn.Identity()
                moved[reader.target] = name
        else:
            quant = new_requantizer()
            quant.reader_step = _finest_reader_step(gm, end, layers)
        quant.restrict(*bounds)
        gm.add_module(name, quant)
        with gm.graph.inserting_after(end):
            q_node = gm.graph.call_module(name, (end,))
        end.replace_all_uses_with(q_node, delete_user_cb=lambda user: user is not q_node)
        _drop(chain, node)
    for node in [n for n in gm.graph.nodes if _is_max_pool(gm, n) and isinstance(n.args[0], fx.Node)]:
        quant = _quantizer_of(gm, node.args[0], layers)
        if quant is None:
            continue
        name = f"requantize_{node.name}"
        gm.add_module(name, quant)  # the same module: pooling keeps the values on its grid
        with gm.graph.inserting_after(node):
            q_node = gm.graph.call_module(name, (node,))
        node.replace_all_uses_with(q_node, delete_user_cb=lambda user: user is not q_node)
    return moved


@torch.no_grad()
def calibrate(gm: fx.GraphModule, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Set every uncalibrated 8-bit quantizer from the min/max of its input over ``batches``
    (earlier 8-bit quantizers pass their input through meanwhile; the b-bit ones quantize)."""
    quants = [m for m in gm.modules() if isinstance(m, ActivationQuantizer) and not m.calibrated]
    for q in quants:
        q.observing, q.seen = True, None
    try:
        for x, _ in batches:
            gm(x)
    finally:
        for q in quants:
            q.observing = False
    for q in quants:
        if q.seen is None:
            raise ValueError("calibration saw no data: pass at least one batch")
        q.set_range(*q.seen)
