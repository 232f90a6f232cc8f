"""mpqfx: mixed-precision quantization supernets for timm models, trained once, searched for any budget.

Example:
    >>> import mpqfx, timm, torch
    >>> net = mpqfx.prepare(timm.create_model("resnet18"))
    >>> net.set_policy(mpqfx.Policy.uniform(net, 4))
    >>> mpqfx.bitops(net, net.policy).total

The names below are imported on first use, so that ``import mpqfx`` (and the command line's
``--help``, ``recipes`` and ``validate``) does not import torch, timm or the pipeline.
"""

from __future__ import annotations

import sys
import types
from typing import TYPE_CHECKING, Any

from mpqfx.errors import MpqfxError, PolicyError, RecipeError, UnknownModelError, UntraceableModelError
from mpqfx.lazy import lazy_attributes

if TYPE_CHECKING:
    from mpqfx.compress import CompressResult, compress
    from mpqfx.cost.report import CostReport, bitops, model_size
    from mpqfx.graph.layer_info import LayerInfo, LayerKind, Role, SkippedLayer
    from mpqfx.prepare import prepare
    from mpqfx.quant.layers import LayerBits
    from mpqfx.quant.policy import Policy
    from mpqfx.recipe import Recipe
    from mpqfx.search import Constraints, SearchResult
    from mpqfx.search.run import search, search_many
    from mpqfx.supernet import Supernet

__version__ = "0.1.0"

_LAZY = {
    "prepare": "mpqfx.prepare", "search": "mpqfx.search.run", "search_many": "mpqfx.search.run",
    "compress": "mpqfx.compress.pipeline", "CompressResult": "mpqfx.compress.pipeline",
    "bitops": "mpqfx.cost.report", "model_size": "mpqfx.cost.report", "CostReport": "mpqfx.cost.report",
    "Policy": "mpqfx.quant.policy", "Recipe": "mpqfx.recipe", "Supernet": "mpqfx.supernet",
    "LayerInfo": "mpqfx.graph.layer_info", "LayerKind": "mpqfx.graph.layer_info", "Role": "mpqfx.graph.layer_info",
    "SkippedLayer": "mpqfx.graph.layer_info", "LayerBits": "mpqfx.quant.layers",
    "Constraints": "mpqfx.search.constraints", "SearchResult": "mpqfx.search.backend",
}

__all__ = [
    "prepare", "search", "search_many", "compress", "CompressResult", "bitops", "model_size", "Policy", "Recipe", "Supernet", "LayerInfo", "LayerBits",
    "LayerKind", "Role", "SkippedLayer", "CostReport", "Constraints", "SearchResult", "MpqfxError", "RecipeError", "PolicyError",
    "UnknownModelError", "UntraceableModelError",
]

__getattr__ = lazy_attributes(__name__, _LAZY)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


class _Package(types.ModuleType):
    """``mpqfx.prepare``, ``mpqfx.search`` and ``mpqfx.compress`` are functions although submodules
    share their names: the import system sets a parent's attribute when it first loads a submodule,
    which must not replace the function."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in ("prepare", "search", "compress") and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
