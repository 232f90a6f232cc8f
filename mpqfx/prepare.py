"""``mpqfx.prepare``: trace -> annotate -> rewrite, from a timm model to a Supernet."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import torch
from torch import nn

from mpqfx.errors import MpqfxError
from mpqfx.graph.annotate import annotate
from mpqfx.graph.layer_graph import build_layer_graph
from mpqfx.graph.rewrite import rewrite
from mpqfx.graph.tracer import trace
from mpqfx.models import create_model
from mpqfx.recipe import DEFAULT_RECIPE, Recipe
from mpqfx.supernet import ModelSpec, Supernet

MIN_COVERAGE = 0.99


def default_example_input(model: nn.Module, recipe: Recipe) -> torch.Tensor:
    """A seeded random batch of one, shaped by the recipe's ``graph.input_size`` or timm's pretrained_cfg.

    The channel count follows the model's first conv, so ``in_chans=1`` models get 1 channel.
    """
    size = recipe.graph.input_size
    if size is None:
        cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
        if "input_size" not in cfg:
            raise MpqfxError(f"cannot tell the input size of {type(model).__name__}: pass example_input= "
                             "or set graph.input_size: [C, H, W] in the recipe")
        size = tuple(cfg["input_size"])
        first_conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
        if first_conv is not None:
            size = (first_conv.in_channels, *size[1:])
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    return torch.randn(1, *size, generator=torch.Generator().manual_seed(0)).to(device)


def prepare(model: nn.Module | str, recipe: Recipe | str | Path = DEFAULT_RECIPE,
            example_input: torch.Tensor | None = None, inplace: bool = False,
            model_spec: ModelSpec | None = None) -> Supernet:
    """Turn a timm model (or any traceable ``nn.Module``) into a weight-shared mixed-precision supernet.

    Every conv/linear call site becomes a multi-bit layer (one latent weight, one LSQ step per
    candidate bit for weights and for its input): ``nn.Conv1d/2d/3d``, ``nn.Linear``, timm's
    ``Conv2dSame`` and weight-standardized convs (their standardized weight is quantized), and
    ``F.linear``/``F.conv*`` calls on such a module's weight (the call's bias kept). Defaulted
    forward arguments are traced at their defaults unless ``graph.traced_args`` names them;
    weights left in float are listed in ``Supernet.skipped``. BatchNorms after quantized convs
    become Transitional BatchNorms (recipe ``quant.bn``), and each layer's allowed bit-widths
    follow the recipe (first/last fixed, depthwise without 2 bits, overrides by name pattern).
    The supernet starts in bypass mode, where it computes exactly what ``model`` computes.

    Args:
        model: an ``nn.Module`` or a timm model name (created with ``pretrained=False``).
        recipe: a :class:`Recipe`, the name of a shipped recipe, or a path to a YAML file; default ``oneshot``
            (``compress`` trains with ``quickstart`` unless told).
        example_input: a batch used to read shapes, MACs and calibration data; default: one
            seeded random image of the size in the recipe or the model's timm ``pretrained_cfg``.
        inplace: reuse ``model``'s modules and parameters instead of a deep copy; ``model``
            must not be used on its own afterwards.
        model_spec: the timm name and kwargs that re-create ``model`` (recorded automatically when
            ``model`` is a name); needed to save the supernet to a file and load it elsewhere.

    Example:
        >>> import mpqfx, timm, torch
        >>> net = mpqfx.prepare(timm.create_model("resnet18"))
        >>> net.set_policy(mpqfx.Policy.uniform(net, 4))
        >>> mpqfx.bitops(net, net.policy).total / 1e9   # first/last layers at 8 bits
        34.71...
    """
    recipe = Recipe.load(recipe).check()
    if isinstance(model, str):
        model_spec = ModelSpec(model)
        model = create_model(model)
    elif not inplace:
        model = copy.deepcopy(model)
    if example_input is None:
        example_input = default_example_input(model, recipe)
    was_training = model.training
    gm = trace(model, recipe.graph.leaf_modules, recipe.graph.traced_args)
    found = annotate(gm, example_input, recipe.quant)
    if not found.layers:
        reasons = "; ".join(f"{s.name}: {s.reason}" for s in found.skipped[:3]) or "it has none"
        raise MpqfxError(f"{type(model).__name__} has no conv/linear layer mpqfx can quantize ({reasons})")
    layer_graph = build_layer_graph(gm, found.layers)
    float_params = sum(p.numel() for p in gm.parameters()) - sum(l.params for l in found.layers)
    rewrite(gm, found.layers, found.sites, found.functional, layer_graph, recipe.quant)
    net = Supernet(gm, found.layers, found.skipped, layer_graph, recipe, example_input, float_params, model_spec)
    net.train(was_training)
    if net.coverage() < MIN_COVERAGE:
        warnings.warn(f"{type(model).__name__}: only {net.coverage():.1%} of conv/linear weights are quantized; "
                      + net.describe(), stacklevel=2)
    return net
