"""Recipe variants for the benchmarks: a recipe with dotted keys replaced, and the float
starting point of an earlier run prepared for such a variant."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

import mpqfx
from mpqfx.compress.warm_start import float_recipe
from mpqfx.data.spec import DataSpec
from mpqfx.models import create_model
from mpqfx.recipe import Recipe
from mpqfx.store import load_supernet
from mpqfx.supernet import ModelSpec


def variant_recipe(base: Recipe, overrides: dict) -> Recipe:
    """``base`` with dotted keys replaced (``strategy.X`` reaches the strategy's options).
    ``strategy=float`` trains the float model on instead, with the variant's epochs and learning
    rate and the float phase's other settings (no quantizers, no distillation)."""
    if overrides.get("strategy") == "float":
        rest = variant_recipe(base, {k: v for k, v in overrides.items() if k != "strategy"})
        return float_recipe(dataclasses.replace(
            rest, warm_start=dataclasses.replace(rest.warm_start, epochs=rest.train.epochs, lr=rest.train.lr)))
    data = base.to_dict()
    for key, value in overrides.items():
        *path, leaf = key.replace("strategy.", "strategy.options.", 1).split(".")
        node = data
        for part in path:
            node = node[part]
        node[leaf] = value
    return Recipe.from_dict(data, f"variant {overrides}")


def float_start(float_weights: Path, recipe: Recipe, name: str, kwargs: dict, spec: DataSpec) -> mpqfx.Supernet:
    """The float weights of an earlier run with freshly fitted quantizers, prepared again when
    ``recipe`` changes the supernet's shape (bit-widths, BatchNorm sets, quantizers)."""
    net, _ = load_supernet(float_weights)
    if recipe.quant == net.recipe.quant:
        net.refit_quantizers()
        return net
    model = create_model(name, **kwargs)
    model.load_state_dict(float_state_dict(net, model))
    return mpqfx.prepare(model, recipe, example_input=torch.randn(1, *spec.input_size(model)),
                         model_spec=ModelSpec(name, kwargs))


def float_state_dict(net: mpqfx.Supernet, model: torch.nn.Module) -> dict:
    """``model``'s state dict filled from the supernet: convs/linears share names, BatchNorms are the ``fp`` sets."""
    source = {k.removeprefix("graph_module.").replace(".sets.fp.", "."): v for k, v in net.state_dict().items()}
    return {k: source[k] for k in model.state_dict()}
