"""mpqfx: mixed-precision quantization supernets for timm models, trained once, searched for any budget.

Example:
    >>> import mpqfx, timm, torch
    >>> net = mpqfx.prepare(timm.create_model("resnet18"))
    >>> net.set_policy(mpqfx.Policy.uniform(net, 4))
    >>> mpqfx.bitops(net, net.policy).total
"""

from mpqfx.compress import CompressResult, compress
from mpqfx.cost.report import CostReport, bitops, model_size
from mpqfx.errors import MpqfxError, PolicyError, RecipeError, UnknownModelError, UntraceableModelError
from mpqfx.graph.layer_info import LayerInfo, LayerKind, Role, SkippedLayer
from mpqfx.prepare import prepare
from mpqfx.quant.layers import LayerBits
from mpqfx.quant.policy import Policy
from mpqfx.recipe import Recipe
from mpqfx.search import Constraints, SearchResult
from mpqfx.search.run import search, search_many  # the function shadows the subpackage's name on purpose
from mpqfx.supernet import Supernet

__version__ = "0.1.0"

__all__ = [
    "prepare", "search", "search_many", "compress", "CompressResult", "bitops", "model_size", "Policy", "Recipe", "Supernet", "LayerInfo", "LayerBits",
    "LayerKind", "Role", "SkippedLayer", "CostReport", "Constraints", "SearchResult", "MpqfxError", "RecipeError", "PolicyError",
    "UnknownModelError", "UntraceableModelError",
]
