"""ONNX export in the QDQ form runtimes fuse into integer kernels.

The deployed module (:func:`mpqfx.export.deploy`) is exported with torch's TorchScript-based
exporter (no onnxscript needed); its quantizers write QuantizeLinear -> Clip -> DequantizeLinear
and each weight is one int8 initializer (``<layer>.weight_int``) read by a per-channel
DequantizeLinear. onnxruntime's optimizer turns every quantized conv/linear into QLinearConv /
QGemm (:func:`integer_kernels` reads its saved optimized graph to count them).

The file records the policy's per-layer bits (metadata ``mpqfx.bits``, JSON) and the SHA-256
of its own serialised model (without that entry) in ``mpqfx.sha256``; :func:`load_onnx` checks it.

What the exporter cannot write is :class:`OnnxExportError`, one line naming the module or node and
the exporter's reason. (The dynamo exporter is no fallback: it traces the quantizers' float
arithmetic instead of their ``symbolic`` QDQ, and onnxruntime then fuses none of the layers.)
"""

from __future__ import annotations

import hashlib
import importlib
import io
import json
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from mpqfx.errors import MpqfxError
from mpqfx.export.decompose import register_rms_norm, static_adaptive_pools
from mpqfx.export.integer_file import ExportFileError
from mpqfx.io import atomic_write_bytes

MIN_OPSET = 13  # per-channel DequantizeLinear (axis) and Clip on integers
MAX_OPSET = 20  # the TorchScript exporter's newest
DEFAULT_OPSET = 17  # LayerNormalization and attention (SDPA, 14) export as single ops
DIGEST_PROP = "mpqfx.sha256"
BITS_PROP = "mpqfx.bits"
INTEGER_KERNELS = ("QLinearConv", "QGemm", "QLinearMatMul", "ConvInteger", "MatMulInteger", "MatMulIntegerToFloat",
                   "NhwcQLinearConv", "DynamicQuantizeMatMul")


class OnnxUnavailableError(MpqfxError):
    """onnx or onnxruntime is not installed."""


class OnnxExportError(MpqfxError):
    """torch's exporter cannot write the deployed module; the message names the op, where it is in
    the deployed graph when the exporter tells, and the exporter's reason. ``written``: the files
    :func:`mpqfx.export.run.export_policy_files` wrote all the same (format -> path, sizes)."""

    def __init__(self, message: str, written: Mapping[str, Any] | None = None):
        super().__init__(message)
        self.written = dict(written or {})


_FX_LINE = re.compile(r"<eval_with_key>\.\d+\((\d+)\): forward")


def _export_failure(exc: Exception, module: nn.Module) -> str:
    """One line for an exporter error: its first sentence, and the deployed graph's statement it
    points at (the innermost generated-forward line in its trace)."""
    text = " ".join(str(exc).split())
    reason = re.split(r"\s(?:Please feel free|\[Caused by)", text, maxsplit=1)[0].strip() or type(exc).__name__
    where = ""
    match = _FX_LINE.search(str(exc))
    code = module.code.splitlines() if isinstance(module, torch.fx.GraphModule) else []
    if match and 0 < int(match.group(1)) <= len(code):
        statement = code[int(match.group(1)) - 1].strip()
        name = statement.split(" = ", 1)[0].split(";")[0]
        node = next((n for n in module.graph.nodes if n.name == name), None)
        if node is not None and node.op == "call_module":
            where = f" in module {node.target!r} ({type(module.get_submodule(node.target)).__name__})"
        elif node is not None:
            where = f" at {_target_name(node)} (node {node.name!r} of the deployed graph)"
    return f"ONNX export (torch's TorchScript exporter){where}: {reason[:300]}"


def _target_name(node: torch.fx.Node) -> str:
    if isinstance(node.target, str):
        return node.target
    return f"{getattr(node.target, '__module__', '')}.{getattr(node.target, '__name__', node.target)}".lstrip(".")


def onnx_modules() -> tuple[Any, Any]:
    """(onnx, onnxruntime), or one line naming the missing package and the fix."""
    modules = []
    for name in ("onnx", "onnxruntime"):
        try:
            modules.append(importlib.import_module(name))
        except ImportError:
            raise OnnxUnavailableError(f"ONNX export needs the {name} package, which is not installed: "
                                       f"pip install {name}") from None
    return modules[0], modules[1]


def check_opset(opset: int) -> int:
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise MpqfxError(f"--opset {opset}: the QDQ form needs opset {MIN_OPSET} to {MAX_OPSET} (per-channel "
                         f"DequantizeLinear and Clip on integers need {MIN_OPSET}; torch's exporter writes up to {MAX_OPSET})")
    return opset


