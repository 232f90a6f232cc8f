"""ONNX export in QDQ form, checked with onnxruntime.

The deployed module (:func:`mpqfx.export.deploy`) is exported with torch's TorchScript-based
exporter (no onnxscript needed), where its fake-quantize ops become QuantizeLinear /
DequantizeLinear pairs. Weight QuantizeLinear nodes on constants are then folded away, so
each weight is stored once as an int8 initializer read by a DequantizeLinear (per output
channel). Activations are Clip (the layer's b-bit range) -> QuantizeLinear ->
DequantizeLinear in int8/uint8.

The file records the SHA-256 of its own serialised model (without that entry) in the metadata
property ``mpqfx.sha256``; :func:`load_onnx` checks it.

The check runs onnxruntime with its graph optimizations off, which executes the exported graph
as written; it must agree with PyTorch within 1e-4 of the output range. With ORT's default
optimizations, QDQ groups run as fused integer kernels whose float rounding differs in the last
bits, and an activation that sits on a rounding boundary can move by one quantization step;
that session's max difference and top-1 agreement are reported too.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import numpy_helper
from torch import nn

from mpqfx.errors import MpqfxError
from mpqfx.export.integer_file import ExportFileError
from mpqfx.io import atomic_write_bytes

OPSET = 13
TOLERANCE = 1e-4  # max |onnx - torch| relative to the range of the torch output
DIGEST_PROP = "mpqfx.sha256"


@dataclass(frozen=True)
class OnnxCheck:
    """onnxruntime against PyTorch on the check input."""

    max_abs_diff: float  # onnxruntime, graph optimizations off
    output_range: float
    int8_weights: int  # weight tensors stored as int8 initializers
    optimized_max_abs_diff: float  # onnxruntime with its default optimizations (fused QDQ kernels)
    optimized_top1_agreement: float

    @property
    def relative(self) -> float:
        return self.max_abs_diff / max(self.output_range, 1e-12)

    @property
    def ok(self) -> bool:
        return self.relative <= TOLERANCE


def _constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    values = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


def fold_weight_quantization(model: onnx.ModelProto) -> int:
    """Replace QuantizeLinear(constant weight) by its int8 result as an initializer; returns how many."""
    values = _constants(model)
    graph = model.graph
    folded = 0
    for node in list(graph.node):
        if node.op_type != "QuantizeLinear" or node.input[0] not in values:
            continue
        w, scale = values[node.input[0]].astype(np.float32), values[node.input[1]].astype(np.float32)
        zero = values[node.input[2]] if len(node.input) > 2 and node.input[2] else np.zeros((), np.uint8)
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        shape = [1] * w.ndim
        if scale.ndim == 1:
            shape[axis] = -1
        info = np.iinfo(zero.dtype)
        q = np.clip(np.rint(w / scale.reshape(shape)) + zero.astype(np.int64).reshape(shape), info.min, info.max)
        graph.initializer.append(numpy_helper.from_array(q.astype(zero.dtype), node.output[0]))
        graph.node.remove(node)
        folded += 1
    used = {name for node in graph.node for name in node.input}
    for init in list(graph.initializer):
        if init.name not in used and init.name not in {o.name for o in graph.output}:
            graph.initializer.remove(init)
    for node in list(graph.node):
        if node.op_type == "Constant" and node.output[0] not in used:
            graph.node.remove(node)
    return folded


def export_onnx(module: nn.Module, example_input: torch.Tensor, path: str | Path) -> OnnxCheck:
    """Export ``module`` (eval mode) to ``path`` and compare onnxruntime with PyTorch on ``example_input``.

    Raises MpqfxError (and writes nothing) when the outputs differ by more than 1e-4 of the output range.
    """
    module = module.cpu().eval()
    example_input = example_input.detach().cpu()
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings
        torch.onnx.export(module, (example_input,), buffer, opset_version=OPSET, dynamo=False,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
        expected = module(example_input).float().numpy()
    model = onnx.load_from_string(buffer.getvalue())
    folded = fold_weight_quantization(model)
    onnx.checker.check_model(model)
    data = model.SerializeToString()
    exact = ort.SessionOptions()
    exact.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    got = ort.InferenceSession(data, exact, providers=["CPUExecutionProvider"]).run(None, {"input": example_input.numpy()})[0]
    fused = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, {"input": example_input.numpy()})[0]
    check = OnnxCheck(float(np.abs(got - expected).max()), float(expected.max() - expected.min()), folded,
                      float(np.abs(fused - expected).max()), float((fused.argmax(-1) == expected.argmax(-1)).mean()))
    if not check.ok:
        raise MpqfxError(f"ONNX export of {str(path)!r} disagrees with PyTorch: max |diff| {check.max_abs_diff:.3g} "
                         f"is {check.relative:.2g} of the output range (allowed {TOLERANCE:g})")
    model.metadata_props.add(key=DIGEST_PROP, value=hashlib.sha256(data).hexdigest())
    atomic_write_bytes(path, model.SerializeToString())
    return check


def load_onnx(path: str | Path) -> onnx.ModelProto:
    """The ONNX model :func:`export_onnx` wrote, after checking the SHA-256 it records."""
    path = Path(path)
    if not path.is_file():
        raise ExportFileError(f"no ONNX file at {str(path)!r}")
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # protobuf's DecodeError and friends
        raise ExportFileError(f"{str(path)!r} is corrupt or truncated ({type(exc).__name__})") from None
    index = next((i for i, p in enumerate(model.metadata_props) if p.key == DIGEST_PROP), None)
    if index is None:
        raise ExportFileError(f"{str(path)!r} is not an mpqfx ONNX export (no {DIGEST_PROP} property)")
    recorded = model.metadata_props[index].value
    del model.metadata_props[index]  # the digest covers the model as it was before this entry
    if hashlib.sha256(model.SerializeToString()).hexdigest() != recorded:
        raise ExportFileError(f"{str(path)!r} is corrupt: its content does not match the SHA-256 it records")
    model.metadata_props.add(key=DIGEST_PROP, value=recorded)
    return model
