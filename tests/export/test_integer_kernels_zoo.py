"""Real architectures: after onnxruntime's optimizer every quantized conv/linear is an integer kernel."""

from __future__ import annotations

import pytest
import timm
import torch

import mpqfx
from mpqfx import Policy
from mpqfx.export import deploy, export_onnx, integer_kernels
from mpqfx.export.onnx_qdq import INTEGER_KERNELS, session

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
    expected = module(images).numpy()
    got = session(path).run(None, {"input": images.numpy()})[0]
    assert (got.argmax(1) == expected.argmax(1)).mean() >= 7 / 8