def _name_layer_tensors(model) -> None:
    """Every layer's integer weight and bias as an initializer under its state-dict name
    (``<layer>.weight_int``, ``<layer>.bias_int``): the exporter writes a buffer read through an
    op as a Constant node, and a tensor equal to an earlier one (a zero-initialized layer) as an
    Identity of it."""
    from onnx import numpy_helper

    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    for node in list(graph.node):
        name = node.output[0]
        if not name.endswith((".weight_int", ".bias_int")):
            continue
        if node.op_type == "Constant":
            value = numpy_helper.to_array(node.attribute[0].t)
        elif node.op_type == "Identity" and node.input[0] in initializers:
            value = numpy_helper.to_array(initializers[node.input[0]])
        else:
            continue
        graph.initializer.append(numpy_helper.from_array(value, name))
        graph.node.remove(node)


def export_onnx(module: nn.Module, example_input: torch.Tensor, path: str | Path, *, opset: int = DEFAULT_OPSET,
                bits: Mapping[str, tuple[int, int]] | None = None) -> Path:
    """Export the deployed ``module`` (eval mode) to ``path`` (written atomically) and return it.

    ``bits`` (layer -> (w_bits, a_bits)) is recorded in the metadata property ``mpqfx.bits``.
    """
    onnx, _ = onnx_modules()
    check_opset(opset)
    module = module.cpu().eval()
    register_rms_norm(MIN_OPSET)
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad(), static_adaptive_pools():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings
        try:
            torch.onnx.export(module, (example_input.detach().cpu(),), buffer, opset_version=opset, dynamo=False,
                              input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
        except torch.onnx.errors.UnsupportedOperatorError as exc:
            raise OnnxExportError(f"--opset {opset}: {' '.join(str(exc).split())}") from None
        except MpqfxError:
            raise
        except Exception as exc:  # noqa: BLE001 - the exporter's errors (SymbolicValueError, tracer errors, ...)
            raise OnnxExportError(_export_failure(exc, module)) from None
    model = onnx.load_from_string(buffer.getvalue())
    _name_layer_tensors(model)
    if bits is not None:
        model.metadata_props.add(key=BITS_PROP, value=json.dumps({k: list(v) for k, v in bits.items()}))
    onnx.checker.check_model(model)
    data = model.SerializeToString()
    model.metadata_props.add(key=DIGEST_PROP, value=hashlib.sha256(data).hexdigest())
    atomic_write_bytes(path, model.SerializeToString())
    return Path(path)


def load_onnx(path: str | Path):
    """The ONNX model :func:`export_onnx` wrote, after checking the SHA-256 it records."""
    onnx, _ = onnx_modules()
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


def session(path: str | Path, optimized: bool = True, threads: int = 0, save_optimized: str | Path | None = None):
    """An onnxruntime CPU session of ``path``: with every graph optimization (what a deployment runs),
    or with none (the graph exactly as written)."""
    _, ort = onnx_modules()
    options = ort.SessionOptions()
    options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimized
                                        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    options.log_severity_level = 3  # not the warning about saving hardware-specific optimized graphs
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if save_optimized is not None:
        options.optimized_model_filepath = str(save_optimized)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def optimized_graph(path: str | Path):
    """The ONNX model onnxruntime runs for ``path`` after its graph optimizations (integer kernels fused)."""
    onnx, _ = onnx_modules()
    with tempfile.TemporaryDirectory() as tmp:
        optimized_path = Path(tmp) / "optimized.onnx"
        session(path, save_optimized=optimized_path)
        return onnx.load(str(optimized_path))


def integer_kernels(path: str | Path) -> dict[str, str]:
    """Weight initializer (``<layer>.weight_int``) -> the op that reads it in onnxruntime's saved
    optimized graph. An integer kernel (QLinearConv, QGemm, ...) means the layer runs in integers;
    ``DequantizeLinear`` means it runs in float."""
    onnx, _ = onnx_modules()
    source = onnx.load(str(path))
    weights = {init.name for init in source.graph.initializer if init.data_type == onnx.TensorProto.INT8
               and len(init.dims) > 1}
    optimized = optimized_graph(path)
    readers: dict[str, str] = {}
    for node in optimized.graph.node:
        for name in node.input:
            base = next((w for w in weights if name == w or name.startswith(w + "_")), None)  # NHWC copies get suffixes
            if base is not None and readers.get(base) not in INTEGER_KERNELS:
                readers[base] = node.op_type
    return {w: readers.get(w, "folded away") for w in sorted(weights)}
