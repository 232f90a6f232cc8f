"""Which ONNX export of a deployed module holding ``Tensor.unfold`` gives QDQ that onnxruntime fuses
(docs/advanced.md, section 3). Needs onnxscript, which mpqfx does not install:

    pip install --target /tmp/onnxscript onnxscript onnx-ir
    PYTHONPATH=/tmp/onnxscript .venv/bin/python tools/dynamo_export_check.py
"""

from __future__ import annotations

import collections
import dataclasses
import sys
import tempfile
import warnings
from pathlib import Path

import onnx
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "export"))
import mpqfx  # noqa: E402
from mpqfx.export import export_onnx, integer_kernels  # noqa: E402
from mpqfx.export.onnx_qdq import session  # noqa: E402
from mpqfx.export.qdq import ActivationQuantizer  # noqa: E402
from test_export_constructs import WindowNet, _deployed, _images  # noqa: E402


def dynamo_export(module: torch.nn.Module, images: torch.Tensor, path: str) -> str:
    """The ops the dynamo exporter writes, its max difference from the deployed module, or its error."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(module, (images[:1],), path, dynamo=True, opset_version=18, input_names=["input"],
                              dynamic_shapes=({0: torch.export.Dim("batch")},))
        except Exception as exc:  # noqa: BLE001 - the finding
            return f"fails: {type(exc).__name__}"
    ops = collections.Counter(n.op_type for n in onnx.load(path).graph.node)
    diff = abs(session(path).run(None, {"input": images.numpy()})[0] - module(images).numpy()).max()
    return f"writes {dict(ops)}; max |ONNX - deployed| {diff:g}"


@torch.no_grad()
def main() -> None:
    images = _images()
    torch.manual_seed(0)
    net, module = _deployed(WindowNet(), images)  # the unfolds rewritten as gathers
    recipe = mpqfx.Recipe.load("default")
    recipe = dataclasses.replace(recipe, graph=dataclasses.replace(recipe.graph, leaf_modules=("win",)))
    torch.manual_seed(0)
    _, kept = _deployed(WindowNet(), images, recipe)  # the unfolds inside a leaf, kept
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(module, images[:1], f"{tmp}/torchscript.onnx")
        print(f"TorchScript, gather: {integer_kernels(path)} ({len(net.layers)} quantized layers)")
        for constants in (False, True):
            if constants:  # torch.export cannot branch on buffer values: make the two checks constants
                ActivationQuantizer.calibrated = property(lambda self: True)
                ActivationQuantizer.clips = property(lambda self: True)
            for name, m in (("gather", module), ("unfold kept", kept)):
                print(f"dynamo, {name}{', constants' if constants else ''}: "
                      f"{dynamo_export(m, images, f'{tmp}/{name[0]}{int(constants)}.onnx')}")


if __name__ == "__main__":
    main()
