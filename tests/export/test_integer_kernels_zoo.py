"""Real architectures: after onnxruntime's optimizer every quantized conv/linear is an integer kernel,
and so are the residual adds and max pools between them."""

from __future__ import annotations

import copy
from collections import Counter

import onnx
import pytest
import timm
import torch

import mpqfx
from mpqfx import Policy
from mpqfx.export import deploy, export_onnx, integer_kernels
from mpqfx.export.onnx_qdq import INTEGER_KERNELS, session

# residual adds and max pools of these run on integers too (QLinearAdd, uint8 MaxPool): hand counts
INTEGER_OPS = {"resnet18": {"QLinearAdd": 8, "MaxPool": 1}, "mobilenetv2_100": {"QLinearAdd": 10}}

MODELS = {
    "resnet18": {},
    "mobilenetv2_100": {},
    "vit_tiny_patch16_224": {"img_size": 32, "patch_size": 8, "depth": 2},
}


@pytest.mark.parametrize("name", MODELS)
def test_every_quantized_layer_runs_as_an_integer_kernel(name, tmp_path):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=10, **MODELS[name])
    net = mpqfx.prepare(model, example_input=torch.randn(1, 3, 32, 32)).eval()
    images = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for bits in (2, 3, 4, 5, 6, 8):  # fit the activation steps
            net.set_policy(Policy.uniform(net, bits))
            net(images)
    policy = Policy.sample(net, 0)
    module = deploy(net, policy, calibration=[(images, None)])
    path = export_onnx(module, images[:1], tmp_path / "model.onnx")
    kernels = integer_kernels(path)
    assert len(kernels) == len(net.layers)
    floating = {w: op for w, op in kernels.items() if op not in INTEGER_KERNELS}
    assert not floating, floating
    if name in INTEGER_OPS:
        session(path, save_optimized=tmp_path / "optimized.onnx")
        ops = Counter(node.op_type for node in onnx.load(str(tmp_path / "optimized.onnx")).graph.node)
        assert not {"Add", "MaxPool"} & set(ops), ops  # no float add or pool between the integer kernels
        assert {op: ops[op] + ops[f"Nhwc{op}"] for op in INTEGER_OPS[name]} == INTEGER_OPS[name]
    # in float64: float32 sums round products that integer kernels add exactly, and at random weights
    # a few such flips on a grid boundary compound through mobilenetv2's depth
    expected = copy.deepcopy(module).double()(images.double()).numpy()
    got = session(path).run(None, {"input": images.numpy()})[0]
    assert (got.argmax(1) == expected.argmax(1)).mean() >= 7 / 8
