"""Symbolic tracing of timm models with torch.fx.

Leaves: conv/linear layers (so that each call site stays one ``call_module`` node), timm's
registered no-trace modules, and modules named in the recipe's ``graph.leaf_modules``
(qualified-name patterns or class names). timm's no-trace functions are autowrapped.

The root forward's arguments after the input that have defaults (``forward(x, mask=None)``,
``pre_logits=False``) are pinned to their defaults with torch.fx's ``concrete_args``: traced as
inputs, a branch on them would follow the Proxy (Hiera's ``if mask is None`` takes the masked
path and drops the head). The recipe's ``graph.traced_args`` keeps named ones as graph inputs.
"""

from __future__ import annotations

import fnmatch
import inspect
from typing import Any, Callable, Sequence

import torch.fx as fx
from timm.layers import get_notrace_functions, get_notrace_modules
from torch import nn

from mpqfx.errors import RecipeError, UntraceableModelError
from mpqfx.graph.layer_info import MODULE_TYPES
from mpqfx.graph.rewrite import set_submodule

QUANTIZABLE_BASES = (nn.modules.conv._ConvNd, nn.Linear)


def is_leaf_by_recipe(module: nn.Module, qualname: str, patterns: Sequence[str]) -> bool:
    cls_name = type(module).__name__
    return any(p == cls_name or fnmatch.fnmatchcase(qualname, p) for p in patterns)


class MpqfxTracer(fx.Tracer):
    """A ``torch.fx.Tracer`` that knows timm's leaves and records where tracing failed."""

    def __init__(self, leaf_modules: Sequence[str] = ()):
        super().__init__(autowrap_functions=tuple(get_notrace_functions()))
        self.timm_leaves = tuple(get_notrace_modules())
        self.leaf_patterns = tuple(leaf_modules)
        self.failed_in: tuple[str, str] | None = None  # (qualified name, class name) of the innermost failing module

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, QUANTIZABLE_BASES) or isinstance(m, self.timm_leaves):
            return True
        if is_leaf_by_recipe(m, module_qualified_name, self.leaf_patterns):
            return True
        return super().is_leaf_module(m, module_qualified_name)

    def call_module(self, m: nn.Module, forward: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_in is None:
                self.failed_in = (self.path_of_module(m), type(m).__name__)
            raise


def pinned_args(model: nn.Module, traced_args: Sequence[str] = ()) -> dict[str, Any]:
    """``concrete_args`` for ``model.forward``: every defaulted argument after the first, at its
    default, except those named in ``traced_args`` (which must be forward arguments)."""
    params = list(inspect.signature(model.forward).parameters.values())
    named = {p.name for p in params}
    unknown = [a for a in traced_args if a not in named]
    if unknown:
        raise RecipeError([f"graph.traced_args: {unknown} are not arguments of {type(model).__name__}.forward "
                           f"(it takes {[p.name for p in params]})"])
    return {p.name: p.default for p in params[1:]
            if p.default is not inspect.Parameter.empty and p.name not in traced_args
            and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def trace(model: nn.Module, leaf_modules: Sequence[str] = (), traced_args: Sequence[str] = ()) -> fx.GraphModule:
    """Trace ``model`` into a GraphModule (defaulted forward arguments pinned, see the module
    docstring); raise UntraceableModelError naming the failing module."""
    tracer = MpqfxTracer(leaf_modules)
    concrete_args = pinned_args(model, traced_args)
    try:
        graph = tracer.trace(model, concrete_args=concrete_args or None)
    except Exception as exc:
        reason = " ".join(str(exc).split())[:300] or type(exc).__name__
        model_name = type(model).__name__
        if tracer.failed_in is None or tracer.failed_in[0] == "":
            raise UntraceableModelError(
                f"cannot trace {model_name}.forward itself ({type(exc).__name__}: {reason}); "
                "graph.leaf_modules cannot help for the root module: move the dynamic part into a "
                "submodule and name that submodule in the recipe's graph.leaf_modules") from exc
        where, cls_name = tracer.failed_in
        raise UntraceableModelError(
            f"cannot trace module {where!r} ({cls_name}) of {model_name}: {type(exc).__name__}: {reason}. "
            f"Keep it opaque by adding it to the recipe's graph.leaf_modules, e.g. "
            f"leaf_modules: [{where!r}] or [{cls_name!r}]") from exc
    gm = fx.GraphModule(tracer.root, graph, class_name=type(model).__name__)
    _keep_weight_owners(gm, model)
    gm.meta[MODULE_TYPES] = {name: type(m).__name__ for name, m in model.named_modules()}
    return gm


def _keep_weight_owners(gm: fx.GraphModule, model: nn.Module) -> None:
    """A parameter read with ``get_attr`` (``F.linear(x, self.qkv.weight)``) is copied into the
    GraphModule under an empty ``nn.Module``; put the conv/linear module that owns it back, so
    that its type and hyper-parameters are known."""
    for node in gm.graph.find_nodes(op="get_attr"):
        owner, _, _ = str(node.target).rpartition(".")
        original = model.get_submodule(owner) if owner else None
        if isinstance(original, QUANTIZABLE_BASES) and gm.get_submodule(owner) is not original:
            set_submodule(gm, owner, original)
