"""The OpenVINO IR holds each b-bit quantizer in a form OpenVINO runs in u8, with the same values."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

ov = pytest.importorskip("openvino")
onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402

from mpqfx import Policy  # noqa: E402
from mpqfx.export import deploy, export_onnx  # noqa: E402
from mpqfx.export.openvino_ir import INTEGER_PRECISIONS, compiled_model, executed_precisions, export_openvino, openvino_model  # noqa: E402

F32 = {"INFERENCE_PRECISION_HINT": "f32"}  # no bf16 on CPUs that have it: outputs compared exactly


def _run(model, x: np.ndarray) -> np.ndarray:
    return ov.Core().compile_model(model, "CPU", F32).create_infer_request().infer({0: x})[0].copy()


def _quantizer_onnx(path, step: float, zero_point: int, lo: int, hi: int) -> None:
    """input -> QuantizeLinear(step, zero_point, uint8) -> Clip(lo, hi) -> DequantizeLinear -> output."""
    init = [helper.make_tensor("s", TensorProto.FLOAT, [], [step]), helper.make_tensor("zp", TensorProto.UINT8, [], [zero_point]),
            helper.make_tensor("lo", TensorProto.UINT8, [], [lo]), helper.make_tensor("hi", TensorProto.UINT8, [], [hi])]
    nodes = [helper.make_node("QuantizeLinear", ["input", "s", "zp"], ["q"]),
             helper.make_node("Clip", ["q", "lo", "hi"], ["c"]),
             helper.make_node("DequantizeLinear", ["c", "s", "zp"], ["output"])]
    graph = helper.make_graph(nodes, "quantizer", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4096])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 4096])], init)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))


@pytest.mark.parametrize("zero_point, lo, hi, low_bit", [
    (0, 0, 15, True), (128, 120, 135, True), (0, 0, 14, True),  # 4-bit, signed 4-bit, 4-bit narrowed by a ReLU6
    (0, 0, 7, False), (128, 124, 131, False), (0, 0, 200, False),  # 3-bit, signed 3-bit, 8-bit narrowed
])
def test_a_clipped_quantizer_becomes_a_16_level_fake_quantize_or_a_clamp_before_its_own_with_its_values(
        tmp_path, zero_point, lo, hi, low_bit):
    path = tmp_path / "quantizer.onnx"
    step = 0.37
    _quantizer_onnx(path, step, zero_point, lo, hi)
    model = openvino_model(path)
    kinds = Counter(op.get_type_name() for op in model.get_ordered_ops())
    assert kinds["FakeQuantize"] == 1 and kinds["Maximum"] == kinds["Minimum"] == 0
    assert kinds["Clamp"] == (0 if low_bit else 1)
    levels = next(op for op in model.get_ordered_ops() if op.get_type_name() == "FakeQuantize").get_attributes()["levels"]
    assert levels == (hi - lo + 1 if low_bit else 256)
    x = np.random.default_rng(0).uniform(-80, 80, (1, 4096)).astype(np.float32)
    expected = (np.clip(np.rint(x / np.float32(step)) + zero_point, lo, hi) - zero_point) * np.float32(step)
    np.testing.assert_allclose(_run(model, x), expected, rtol=0, atol=1e-6)


def _clip_levels(onnx_path) -> list[int]:
    graph = onnx.load(str(onnx_path)).graph
    bounds = {init.name: onnx.numpy_helper.to_array(init) for init in graph.initializer}
    bounds.update({node.output[0]: onnx.numpy_helper.to_array(node.attribute[0].t) for node in graph.node
                   if node.op_type == "Constant"})
    bounds.update({node.output[0]: bounds[node.input[0]] for node in graph.node if node.op_type == "Identity"
                   and node.input[0] in bounds})
    bounds = {name: int(value.reshape(-1)[0]) for name, value in bounds.items() if value.size == 1}
    return [bounds[node.input[2]] - bounds[node.input[1]] + 1 for node in graph.node if node.op_type == "Clip"]


@pytest.mark.parametrize("policy", ["uniform-4", "sampled"])
def test_an_exported_network_rewrites_every_clip_and_runs_every_layer_in_u8_computing_what_the_onnx_file_does(
        net, images, tmp_path, policy):
    policy = Policy.uniform(net, 4) if policy == "uniform-4" else Policy.sample(net, 0)
    module = deploy(net, policy, calibration=[(images, None)])
    bits = {name: [b.w, b.a] for name, b in policy.items()}
    onnx_path = export_onnx(module, images[:1], tmp_path / "model.onnx", bits=bits)
    clips = _clip_levels(onnx_path)
    xml = export_openvino(onnx_path, tmp_path / "ir" / "model.xml")
    assert xml.with_suffix(".bin").is_file()
    model = ov.Core().read_model(str(xml))
    kinds = Counter(op.get_type_name() for op in model.get_ordered_ops())
    low_bit = [op for op in model.get_ordered_ops() if op.get_type_name() == "FakeQuantize"
               and op.get_attributes()["levels"] < 256]
    assert sorted(op.get_attributes()["levels"] for op in low_bit) == sorted(l for l in clips if l in (15, 16))
    assert kinds["Clamp"] == sum(l not in (15, 16) for l in clips) and kinds["Maximum"] == kinds["Minimum"] == 0
    assert any(l == 16 for l in clips)
    assert json.loads(model.get_rt_info(["framework", "mpqfx.bits"]).astype(str)) == bits  # the ONNX metadata
    precisions = executed_precisions(compiled_model(xml, threads=1))
    assert sum(precisions.values()) == len(net.layers)
    assert all(p in INTEGER_PRECISIONS for _, p in precisions), precisions
    x = images.numpy()
    folded, written = _run(model, x), _run(ov.Core().read_model(str(onnx_path)), x)
    np.testing.assert_allclose(folded, written, rtol=0, atol=1e-5 * float(np.abs(written).max()))
