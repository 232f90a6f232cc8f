"""The integer weight file: a safetensors file holding each layer's weights packed to its
bit-width, its per-channel scale and bias (BatchNorm folded in), every quantizer's step, zero
point and integer range, the remaining float tensors, and in its metadata what rebuilds the
module (timm model, recipe, input size, policy) plus a SHA-256 of every tensor, checked on load.
docs/export-format.md specifies the layout for readers outside mpqfx.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes
from torch import nn

from mpqfx.errors import MpqfxError
from mpqfx.export.deploy import QUANTIZED_TYPES, deploy
from mpqfx.export.packing import pack_ints, unpack_ints
from mpqfx.integrity import DIGEST_KEY, digest
from mpqfx.io import atomic_write_bytes
from mpqfx.quant.policy import Policy
from mpqfx.supernet import Supernet

FORMAT = "mpqfx.integer/2"
Batch = tuple[torch.Tensor, torch.Tensor]
PACKED = ".weight_packed"


class ExportFileError(MpqfxError):
    """An exported file that is missing, corrupt, or not an mpqfx file."""


def save_integer_model(net: Supernet, policy: Policy, path: str | Path, calibration: Iterable[Batch] | None = None,
                       deployed: nn.Module | None = None) -> Path:
    """Write ``net`` at ``policy`` to ``path`` with weights packed to their bits: the module
    ``deploy(net, policy, calibration)`` (or ``deployed``, that module already built)."""
    if net.model_spec is None:
        raise MpqfxError("the integer file records the timm model that rebuilds the module; "
                         "prepare() the supernet from a timm name or pass model_spec=")
    if deployed is None:
        if calibration is None:
            raise MpqfxError("save_integer_model needs calibration batches (training images) for the 8-bit "
                             "quantizers between layers, or the deployed module")
        deployed = deploy(net, policy, calibration)
    tensors = {name: t.detach().cpu().clone().contiguous() for name, t in deployed.state_dict().items()}
    layers: dict[str, dict[str, Any]] = {}
    for name, layer in deployed.named_modules():
        if isinstance(layer, QUANTIZED_TYPES):
            ints, scale = tensors.pop(f"{name}.weight_int"), tensors.pop(f"{name}.weight_scale")
            tensors[name + PACKED] = pack_ints(torch.div(ints.to(torch.int32), 2**layer.shift, rounding_mode="floor"), layer.w_bits)
            tensors[f"{name}.weight_scale"] = scale * 2**layer.shift  # per b-bit integer
            layers[name] = {"w_bits": layer.w_bits, "a_bits": layer.a_bits, "shape": list(ints.shape),
                            "input_from": layer.input_from, **layer.op_attributes()}
    meta = {"format": FORMAT, "model": {"name": net.model_spec.name, "kwargs": dict(net.model_spec.kwargs)},
            "recipe": net.recipe.to_dict(), "input_size": list(net.input_size), "policy": policy.to_dict(),
            "layers": layers, DIGEST_KEY: digest(tensors)}
    path = Path(path)
    atomic_write_bytes(path, safetensors_bytes(tensors, metadata={"mpqfx": json.dumps(meta)}))
    return path


def read_integer_file(path: str | Path, fmt: str = FORMAT) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(metadata, tensors) of an mpqfx safetensors file of format ``fmt``, with its SHA-256 checked."""
    path = Path(path)
    if not path.is_file():
        raise ExportFileError(f"no integer weight file at {str(path)!r}")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = json.loads((fh.metadata() or {}).get("mpqfx", "{}"))
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ExportFileError(f"{str(path)!r} is corrupt or truncated ({' '.join(str(exc).split())[:120]})") from None
    if meta.get("format") != fmt:
        raise ExportFileError(f"{str(path)!r} is not an mpqfx file of format {fmt} (found {meta.get('format')!r})")
    if digest(tensors) != meta.get(DIGEST_KEY):
        raise ExportFileError(f"{str(path)!r} is corrupt: its tensors do not match the SHA-256 it records")
    return meta, tensors


def load_integer_model(path: str | Path) -> nn.Module:
    """Rebuild the runnable module (eval mode) that :func:`save_integer_model` wrote to ``path``."""
    from mpqfx.models import create_model
    from mpqfx.prepare import prepare
    from mpqfx.recipe import Recipe
    from mpqfx.supernet import ModelSpec

    meta, tensors = read_integer_file(path)
    spec = ModelSpec(meta["model"]["name"], meta["model"]["kwargs"])
    net = prepare(create_model(spec.name, **spec.kwargs), Recipe.from_dict(meta["recipe"], str(path)),
                  example_input=torch.zeros(1, *meta["input_size"]), inplace=True, model_spec=spec)
    module = deploy(net, Policy.from_dict(meta["policy"], str(path)))
    state = {k: v for k, v in tensors.items() if not k.endswith(PACKED)}
    for layer, info in meta["layers"].items():
        shift = 2 ** (8 - info["w_bits"])
        state[f"{layer}.weight_int"] = unpack_ints(tensors[layer + PACKED], info["w_bits"], tuple(info["shape"])) * shift
        state[f"{layer}.weight_scale"] = state[f"{layer}.weight_scale"] / shift
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ExportFileError(f"{str(path)!r} does not match {spec.name} rebuilt with its recipe: "
                              f"{' '.join(str(exc).split())[:200]}") from None
    return module.eval()
