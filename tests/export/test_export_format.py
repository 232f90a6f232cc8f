"""The integer safetensors file read with numpy and safetensors alone, as docs/export-format.md says."""

from __future__ import annotations

import json

import numpy as np
import torch
from safetensors import safe_open
from safetensors.numpy import load_file

from mpqfx import Policy
from mpqfx.export import deploy, save_integer_model
from mpqfx.export.deploy import QUANTIZED_TYPES, input_quantizer


def _decode_layer(tensors: dict[str, np.ndarray], info: dict, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(weight, bias) of layer ``name``, by the recipe of docs/export-format.md."""
    bits, shape = info["w_bits"], info["shape"]
    stream = np.unpackbits(tensors[f"{name}.weight_packed"], bitorder="little")[: int(np.prod(shape)) * bits]
    codes = stream.reshape(-1, bits).astype(np.int64) @ (1 << np.arange(bits))
    q = (codes - 2 ** (bits - 1)).reshape(shape)
    weight = q * tensors[f"{name}.weight_scale"].reshape(-1, *[1] * (len(shape) - 1))
    return weight, tensors[f"{name}.bias_int"] * tensors[f"{name}.bias_scale"]


def _input_quantizer(info: dict, name: str) -> str:
    """The tensor prefix of layer ``name``'s input quantizer, by docs/export-format.md."""
    source = info["input_from"]
    if source is None:
        return f"{name}.input_quant"
    return source if source.startswith("requantize_") else f"{source}.output_quant"


def test_numpy_decodes_every_layer_of_the_integer_file_as_the_deployed_module(net, tmp_path, images):
    policy = Policy.sample(net, 4)
    module = deploy(net, policy, calibration=[(images, None)])
    path = save_integer_model(net, policy, tmp_path / "model.safetensors", deployed=module)
    with safe_open(str(path), "np") as fh:
        meta = json.loads(fh.metadata()["mpqfx"])
    tensors = load_file(str(path))
    assert meta["format"] == "mpqfx.integer/2" and meta["policy"]["layers"] == {k: {"w": b.w, "a": b.a} for k, b in policy.items()}
    deployed = {n: m for n, m in module.named_modules() if isinstance(m, QUANTIZED_TYPES)}
    assert set(meta["layers"]) == set(deployed) == {l.name for l in net.layers}
    for name, layer in deployed.items():
        info = meta["layers"][name]
        weight, bias = _decode_layer(tensors, info, name)
        assert np.array_equal(weight.astype(np.float32), layer.weight.numpy())
        assert np.array_equal(bias.astype(np.float32), layer.bias.numpy())
        assert (info["w_bits"], info["a_bits"]) == tuple(policy[name])
        assert info["input_from"] == layer.input_from
        assert float(tensors[f"{_input_quantizer(info, name)}.step"]) == float(input_quantizer(module, name).step)
    fc = meta["layers"]["fc"]
    assert fc["op"] == "linear" and meta["layers"]["conv1.0"]["op"] == "conv2d"


def test_a_decoded_linear_layer_computes_the_deployed_layer(net, tmp_path, images):
    """The classifier rebuilt by hand: input quantizer, integer weights, bias, output quantizer."""
    policy = Policy.sample(net, 5)
    module = deploy(net, policy, calibration=[(images, None)])
    path = save_integer_model(net, policy, tmp_path / "model.safetensors", deployed=module)
    tensors = load_file(str(path))
    with safe_open(str(path), "np") as fh:
        info = json.loads(fh.metadata()["mpqfx"])["layers"]["fc"]
    weight, bias = _decode_layer(tensors, info, "fc")
    x = torch.randn(4, weight.shape[1], generator=torch.Generator().manual_seed(0))

    def quantize(v, prefix):
        step, zp = tensors[f"{prefix}.step"], tensors[f"{prefix}.zero_point"].astype(np.float32)
        q = np.clip(np.round(v / step) + zp, tensors[f"{prefix}.lo"], tensors[f"{prefix}.hi"])
        return ((q - zp) * step).astype(np.float32)

    y = quantize(x.numpy(), _input_quantizer(info, "fc")) @ weight.astype(np.float32).T + bias.astype(np.float32)
    expected = module.get_submodule("fc")(x).numpy()
    assert np.allclose(quantize(y, "fc.output_quant"), expected, atol=1e-6 * np.abs(expected).max())
