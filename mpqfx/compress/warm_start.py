"""Where the float weights come from: timm's pretrained weights (the hub or a local file, both
through timm's own loader, which fits the classifier and the input channels to the data), a timm
model instance, or a float training phase (the supernet in bypass mode, strategy ``float``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mpqfx.errors import MpqfxError
from mpqfx.models import create_model
from mpqfx.recipe import Recipe, StrategySpec
from mpqfx.supernet import ModelSpec
from mpqfx.train.checkpoint import fingerprint, mismatch


@dataclass(frozen=True)
class Adapted:
    """What timm's loader changed to fit the weights to the data: (weights', model's) counts."""

    classes: tuple[int, int] | None = None  # the classifier was re-initialised (0: the weights had none)
    channels: tuple[int, int] | None = None  # the first conv was adapted (timm's adapt_input_conv)

    def __bool__(self) -> bool:
        return self.classes is not None or self.channels is not None


def create_float_model(name: str, kwargs: dict, pretrained: bool,
                       checkpoint: str | Path | None) -> tuple[nn.Module, Adapted]:
    """The timm model with timm's pretrained weights, the weights of ``checkpoint`` or fresh ones,
    and what timm adapted to fit ``kwargs`` (num_classes, in_chans)."""
    if checkpoint:
        return _from_file(name, kwargs, Path(checkpoint))
    if not pretrained:
        return create_model(name, **kwargs), Adapted()
    try:
        model = create_model(name, pretrained=True, **kwargs)
    except MpqfxError:
        raise
    except Exception as exc:  # hub/network errors come in many types
        raise MpqfxError(f"--pretrained: cannot fetch timm's pretrained weights for {name!r} ({type(exc).__name__}: "
                         f"{' '.join(str(exc).split())[:160]}); offline, download them elsewhere and pass the file "
                         "with --checkpoint PATH") from None
    cfg = model.pretrained_cfg
    return model, _adapted(cfg.get("num_classes"), (cfg.get("input_size") or (3,))[0], kwargs)


def _adapted(classes: int | None, channels: int, kwargs: dict) -> Adapted:
    """What fitting weights of ``classes`` outputs and ``channels`` inputs to ``kwargs`` changes."""
    want_classes, want_channels = kwargs.get("num_classes", 1000), kwargs.get("in_chans", 3)
    return Adapted(None if classes == want_classes else (classes or 0, want_classes),
                   None if channels == want_channels else (channels, want_channels))


def _from_file(name: str, kwargs: dict, path: Path) -> tuple[nn.Module, Adapted]:
    """Load ``path`` through timm (``pretrained_cfg_overlay=dict(file=...)``): timm reads state dicts,
    safetensors and training checkpoints (``state_dict``/``model`` keys, EMA weights first, ``module.`` prefixes),
    drops a classifier of another size and adapts the first conv to ``in_chans``. Any other
    difference from the architecture is an error naming the first keys that differ."""
    from timm.models import load_state_dict

    if not path.is_file():
        raise MpqfxError(f"--checkpoint: no file at {str(path)!r}")
    try:
        state = load_state_dict(str(path))
    except Exception as exc:  # torch.load(weights_only=True) also refuses objects besides tensors (and argparse's)
        raise MpqfxError(f"--checkpoint: {str(path)!r} is corrupt or not a weights file ({type(exc).__name__}); "
                         "expected a state dict saved with torch.save, a .safetensors file, or a training checkpoint "
                         "holding only tensors and plain values") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise MpqfxError(f"--checkpoint: {str(path)!r} holds no state dict (a mapping of names to tensors)")
    fresh = create_model(name, **kwargs)
    cfg = fresh.pretrained_cfg
    heads = _names(cfg.get("classifier"))
    first = _names(cfg.get("first_conv"))
    head_weight = state.get(f"{heads[0]}.weight") if heads else None
    classes = int(head_weight.shape[0]) if head_weight is not None else 0
    first_weight = state.get(f"{first[0]}.weight") if first else None
    channels = int(first_weight.shape[1]) if first_weight is not None and first_weight.ndim == 4 else None
    problem = _misfit(state, fresh.state_dict(), heads, first)
    if problem:
        raise MpqfxError(f"--checkpoint: {str(path)!r} does not fit {name}: {problem}")
    # the overlay's num_classes is the file's, so timm keeps a classifier that fits and drops one that does not
    overlay = dict(file=str(path), num_classes=classes)
    try:
        model = create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
    except (RuntimeError, KeyError, ValueError) as exc:  # e.g. an input conv timm cannot adapt
        raise MpqfxError(f"--checkpoint: timm cannot load {str(path)!r} into {name}: "
                         f"{' '.join(str(exc).split())[:200]}") from None
    return model, _adapted(classes, channels if channels is not None else kwargs.get("in_chans", 3), kwargs)


def _names(value: Any) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value or ())


def _misfit(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], heads: tuple[str, ...],
            first: tuple[str, ...]) -> str | None:
    """How ``state`` differs from the model's ``expected`` state, leaving out what timm's loader
    adapts: the classifier and the input channels of the first conv."""
    skip = {f"{h}.{p}" for h in heads for p in ("weight", "bias")}
    adapted = {f"{c}.weight" for c in first}

    def shapes(sd: dict[str, torch.Tensor]) -> dict[str, list[int]]:
        found = {k: v for k, v in fingerprint(sd).items() if k not in skip}
        return {k: v[:1] + v[2:] if k in adapted and len(v) == 4 else v for k, v in found.items()}

    return mismatch(shapes(expected), shapes(state), "keys")


def warm_start_record(source: str, adapted: Adapted, recipe: Recipe, checkpoint: str | Path | None) -> dict[str, Any]:
    """What the warm start does, kept in run.json and shown in the report: the weights' source,
    what timm adapted, and the float epochs that train (or fine-tune, after an adaptation) them."""
    epochs = recipe.warm_start.epochs if source == "train" or adapted else 0
    origin = {"train": "random weights", "pretrained": "timm's pretrained weights",
              "module": "the given module's weights", "checkpoint": f"weights from {checkpoint}"}[source]
    parts = [origin]
    if adapted.classes:
        parts.append(f"classifier re-initialised: {adapted.classes[0] or 'none'} -> {adapted.classes[1]} classes")
    if adapted.channels:
        parts.append(f"input conv adapted: {adapted.channels[0]} -> {adapted.channels[1]} channels")
    done = "trained" if source == "train" else "fine-tuned"
    if epochs:
        parts.append(f"{done} {epochs} float epoch{'s' if epochs > 1 else ''}")
    elif source == "train" or adapted:
        parts.append(f"not {done} (warm_start.epochs is 0)")
    else:
        parts.append("used as they are")
    return {"source": source, "classes": list(adapted.classes) if adapted.classes else None,
            "channels": list(adapted.channels) if adapted.channels else None, "float_epochs": epochs,
            "note": "; ".join(parts)}


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


def float_recipe(recipe: Recipe) -> Recipe:
    """The recipe of the float phase: strategy ``float``, the warm-start epochs and learning rate,
    no distillation and no quantizer optimizer."""
    train = dataclasses.replace(recipe.train, epochs=recipe.warm_start.epochs, lr=recipe.warm_start.lr,
                                quant_lr=0.0, warmup_epochs=0, max_steps=None,
                                distill=dataclasses.replace(recipe.train.distill, inplace=False, teacher=False,
                                                            ce_weight=1.0, kl_weight=0.0))
    return dataclasses.replace(recipe, strategy=StrategySpec("float"), train=train).check()
