"""Where the float weights come from: timm's pretrained weights, a local file, a timm model
instance, or a float training phase (the supernet in bypass mode, strategy ``float``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import nn

from mpqfx.errors import MpqfxError
from mpqfx.models import create_model
from mpqfx.recipe import Recipe, StrategySpec
from mpqfx.supernet import ModelSpec
from mpqfx.train.checkpoint import fingerprint, mismatch


def create_float_model(name: str, kwargs: dict, pretrained: bool, checkpoint: str | Path | None) -> nn.Module:
    """The timm model with pretrained weights, weights from ``checkpoint``, or fresh ones."""
    if pretrained:
        try:
            return create_model(name, pretrained=True, **kwargs)
        except MpqfxError:
            raise
        except Exception as exc:  # hub/network errors come in many types
            raise MpqfxError(f"cannot fetch timm's pretrained weights for {name!r} ({type(exc).__name__}: "
                             f"{' '.join(str(exc).split())[:160]}); this needs the network, or use "
                             "--checkpoint PATH with local weights") from None
    model = create_model(name, **kwargs)
    if checkpoint:
        load_float_weights(model, Path(checkpoint), name)
    return model


def timm_spec_of(module: nn.Module, kwargs: dict) -> ModelSpec:
    """The timm name that re-creates ``module`` with ``kwargs`` (what the data needs: classes,
    channels), so that a run directory can rebuild it; an error says what does not fit."""
    name = (getattr(module, "pretrained_cfg", None) or {}).get("architecture")
    if not name:
        raise MpqfxError(f"compress: a {type(module).__name__} module is not a timm model; pass a timm model "
                         "name or a module made by timm.create_model, so that the run directory can rebuild it")
    problem = mismatch(fingerprint(create_model(name, **kwargs).state_dict()), fingerprint(module.state_dict()),
                       "parameters")
    if problem:
        args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
        raise MpqfxError(f"compress: the {name} module does not fit the data, which needs "
                         f"timm.create_model({name!r}, {args}): {problem}")
    return ModelSpec(name, dict(kwargs))


def load_float_weights(model: nn.Module, path: Path, name: str) -> None:
    """Load a state dict (``.safetensors``, or a torch file holding one, optionally under
    ``state_dict``/``model``) into ``model``; every key must match."""
    if not path.is_file():
        raise MpqfxError(f"--checkpoint: no file at {str(path)!r}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise MpqfxError(f"--checkpoint: {str(path)!r} is corrupt or not a weights file ({type(exc).__name__})") from None
    if isinstance(state, dict) and not any(isinstance(v, torch.Tensor) for v in state.values()):
        state = state.get("state_dict") or state.get("model") or state
    try:
        model.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError, AttributeError) as exc:
        first = " ".join(str(exc).split())[:200]
        raise MpqfxError(f"--checkpoint: {str(path)!r} does not fit {name}: {first}") from None


def float_recipe(recipe: Recipe) -> Recipe:
    """The recipe of the float phase: strategy ``float``, the warm-start epochs and learning rate,
    no distillation and no quantizer optimizer."""
    train = dataclasses.replace(recipe.train, epochs=recipe.warm_start.epochs, lr=recipe.warm_start.lr,
                                quant_lr=0.0, warmup_epochs=0, max_steps=None,
                                distill=dataclasses.replace(recipe.train.distill, inplace=False, teacher=False,
                                                            ce_weight=1.0, kl_weight=0.0))
    return dataclasses.replace(recipe, strategy=StrategySpec("float"), train=train).check()
