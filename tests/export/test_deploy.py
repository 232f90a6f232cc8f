"""Deployed modules and integer files hold the supernet's integers in the QDQ form runtimes fuse."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from timm.layers import ScaledStdConv2dSame
from torch import nn

import mpqfx
from mpqfx import MpqfxError, Policy, PolicyError
from mpqfx.export import deploy, export_onnx, integer_kernels, load_integer_model, save_integer_model
from mpqfx.export.onnx_qdq import INTEGER_KERNELS
from mpqfx.export.bias import quantize_biases
from mpqfx.export.deploy import QUANTIZED_TYPES, QuantizedConv
from mpqfx.export.integer_file import ExportFileError
from mpqfx.export.qdq import ActivationQuantizer
from mpqfx.quant.layers import LayerBits

POLICIES = [0, 1, 2]


def _policy(net, seed):
    return Policy.sample(net, seed)


def _deployed(net, policy, images):
    return deploy(net, policy, calibration=[(images, None)])


def _without_integer_approximations(module):
    """The deployed module with its two departures from the supernet undone: 8-bit quantizers of
    the tensors the supernet keeps in float pass their input through, and each bias is the float
    one with the supernet's weight scales."""
    for m in module.modules():
        if isinstance(m, ActivationQuantizer) and m.from_data:
            m.observing = True
        if isinstance(m, QUANTIZED_TYPES):
            m.use_float_bias()
    return module


@pytest.mark.parametrize("seed", POLICIES)
def test_deployed_module_is_the_supernet_but_for_int32_biases_and_8_bit_requantization(net, seed, images):
    policy = _policy(net, seed)
    module = _without_integer_approximations(_deployed(net, policy, images)).double()
    double = copy.deepcopy(net).double()  # float64: far fewer activations within rounding error of a boundary
    with torch.no_grad(), double.use_policy(policy):
        expected = double(images.double())
    close = (module(images.double()) - expected).abs().amax(1) <= 1e-9 * float(expected.abs().max())
    # Folding BN reorders float operations: an activation within float epsilon of a rounding
    # boundary may round the other way and change its image's output. A fault changes every image.
    assert int(close.sum()) >= len(images) - 1
    assert net.policy.is_bypass  # the supernet is left as it was


