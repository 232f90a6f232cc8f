"""What ships equals what was measured: the exported ONNX file in onnxruntime beside the fine-tuned
model in torch, on predictions and on every quantized layer's output integers.

onnxruntime runs each quantized layer as an integer kernel (QLinearConv / QGemm) that writes its
output integers; :func:`layer_agreement` reads them from the runtime's own optimized graph (each
kernel's output made a graph output) and compares them with the integers of the same layer's
output quantizer in torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

from mpqfx.export.onnx_qdq import INTEGER_KERNELS, onnx_modules, optimized_graph
from torch import nn

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class Agreement:
    """onnxruntime (all optimizations) against the fine-tuned model in torch on ``images`` images;
    accuracies are top-1 (None without labels)."""

    images: int
    onnx_accuracy: float | None
    torch_accuracy: float | None
    top1_agreement: float
    layer_within_one_step: dict[str, float]  # per quantized layer: share of output integers within 1 step

    @property
    def worst_layer(self) -> tuple[str, float]:
        name = min(self.layer_within_one_step, key=self.layer_within_one_step.get)
        return name, self.layer_within_one_step[name]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _kernel_outputs(path: Path, layers: list[str]):
    """onnxruntime's optimized graph of ``path`` with every integer kernel's output integers a graph
    output (after the Clip of a b-bit range, when one follows); (model, layer -> (output name,
    whether the kernel writes channels last))."""
    onnx, _ = onnx_modules()
    model = optimized_graph(path)
    readers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    outputs: dict[str, tuple[str, bool]] = {}
    for node in model.graph.node:
        if node.op_type not in INTEGER_KERNELS:
            continue
        layer = next((l for name in node.input for l in layers
                      if name == f"{l}.weight_int" or name.startswith(f"{l}.weight_int_")), None)
        if layer is None:
            continue
        output = node.output[0]
        after = readers.get(output, [])
        if len(after) == 1 and after[0].op_type == "Clip":
            output = after[0].output[0]
        channels_last = any(a.name == "channels_last" and a.i for a in node.attribute)
        outputs[layer] = (output, channels_last)
    for name in dict.fromkeys(name for name, _ in outputs.values()):
        model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.UINT8, None))
    return model, outputs


@torch.no_grad()
def layer_agreement(path: str | Path, model: nn.Module, layers: list[str], batches: Iterable[Batch]) -> Agreement:
    """Run the ONNX file at ``path`` in onnxruntime and ``model`` (eval mode, on the CPU) on ``batches``;
    ``layers`` name ``model``'s quantized layers (each with an ``output_quant``): a
    :class:`~mpqfx.finetune.model.FoldedModel`'s ``graph`` or a deployed module."""
    _, ort = onnx_modules()
    model.eval()
    optimized, outputs = _kernel_outputs(Path(path), layers)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # already optimized
    options.log_severity_level = 3
    runtime = ort.InferenceSession(optimized.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = ["logits"] + list(dict.fromkeys(name for name, _ in outputs.values()))
    captured: dict[str, torch.Tensor] = {}
    hooks = [layer.register_forward_hook(lambda _, __, y, name=name: captured.__setitem__(name, y))
             for name, layer in ((name, model.get_submodule(name)) for name in layers)]
    within = {name: [0, 0] for name in outputs}
    ours, theirs, labels = [], [], []
    try:
        for x, y in batches:
            x = x.cpu()
            got = dict(zip(names, runtime.run(names, {"input": x.numpy()})))
            ours.append(got["logits"].argmax(-1))
            theirs.append(model(x).argmax(-1).numpy())
            labels.append(np.asarray(y))
            for name, (output, channels_last) in outputs.items():
                quant = model.get_submodule(name).output_quant
                expected = (torch.round(captured[name] / quant.step) + quant.zero_point.float()).numpy()
                ints = got[output].astype(np.float64)
                ints = np.moveaxis(ints, -1, 1) if channels_last else ints
                within[name][0] += int((np.abs(ints - expected) <= 1).sum())
                within[name][1] += expected.size
    finally:
        for hook in hooks:
            hook.remove()
    ours_top1, theirs_top1 = np.concatenate(ours), np.concatenate(theirs)
    truth = np.concatenate(labels) if labels and labels[0].dtype != object else np.zeros(0)
    accuracy = (lambda p: float((p == truth).mean())) if len(truth) else (lambda p: None)
    return Agreement(images=len(ours_top1), onnx_accuracy=accuracy(ours_top1), torch_accuracy=accuracy(theirs_top1),
                     top1_agreement=float((ours_top1 == theirs_top1).mean()),
                     layer_within_one_step={name: ok / total for name, (ok, total) in within.items()})
