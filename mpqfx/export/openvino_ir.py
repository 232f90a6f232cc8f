"""OpenVINO IR of an mpqfx ONNX file, each b-bit quantizer in a form OpenVINO runs in u8.

OpenVINO reads the ONNX file's ``QuantizeLinear -> Clip -> DequantizeLinear`` as a 256-level
FakeQuantize followed by integer Maximum/Minimum, which its CPU plugin runs as a separate
clamp kernel or as extra post-ops of the convolution before it. :func:`rewrite_quantizers`
replaces each such group, with the same values (``round(x / s)`` clamped to the b-bit range
``[lo, hi]``, times ``s``):

* when the range holds 15 or 16 integers (4 bits), by the FakeQuantize OpenVINO itself uses for
  low-bit quantization: ``levels = hi - lo + 1`` over ``[(lo - zp) s, (hi - zp) s]``;
* otherwise by a float Clamp to that range followed by the quantizer's 256-level FakeQuantize
  (a FakeQuantize with 4, 8, 32, ... levels makes the CPU plugin run the convolution that reads
  it in bf16; the Clamp becomes a post-op of the convolution before it).

:func:`export_openvino` writes the model as IR (``.xml`` + ``.bin``).
"""

from __future__ import annotations

import importlib
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from mpqfx.errors import MpqfxError

INTEGER_PRECISIONS = ("u8", "i8")
WEIGHTED_TYPES = ("Convolution", "GroupConvolution", "FullyConnected", "MatMul")
# FakeQuantize levels whose readers OpenVINO 2026.4's CPU plugin runs in u8/i8 (probed from 2 to
# 256: any other count gives a bf16/f32 convolution)
INTEGER_LEVELS = (15, 16, 255, 256)


class OpenVinoUnavailableError(MpqfxError):
    """openvino is not installed."""


def openvino_module() -> Any:
    """The openvino package, or one line naming the fix."""
    try:
        return importlib.import_module("openvino")
    except ImportError:
        raise OpenVinoUnavailableError("--format openvino needs the openvino package, which is not installed: "
                                       "pip install 'mpqfx[openvino]'") from None


def _constant(output) -> np.ndarray | None:
    node = output.get_node()
    while node.get_type_name() == "Convert":
        node = node.input_value(0).get_node()
    return node.get_data() if node.get_type_name() == "Constant" else None


def _only_reader(node, kind: str):
    readers = list(node.output(0).get_target_inputs())
    if len(readers) == 1 and readers[0].get_node().get_type_name() == kind:
        return readers[0].get_node()
    return None


def _other_input(node, source) -> np.ndarray | None:
    """The constant operand of a binary ``node`` whose other operand is ``source``."""
    for i in range(2):
        if node.input_value(i).get_node().get_friendly_name() != source.get_friendly_name():
            return _constant(node.input_value(i))
    return None


def _scalar(value: np.ndarray | None) -> float | None:
    return float(value.reshape(-1)[0]) if value is not None and value.size == 1 else None


def rewrite_quantizers(model) -> int:
    """Rewrite every ``FakeQuantize(256) -> Convert -> Maximum -> Minimum -> Convert -> Subtract(zp)
    -> Multiply(s)`` of ``model`` (an ONNX Q -> Clip -> DQ as OpenVINO reads it) as the module
    docstring says; returns how many it rewrote."""
    from openvino import opset13 as ops

    rewritten = 0
    for fq in model.get_ordered_ops():
        if fq.get_type_name() != "FakeQuantize" or fq.get_attributes()["levels"] != 256:
            continue
        to_int = _only_reader(fq, "Convert")
        low = to_int and _only_reader(to_int, "Maximum")
        high = low and _only_reader(low, "Minimum")
        to_float = high and _only_reader(high, "Convert")
        shift = to_float and _only_reader(to_float, "Subtract")
        scale = shift and _only_reader(shift, "Multiply")
        if scale is None:
            continue
        in_low, in_high, out_low, out_high = (_scalar(_constant(fq.input_value(i))) for i in range(1, 5))
        lo, hi = _scalar(_other_input(low, to_int)), _scalar(_other_input(high, low))
        zero_point, step = _scalar(_other_input(shift, to_float)), _scalar(_other_input(scale, shift))
        if None in (in_low, in_high, lo, hi, zero_point, step) or (out_low, out_high) != (0.0, 255.0):
            continue
        if abs((in_high - in_low) / 255 - step) > 1e-6 * abs(step) or abs(in_low + zero_point * step) > 1e-6 * abs(step) * 256:
            continue  # not the quantizer's own grid
        a, b = np.float32((lo - zero_point) * step), np.float32((hi - zero_point) * step)
        if int(hi - lo + 1) in INTEGER_LEVELS:
            bounds = [ops.constant(np.array(v, dtype=np.float32)) for v in (a, b, a, b)]
            new = ops.fake_quantize(fq.input_value(0), *bounds, int(hi - lo + 1))
        else:
            clamped = ops.clamp(fq.input_value(0), float(a), float(b))
            new = ops.fake_quantize(clamped, *(fq.input_value(i) for i in (1, 2, 1, 2)), 256)
        new.set_friendly_name(fq.get_friendly_name())
        scale.output(0).replace(new.output(0))
        rewritten += 1
    model.validate_nodes_and_infer_types()
    return rewritten


def openvino_model(onnx_path: str | Path):
    """The OpenVINO model of the mpqfx ONNX file at ``onnx_path``, b-bit quantizers rewritten."""
    ov = openvino_module()
    model = ov.Core().read_model(str(onnx_path))
    rewrite_quantizers(model)
    return model


def export_openvino(onnx_path: str | Path, xml_path: str | Path) -> Path:
    """Write the IR of :func:`openvino_model` to ``xml_path`` and its ``.bin`` beside it (each
    written to a temporary file first, then renamed: an earlier export is never half replaced)."""
    ov = openvino_module()
    xml_path = Path(xml_path)
    xml_path.parent.mkdir(parents=True, exist_ok=True)
    model = openvino_model(onnx_path)
    with tempfile.TemporaryDirectory(dir=xml_path.parent, prefix=".export-") as tmp:
        staged = Path(tmp) / xml_path.name
        ov.save_model(model, str(staged), compress_to_fp16=False)
        staged.with_suffix(".bin").replace(xml_path.with_suffix(".bin"))
        staged.replace(xml_path)
    return xml_path


def compiled_model(path: str | Path, threads: int = 0):
    """``path`` (IR or ONNX) compiled for OpenVINO's CPU plugin (latency hint; ``threads`` > 0 pins them)."""
    ov = openvino_module()
    config = {"PERFORMANCE_HINT": "LATENCY"}
    if threads:
        config.update(INFERENCE_NUM_THREADS=str(threads), NUM_STREAMS="1")
    core = ov.Core()
    return core.compile_model(core.read_model(str(path)), "CPU", config)


def executed_precisions(compiled) -> Counter:
    """(layer type, executed precision) of every convolution / fully connected / matmul node of a
    compiled model (u8/i8: an integer kernel)."""
    counts: Counter = Counter()
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        kind = info["layerType"].astype(str)
        if kind in WEIGHTED_TYPES:
            counts[(kind, info["runtimePrecision"].astype(str))] += 1
    return counts
