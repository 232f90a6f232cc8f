"""A Double Rounding supernet as one 8-bit integer weight file (Double Rounding Eq. 1-3).

Every layer's weights are stored once, as the integers of its highest bit-width (8 bits for the
shipped recipe) with its one scale s_h; the loaded supernet re-creates the latent weights as
q_h * s_h, so that any policy's b-bit weights derive from the stored integers by Eq. 2
(round(q_h / 2^(h-b))) at scale s_h * 2^(h-b) (Eq. 3), exactly as in the trained supernet.
Activation steps and every Transitional BatchNorm set are stored as they are, so any policy runs
from the file alone; the BatchNorm statistics are the trained ones: re-estimate them for a policy
on the ``bn_images`` training images the metadata records to reproduce a reported accuracy
(docs/export-format.md). (Bypass mode runs the dequantized highest-bit weights, not the
original float ones.)
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save as safetensors_bytes

from mpqfx.errors import MpqfxError
from mpqfx.export.integer_file import ExportFileError, read_integer_file
from mpqfx.integrity import DIGEST_KEY, digest
from mpqfx.io import atomic_write_bytes
from mpqfx.quant.double_rounding import DoubleRoundingQuantizer
from mpqfx.quant.layers import MultiBitMixin
from mpqfx.quant.lsq import STEP_EPS
from mpqfx.supernet import Supernet

FORMAT = "mpqfx.double_rounding/1"
INTS = ".weight_int"


def save_double_rounding(net: Supernet, path: str | Path) -> Path:
    """Write the highest-bit integer weights and the rest of ``net``'s state to ``path``."""
    modules = net.layer_modules()
    if not all(isinstance(m.weight_quant, DoubleRoundingQuantizer) for m in modules.values()):
        raise MpqfxError("the 8-bit Double Rounding file needs a supernet built with quant.weight_quantizer: "
                         "double_rounding (e.g. recipe double_rounding)")
    derived = [name for name, m in modules.items() if type(m).float_weight is not MultiBitMixin.float_weight]
    if derived:
        raise MpqfxError(f"layer {derived[0]!r} ({type(modules[derived[0]]).__name__}) quantizes a weight computed "
                         "from its latent one (weight standardization); the Double Rounding file stores latent "
                         "weights, so it cannot hold this model: export it per policy instead")
    if net.model_spec is None:
        raise MpqfxError("the Double Rounding file records the timm model that rebuilds the supernet; "
                         "prepare() it from a timm name or pass model_spec=")
    state = {k: v.detach().cpu().clone().contiguous() for k, v in net.state_dict().items()}
    high = {}
    for name, module in modules.items():
        quant = module.weight_quant
        state.pop(f"graph_module.{name}.weight")
        state[f"graph_module.{name}{INTS}"] = quant.integers(module.weight).to(torch.int8).cpu()  # Eq. 1
        high[name] = quant.high
    meta = {"format": FORMAT, "model": {"name": net.model_spec.name, "kwargs": dict(net.model_spec.kwargs)},
            "recipe": net.recipe.to_dict(), "input_size": list(net.input_size), "high_bits": high,
            "bn_images": net.recipe.evaluate.bn_images,  # per-policy BN re-estimation the report's accuracies include
            DIGEST_KEY: digest(state)}
    atomic_write_bytes(path, safetensors_bytes(state, metadata={"mpqfx": json.dumps(meta)}))
    return Path(path)


def load_double_rounding(path: str | Path) -> Supernet:
    """The supernet stored by :func:`save_double_rounding`; set any policy on it."""
    from mpqfx.models import create_model
    from mpqfx.prepare import prepare
    from mpqfx.recipe import Recipe
    from mpqfx.supernet import ModelSpec

    meta, state = read_integer_file(path, FORMAT)
    spec = ModelSpec(meta["model"]["name"], meta["model"]["kwargs"])
    net = prepare(create_model(spec.name, **spec.kwargs), Recipe.from_dict(meta["recipe"], str(path)),
                  example_input=torch.zeros(1, *meta["input_size"]), inplace=True, model_spec=spec)
    for name, module in net.layer_modules().items():
        ints = state.pop(f"graph_module.{name}{INTS}", None)
        if ints is None:
            raise ExportFileError(f"{str(path)!r} has no integer weights for layer {name!r}")
        scale = state[f"graph_module.{name}.weight_quant.scale"].clamp(min=STEP_EPS)
        state[f"graph_module.{name}.weight"] = ints.float() * scale  # q_h * s_h
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ExportFileError(f"{str(path)!r} does not match {spec.name} rebuilt with its recipe: "
                              f"{' '.join(str(exc).split())[:200]}") from None
    return net
