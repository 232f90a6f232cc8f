"""Deployed modules, integer files and ONNX agree with the supernet they come from."""

from __future__ import annotations

import dataclasses

import onnx
import pytest
import torch
import torch.nn.functional as F
from timm.layers import ScaledStdConv2dSame
from torch import nn

import mpqfx
from mpqfx import Policy, PolicyError
from mpqfx.export import deploy, export_onnx, load_integer_model, save_integer_model
from mpqfx.export.deploy import QuantizedConv2d, QuantizedLinear
from mpqfx.export.integer_file import ExportFileError
from mpqfx.recipe import WeightQuantizer

POLICIES = [0, 1, 2]


def _policy(net, seed):
    return Policy.sample(net, seed)


def _deployed_and_checked(net, policy, x):
    """``deploy(net, policy)``, asserted to compute the supernet at ``policy`` on ``x``."""
    with torch.no_grad(), net.use_policy(policy):
        expected = net(x)
    module = deploy(net, policy)
    close = (module(x) - expected).abs().amax(1) <= 1e-5 * float(expected.abs().max())
    # Folding BN reorders float operations: an activation within float epsilon of a rounding
    # boundary may round the other way and change its image's output. A fault changes every image.
    assert int(close.sum()) >= len(x) - 1
    return module


@pytest.mark.parametrize("seed", POLICIES)
def test_deployed_module_computes_the_supernet_at_its_policy(net, seed, images):
    _deployed_and_checked(net, _policy(net, seed), images)
    assert net.policy.is_bypass  # the supernet is left as it was


def test_deployed_layers_hold_the_supernets_integers_with_batchnorm_folded(net):
    policy = _policy(net, 0)
    module = deploy(net, policy)
    layers = {n: m for n, m in module.named_modules() if isinstance(m, (QuantizedConv2d, QuantizedLinear))}
    assert set(layers) == {l.name for l in net.layers}
    for name, supernet_layer in net.layer_modules().items():
        bits = policy[name]
        ints = supernet_layer.weight_quant.integers(supernet_layer.weight, bits.w)
        assert torch.equal(layers[name].weight_int.float(), ints)
        qmin, qmax = -(2 ** (bits.w - 1)), 2 ** (bits.w - 1) - 1
        assert qmin <= int(ints.min()) and int(ints.max()) <= qmax
    batchnorms = [m for m in module.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert batchnorms == []  # every BN of test_resnet follows a conv and is folded


def test_float_layers_cannot_be_exported(net):
    policy = _policy(net, 0).replace(**{net.layers[1].name: (None, None)})
    with pytest.raises(PolicyError, match="in float"):
        deploy(net, policy)


def test_integer_file_rebuilds_the_deployed_module(net, tmp_path, images):
    policy = _policy(net, 1)
    path = save_integer_model(net, policy, tmp_path / "model.safetensors")
    x = images
    expected = deploy(net, policy)(x)
    loaded = load_integer_model(path)
    assert torch.equal(loaded(x), expected)
    float_bytes = sum(p.numel() * 4 for p in net.parameters() if p.dim() > 1)
    assert path.stat().st_size < 0.35 * float_bytes  # weights packed to <= 8 bits


def test_corrupt_or_truncated_integer_files_are_named(net, tmp_path):
    path = save_integer_model(net, _policy(net, 0), tmp_path / "model.safetensors")
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    (tmp_path / "flipped.safetensors").write_bytes(bytes(data))
    with pytest.raises(ExportFileError, match="flipped.safetensors.*SHA-256"):
        load_integer_model(tmp_path / "flipped.safetensors")
    (tmp_path / "cut.safetensors").write_bytes(path.read_bytes()[: len(data) // 2])
    with pytest.raises(ExportFileError, match="cut.safetensors.*corrupt or truncated"):
        load_integer_model(tmp_path / "cut.safetensors")


@pytest.mark.parametrize("seed", POLICIES)
def test_onnx_qdq_matches_pytorch(net, seed, tmp_path, images):
    policy = _policy(net, seed)
    module = deploy(net, policy)
    check = export_onnx(module, images, tmp_path / "model.onnx")
    assert check.ok and check.max_abs_diff <= 1e-4 * check.output_range
    assert check.int8_weights == len(net.layers)
    model = onnx.load(tmp_path / "model.onnx")
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") == len(net.layers)  # one per layer input; weights are int8 initializers
    assert ops.count("DequantizeLinear") == 2 * len(net.layers)
    int8 = [i for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT8]
    assert len(int8) >= len(net.layers)
    clips = [n for n in model.graph.node if n.op_type == "Clip"]
    assert len(clips) >= len(net.layers)  # the b-bit range inside the 8-bit container


def test_per_channel_weight_steps_deploy_and_export_to_onnx(perturbed_supernet, tmp_path, images):
    recipe = mpqfx.Recipe.load("default")
    recipe = dataclasses.replace(recipe, quant=dataclasses.replace(recipe.quant, weight_quantizer=WeightQuantizer.LSQ_CHANNEL))
    net = perturbed_supernet(recipe)
    conv = net.layer_modules()["layer1.0.conv1"]
    assert conv.weight_quant.step(4).shape == (conv.weight.shape[0], 1, 1, 1)
    assert conv.weight_quant.step(4).std() > 0  # the channels got steps of their own
    module = _deployed_and_checked(net, _policy(net, 1), images)
    check = export_onnx(module, images, tmp_path / "model.onnx")
    assert check.ok and check.max_abs_diff <= 1e-4 * check.output_range


class NewLayerTypes(nn.Module):
    """A standardized conv with dynamic SAME padding and a BN to fold, an ECA-style Conv1d, and a
    fused-bias functional F.linear on a module's weight."""

    def __init__(self):
        super().__init__()
        self.stem = ScaledStdConv2dSame(3, 8, 3, stride=2)
        self.bn = nn.BatchNorm2d(8)
        self.eca = nn.Conv1d(1, 1, 3, padding=1, bias=False)
        self.qkv = nn.Linear(8, 24, bias=False)
        self.q_bias, self.v_bias = nn.Parameter(torch.randn(8)), nn.Parameter(torch.randn(8))
        self.head = nn.Linear(24, 4)

    def forward(self, x):
        x = torch.relu(self.bn(self.stem(x)))
        gate = self.eca(x.mean((2, 3)).unsqueeze(1)).sigmoid()  # (B, 1, C)
        tokens = (x * gate.transpose(1, 2).unsqueeze(-1)).flatten(2).transpose(1, 2)
        tokens = F.linear(tokens, self.qkv.weight, torch.cat((self.q_bias, torch.zeros_like(self.q_bias), self.v_bias)))
        return self.head(tokens.mean(1))


def test_new_layer_types_deploy_and_export_to_onnx(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(8, 3, 11, 11)
    net = mpqfx.prepare(NewLayerTypes().eval(), example_input=x[:2]).eval()
    assert [l.name for l in net.layers] == ["stem", "eca", "qkv", "head"]
    for seed in POLICIES:
        module = _deployed_and_checked(net, _policy(net, seed), x)
    stem = net.layer_modules()["stem"]  # first layer: 8 bits; the integers are the standardized weight's
    assert torch.equal(module.stem.weight_int.float(), stem.weight_quant.integers(stem.float_weight(), 8))
    check = export_onnx(module, x, tmp_path / "model.onnx")
    assert check.ok and check.max_abs_diff <= 1e-4 * check.output_range
    assert check.int8_weights == len(net.layers)
