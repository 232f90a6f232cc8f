"""The exported ONNX file, read through onnxruntime's own optimizer: every quantized layer an
integer kernel, every activation integer in its layer's range, the safetensors integers."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper
from safetensors.numpy import load_file

from mpqfx import Policy
from mpqfx.export import deploy, export_onnx, integer_kernels, save_integer_model
from mpqfx.export.onnx_qdq import BITS_PROP, INTEGER_KERNELS, session
from mpqfx.export.packing import unpack_ints

POLICIES = [0, 1, 2]


@pytest.fixture(scope="module")
def exported(net, tmp_path_factory):
    """(policy, deployed module, ONNX path, optimized ONNX path) per sampled policy."""
    images = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    out = {}
    for seed in POLICIES:
        folder = tmp_path_factory.mktemp(f"onnx{seed}")
        policy = Policy.sample(net, seed)
        module = deploy(net, policy, calibration=[(images, None)])
        path = export_onnx(module, images[:1], folder / "model.onnx", bits={k: tuple(v) for k, v in policy.items()})
        session(path, save_optimized=folder / "optimized.onnx")
        out[seed] = policy, module, path, folder / "optimized.onnx"
    return out


@pytest.mark.parametrize("seed", POLICIES)
def test_onnxruntime_runs_every_quantized_layer_as_an_integer_kernel(net, exported, seed):
    _, _, path, optimized = exported[seed]
    kernels = integer_kernels(path)
    assert set(kernels) == {f"{l.name}.weight_int" for l in net.layers}
    assert all(op in ("QLinearConv", "QGemm") for op in kernels.values()), kernels
    ops = [n.op_type for n in onnx.load(optimized).graph.node]
    assert ops.count("QLinearConv") + ops.count("QGemm") == len(net.layers)
    assert "Conv" not in ops and "Gemm" not in ops and "Div" not in ops and "Round" not in ops and "Mul" not in ops


@pytest.mark.parametrize("seed", POLICIES)
def test_onnxruntime_computes_the_deployed_module(exported, seed, images):
    _, module, path, _ = exported[seed]
    expected = module(images).numpy()
    for optimized in (False, True):
        got = session(path, optimized=optimized).run(None, {"input": images.numpy()})[0]
        assert np.abs(got - expected).max() <= 1e-4 * (expected.max() - expected.min())


def _integer_inputs(optimized: onnx.ModelProto) -> dict[str, str]:
    """Integer kernel node -> its quantized activation input, in the runtime's optimized graph."""
    return {n.name: n.input[0] for n in optimized.graph.node if n.op_type in INTEGER_KERNELS}


@pytest.mark.parametrize("seed", POLICIES)
def test_every_activation_integer_lies_in_its_layers_range(net, exported, seed, images):
    policy, _, _, optimized_path = exported[seed]
    optimized = onnx.load(optimized_path)
    inputs = {}
    for node in optimized.graph.node:
        if node.op_type in INTEGER_KERNELS:
            weight = next(i for i in node.input if i.endswith(".weight_int") or ".weight_int_" in i)
            inputs[weight.split(".weight_int")[0]] = (node.input[0], node.input[2])  # activation, its zero point
    assert set(inputs) == {l.name for l in net.layers}
    names = sorted({a for a, _ in inputs.values()})
    for name in names:
        optimized.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.UINT8, None))
    zero_points = {init.name: int(numpy_helper.to_array(init)) for init in optimized.graph.initializer
                   if init.name in {z for _, z in inputs.values()}}
    sess = session_of(optimized)
    values = dict(zip(names, sess.run(names, {"input": images.numpy() * 3})))  # wide inputs reach the range ends
    for layer in net.layers:
        activation, zp_name = inputs[layer.name]
        bits, zero_point = policy[layer.name].a, zero_points[zp_name]
        low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if layer.a_signed else (0, 2**bits - 1)
        q = values[activation].astype(int) - zero_point
        assert low <= q.min() and q.max() <= high, (layer.name, bits, q.min(), q.max())


def session_of(model: onnx.ModelProto):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def test_onnx_integer_weights_are_the_safetensors_integers(net, exported, tmp_path):
    policy, module, path, _ = exported[1]
    safetensors_path = save_integer_model(net, policy, tmp_path / "model.safetensors", deployed=module)
    stored = load_file(str(safetensors_path))
    model = onnx.load(path)
    weights = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer if i.name.endswith(".weight_int")}
    assert len(weights) == len(net.layers)
    for layer in net.layers:
        bits = policy[layer.name].w
        ints = unpack_ints(torch.from_numpy(stored[f"{layer.name}.weight_packed"]), bits, weights[f"{layer.name}.weight_int"].shape)
        assert np.array_equal(weights[f"{layer.name}.weight_int"], ints.numpy().astype(np.int8) * 2 ** (8 - bits))
    assert json.loads(next(p.value for p in model.metadata_props if p.key == BITS_PROP)) == {
        k: [b.w, b.a] for k, b in policy.items()}


def test_openvino_executes_every_quantized_layer_in_integers(net, exported):
    pytest.importorskip("openvino")
    from mpqfx.export.openvino_ir import INTEGER_PRECISIONS, compiled_model, executed_precisions

    _, _, path, _ = exported[0]
    precisions = executed_precisions(compiled_model(path, threads=1))
    assert sum(precisions.values()) == len(net.layers)
    assert all(p in INTEGER_PRECISIONS for _, p in precisions), precisions
