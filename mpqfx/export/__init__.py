"""Export of a chosen policy: a deployable module in QDQ form, the packed integer safetensors file
and its loader, ONNX that runtimes run with integer kernels, its OpenVINO IR, and the Double
Rounding 8-bit weight file."""

from mpqfx.export.deploy import QuantizedConv, QuantizedLinear, deploy
from mpqfx.export.double_rounding_file import load_double_rounding, save_double_rounding
from mpqfx.export.integer_file import load_integer_model, save_integer_model
from mpqfx.export.onnx_qdq import OnnxExportError, export_onnx, integer_kernels, load_onnx
from mpqfx.export.openvino_ir import export_openvino

__all__ = ["deploy", "QuantizedConv", "QuantizedLinear", "save_integer_model", "load_integer_model",
           "export_onnx", "load_onnx", "integer_kernels", "OnnxExportError", "export_openvino", "save_double_rounding", "load_double_rounding"]
