"""Corrupt or truncated files are detected on load, with an error naming the file."""

from __future__ import annotations

import pytest
import timm
import torch

import mpqfx

from mpqfx import Policy
from mpqfx.export import deploy, export_onnx, load_onnx
from mpqfx.export.integer_file import ExportFileError
from mpqfx.integrity import digest, intact, seal
from mpqfx.store import load_supernet, save_supernet
from mpqfx.supernet import ModelSpec
from mpqfx.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

MARKER = torch.arange(4096, dtype=torch.float32) + 0.123  # bytes easy to find inside a file


def flip_inside(path, needle: bytes) -> None:
    """Flip one bit in the middle of ``needle``'s bytes within the file (tensor data, not a header)."""
    data = bytearray(path.read_bytes())
    at = data.find(needle)
    assert at >= 0
    data[at + len(needle) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_digest_covers_values_types_and_structure():
    state = {"w": MARKER.clone(), "step": 3, "lr": 0.1, "names": ["a", "b"], "none": None}
    assert digest(state) == digest({k: state[k] for k in reversed(list(state))})  # key order does not matter
    for changed in ({**state, "step": 4}, {**state, "lr": 0.1000001}, {**state, "names": ["a"]},
                    {**state, "w": MARKER.double()}, {**state, "w": MARKER.view(64, 64)}):
        assert digest(changed) != digest(state)
    sealed = seal(state)
    assert intact(sealed) and not intact({**sealed, "step": 5})


def test_a_flipped_bit_in_a_checkpoint_is_detected(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"model": {"w": MARKER.clone()}, "step": 7})
    assert load_checkpoint(path)["step"] == 7
    flip_inside(path, MARKER.numpy().tobytes())
    with pytest.raises(CheckpointError, match=r"checkpoint.pt.* is corrupt"):
        load_checkpoint(path)


def test_a_truncated_checkpoint_is_detected(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"model": {"w": MARKER.clone()}, "step": 7})
    path.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(CheckpointError, match=r"checkpoint.pt.* is corrupt or truncated"):
        load_checkpoint(path)


def test_corrupt_supernet_files_never_load_silently(tmp_path, resnet_supernet):
    net = resnet_supernet
    spec = ModelSpec("test_resnet", {})
    path = save_supernet(net, tmp_path / "supernet.pt", model_spec=spec)
    loaded, _ = load_supernet(path)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), net.state_dict().values()))
    weight = net.layer_modules()[net.layers[3].name].weight.detach()
    flip_inside(path, weight.contiguous().numpy().tobytes()[:4096])
    with pytest.raises(CheckpointError, match=r"supernet.pt.* is corrupt"):
        load_supernet(path)
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    with pytest.raises(CheckpointError, match=r"supernet.pt.* is corrupt or truncated"):
        load_supernet(path)


def test_onnx_files_record_and_check_their_hash(tmp_path):
    torch.manual_seed(0)
    net = mpqfx.prepare(timm.create_model("test_resnet", num_classes=10), example_input=torch.randn(1, 3, 32, 32)).eval()
    policy = Policy.uniform(net, 4)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), net.use_policy(policy):
        net(x)  # initialise the 4-bit activation steps
    path = tmp_path / "model.onnx"
    export_onnx(deploy(net, policy, calibration=[(x, None)]), x, path)
    model = load_onnx(path)
    assert {p.key for p in model.metadata_props} == {"mpqfx.sha256"}
    int8 = next(i for i in model.graph.initializer if i.data_type == 3 and len(i.raw_data) > 64)  # an int8 weight
    flip_inside(path, bytes(int8.raw_data))
    with pytest.raises(ExportFileError, match=r"model.onnx.* is corrupt: its content does not match"):
        load_onnx(path)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ExportFileError, match=r"model.onnx.* is corrupt or truncated"):
        load_onnx(path)
    with pytest.raises(ExportFileError, match="no ONNX file"):
        load_onnx(tmp_path / "missing.onnx")