def test_deployed_layers_hold_the_supernets_integers_filling_int8_with_batchnorm_folded(net, images):
    policy = _policy(net, 0)
    module = _deployed(net, policy, images)
    layers = {n: m for n, m in module.named_modules() if isinstance(m, QUANTIZED_TYPES)}
    assert set(layers) == {l.name for l in net.layers}
    for name, supernet_layer in net.layer_modules().items():
        bits = policy[name]
        ints = supernet_layer.weight_quant.integers(supernet_layer.weight, bits.w)
        assert layers[name].shift == 8 - bits.w
        assert torch.equal(layers[name].weight_int.float(), ints * 2 ** (8 - bits.w))
        assert -128 <= int(layers[name].weight_int.min()) and int(layers[name].weight_int.max()) <= 127
    batchnorms = [m for m in module.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert batchnorms == []  # every BN of test_resnet follows a conv and is folded


def test_a_layer_feeding_one_quantized_layer_carries_its_b_bit_quantizer(net, images):
    """test_resnet's stem conv1.0 -> BN -> ReLU -> conv1.3: the ReLU folds into conv1.3's integers."""
    policy = _policy(net, 1)
    module = _deployed(net, policy, images)
    stem, reader = module.get_submodule("conv1.0"), module.get_submodule("conv1.3")
    assert isinstance(reader.input_quant, torch.nn.Identity)
    quant = stem.output_quant
    assert quant.bits == policy["conv1.3"].a and not quant.from_data
    assert torch.equal(quant.step, net.layer_modules()["conv1.3"].act_quant.step(policy["conv1.3"].a))
    assert (int(quant.zero_point), int(quant.lo), int(quant.hi)) == (0, 0, 2 ** policy["conv1.3"].a - 1)


@pytest.mark.parametrize("bits, signed", [(3, False), (4, True), (8, False)])
def test_a_folded_clamp_activation_is_exact_in_the_integer_range(bits, signed):
    quant = ActivationQuantizer(bits, signed, step=0.37)
    x = torch.linspace(-8, 8, 2001)
    quant.restrict(0.0, 6.0)  # ReLU6
    zero_point = 128 if signed else 0
    qmin, qmax = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    expected = (torch.clamp(x, 0, 6) / 0.37).round().clamp(qmin, qmax) * torch.tensor(0.37)
    assert torch.equal(quant(x), expected)
    assert int(quant.lo) == zero_point + max(qmin, 0) and int(quant.hi) == zero_point + min(qmax, round(6 / 0.37))


def _integers(quant, v):
    return (v / quant.step).round().add(quant.zero_point.float()).clamp(quant.lo.float(), quant.hi.float())


def test_int32_biases_are_exact_or_within_one_unit_and_miss_no_more_outputs_than_rounding(net, images):
    module = _deployed(net, _policy(net, 2), images)
    layers = {n: m for n, m in module.named_modules() if isinstance(m, QUANTIZED_TYPES)}
    for layer in layers.values():
        assert ((layer.bias_int.double() * layer.bias_scale - layer.float_bias).abs() <= layer.bias_scale.abs()).all()
    misses = {"chosen": 0, "rounded": 0}

    def count(layer, inputs, _):
        y = layer.op(layer.quantized_input(inputs[0]), None).movedim(layer.channel_dim, -1)
        supernet = y * layer.float_weight_scale / layer.weight_scale  # the same integers at the supernet's scale
        unit = layer.bias_scale * layer.float_weight_scale / layer.weight_scale
        target = _integers(layer.output_quant, supernet + layer.float_bias)
        rounded = (layer.float_bias / unit).round() * unit
        misses["chosen"] += int((_integers(layer.output_quant, y + layer.bias_int * layer.bias_scale) != target).sum())
        misses["rounded"] += int((_integers(layer.output_quant, supernet + rounded) != target).sum())

    handles = [layer.register_forward_hook(count) for layer in layers.values()]
    module(images)
    for handle in handles:
        handle.remove()
    assert misses["chosen"] <= misses["rounded"]


def test_a_bias_unit_spanning_output_steps_takes_the_weight_scale_that_makes_the_bias_exact():
    """After BN folding one accumulator unit can be several output steps wide: rounding the bias
    to units would move every output of the channel, so the weight scale moves instead."""
    layer = QuantizedConv(nn.Conv2d(1, 1, 1, bias=False), LayerBits(8, 4), a_signed=False, a_step=torch.tensor(1.0))
    layer.weight_int.fill_(1)
    layer.float_weight_scale, layer.float_bias = torch.tensor([3.0]), torch.tensor([4.2])  # a unit is 3 steps
    layer.output_quant = ActivationQuantizer(4, False, 1.0)
    x = torch.zeros(16, 1, 4, 4)
    x[:2] = 1.0  # mostly zero, as after a ReLU
    quantize_biases(nn.Sequential(layer), {"0": torch.tensor(1.0)}, [(x, None)])
    assert float(layer.bias_int) * float(layer.bias_scale) == pytest.approx(4.2, rel=1e-6)
    assert float(layer.bias_scale) == float(layer.weight_scale)  # input step 1 x weight scale
    target = _integers(layer.output_quant, 3.0 * x + 4.2)
    chosen = (_integers(layer.output_quant, layer(x)) != target).sum()
    rounded = (_integers(layer.output_quant, 3.0 * x + 3.0) != target).sum()  # 4.2 / 3 rounds to one unit
    assert int(chosen) == 2 * 16 and int(rounded) == 16 * 16  # only the non-zero inputs miss


def test_float_layers_cannot_be_exported(net):
    policy = _policy(net, 0).replace(**{net.layers[1].name: (None, None)})
    with pytest.raises(PolicyError, match="in float"):
        deploy(net, policy)


def test_an_uncalibrated_deployed_module_says_what_it_needs(net, images):
    with pytest.raises(MpqfxError, match="calibration="):
        deploy(net, _policy(net, 0))(images)


def test_integer_file_rebuilds_the_deployed_module(net, tmp_path, images):
    policy = _policy(net, 1)
    expected_module = _deployed(net, policy, images)
    path = save_integer_model(net, policy, tmp_path / "model.safetensors", deployed=expected_module)
    loaded = load_integer_model(path)
    assert torch.equal(loaded(images), expected_module(images))
    float_bytes = sum(p.numel() * 4 for p in net.parameters() if p.dim() > 1)
    assert path.stat().st_size < 0.35 * float_bytes  # weights packed to <= 8 bits


def test_corrupt_or_truncated_integer_files_are_named(net, tmp_path, images):
    path = save_integer_model(net, _policy(net, 0), tmp_path / "model.safetensors", calibration=[(images, None)])
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    (tmp_path / "flipped.safetensors").write_bytes(bytes(data))
    with pytest.raises(ExportFileError, match="flipped.safetensors.*SHA-256"):
        load_integer_model(tmp_path / "flipped.safetensors")
    (tmp_path / "cut.safetensors").write_bytes(path.read_bytes()[: len(data) // 2])
    with pytest.raises(ExportFileError, match="cut.safetensors.*corrupt or truncated"):
        load_integer_model(tmp_path / "cut.safetensors")


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


def test_standardized_convs_conv1d_and_call_site_biases_deploy_and_run_as_integer_kernels(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(8, 3, 11, 11)
    net = mpqfx.prepare(NewLayerTypes().eval(), example_input=x[:2]).eval()
    assert [l.name for l in net.layers] == ["stem", "eca", "qkv", "head"]
    with torch.no_grad():
        for bits in range(2, 9):
            net.set_policy(Policy.uniform(net, bits))
            net(x)
    for seed in POLICIES:
        policy = _policy(net, seed)
        module = _without_integer_approximations(_deployed(net, policy, x)).double()
        double = copy.deepcopy(net).double()
        with torch.no_grad(), double.use_policy(policy):
            expected = double(x.double())
        close = (module(x.double()) - expected).abs().amax(1) <= 1e-9 * float(expected.abs().max())
        assert int(close.sum()) >= len(x) - 1
    module = _deployed(net, policy, x)
    stem = net.layer_modules()["stem"]  # first layer: 8 bits; the integers are the standardized weight's
    assert torch.equal(module.stem.weight_int.float(), stem.weight_quant.integers(stem.float_weight(), 8))
    qkv_bias = torch.cat((net.graph_module.q_bias, torch.zeros(8), net.graph_module.v_bias)).detach()
    assert torch.equal(module.qkv.float_bias, qkv_bias)  # the call site's bias, evaluated once
    kernels = integer_kernels(export_onnx(module, x[:1], tmp_path / "model.onnx"))
    assert len(kernels) == 4 and all(op in INTEGER_KERNELS for op in kernels.values()), kernels


class _QdqOps(nn.Module):
    """q4(x) x per-channel int8 weights + per-channel int32 biases, then an unclipped 8-bit quantizer."""

    def __init__(self):
        super().__init__()
        self.q4, self.q8 = ActivationQuantizer(4, True, 0.5), ActivationQuantizer(8, False, 0.25)
        self.register_buffer("w", torch.tensor([[1, 2, 3], [-1, -2, -3]], dtype=torch.int8))
        self.register_buffer("w_scale", torch.tensor([0.5, 0.25]))
        self.register_buffer("b", torch.tensor([[4], [-8]], dtype=torch.int32))
        self.register_buffer("b_scale", torch.tensor([0.125, 0.25]))

    def forward(self, x):
        from mpqfx.export.qdq import dequantize_per_channel

        y = self.q4(x) * dequantize_per_channel(self.w, self.w_scale) + dequantize_per_channel(self.b, self.b_scale)
        return y, self.q8(y)


def test_the_qdq_ops_compute_hand_values_in_torch_and_in_onnxruntime(tmp_path):
    """Signed 4 bits at step 0.5: [-4, 3.5] (zero point 128, range [120, 135], a Clip in ONNX); then
    unsigned 8 bits at step 0.25 (the whole container: no Clip). Values worked by hand."""
    import onnx

    from mpqfx.export.onnx_qdq import session

    module = _QdqOps().eval()
    assert repr(module.q4) == "ActivationQuantizer(bits=4, signed=True, step=0.5, zero_point=128, range=[120, 135])"
    assert module.q4.clips and not module.q8.clips
    x = torch.tensor([[[0.26, -3.0, 10.0], [1.1, -10.0, 0.74]]])  # q4: 0.5, -3, 3.5 (clipped); 1, -4 (clipped), 0.5
    y = torch.tensor([[[0.75, -2.5, 5.75], [-2.25, 0.0, -2.375]]])  # q4 x [0.5 1 1.5; -0.25 -0.5 -0.75] + [0.5; -2]
    q8 = torch.tensor([[[0.75, 0.0, 5.75], [0.0, 0.0, 0.0]]])
    for got, want in zip(module(x), (y, q8)):
        assert torch.allclose(got, want, atol=1e-6), got
    path = tmp_path / "qdq.onnx"
    torch.onnx.export(module, (x,), path, opset_version=17, dynamo=False, output_names=["y", "q8"])
    ops = [node.op_type for node in onnx.load(str(path)).graph.node]
    assert ops.count("QuantizeLinear") == 2 and ops.count("Clip") == 1 and ops.count("DequantizeLinear") == 4
    runtime = session(path, optimized=False)  # the graph as written: onnxruntime's own QDQ arithmetic
    outputs = runtime.run(None, {runtime.get_inputs()[0].name: x.numpy()})
    for got, want in zip(outputs, (y, q8)):
        assert torch.allclose(torch.from_numpy(got), want, atol=1e-6), got
