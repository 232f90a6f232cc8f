"""Export of a chosen policy: a deployable module with integer weights, the packed integer
safetensors file and its loader, ONNX with QuantizeLinear/DequantizeLinear, and the
Double Rounding 8-bit weight file."""

from mpqfx.export.deploy import QuantizedConv2d, QuantizedLinear, deploy
from mpqfx.export.integer_file import load_integer_model, save_integer_model
from mpqfx.export.onnx_qdq import OnnxCheck, export_onnx, load_onnx

__all__ = ["deploy", "QuantizedConv2d", "QuantizedLinear", "save_integer_model", "load_integer_model",
           "export_onnx", "load_onnx", "OnnxCheck"]
