"""The annotate pass's one example forward: an ``fx.Interpreter`` run of the traced model, instrumented.

It records, for every conv/linear layer (module call sites, functional call sites, layers
inside untraced leaf modules), shapes, MACs, calls, execution order and the smallest input
value. A TorchDispatchMode watches the convolutions and matrix products (``aten.convolution``,
``mm``, ``addmm``, ``bmm``, ``baddbmm``) that run outside those layers: a parameter (or a view
of it) that is an operand of one is a conv/linear weight left in float, wherever it is used
(a conv subclass with its own forward, a functional call, a leaf module with weights of its
own such as CondConv's experts). Its MACs are the FLOPs of torch.utils.flop_counter's formulas
/ 2, plus the convolutions its module runs with computed weights (CondConv mixes its experts
into a per-sample weight). Parameters used otherwise (position embeddings, attention bias
tables, layer scales) are not conv/linear weights.

A failing node raises UntraceableModelError naming the op, its module and the recipe key that
works around it.
"""

from __future__ import annotations

import math
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

import torch
import torch.fx as fx
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import flop_registry

from mpqfx.errors import MpqfxError, UntraceableModelError
from mpqfx.graph.functional import SIGNATURES

aten = torch.ops.aten
# the matrix operands (not the bias) of the ops that multiply by a weight
MATRIX_OPERANDS = {aten.convolution.default: slice(0, 2), aten.mm.default: slice(0, 2), aten.bmm.default: slice(0, 2),
                   aten.addmm.default: slice(1, 3), aten.baddbmm.default: slice(1, 3)}


def weight_macs(weight_shape: torch.Size | tuple[int, ...], out: torch.Tensor) -> int:
    """MACs of one conv/linear call for one sample: output elements x (in/groups x kernel) or x in_features."""
    return out[0].numel() * math.prod(weight_shape[1:])


@dataclass
class Observed:
    """One layer over the example forward (shapes of the first call, per sample)."""

    order: int
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    macs: int = 0
    calls: int = 0
    input_min: float = float("inf")


@dataclass
class FloatUse:
    """A parameter used as a conv/linear weight outside the quantized layers."""

    macs: int = 0
    ops: set[str] = field(default_factory=set)


@dataclass
class ExampleRun:
    layers: dict[str, Observed]  # layer name -> what its calls saw
    float_uses: dict[str, FloatUse]  # parameter qualified name -> its float conv/matmul use


class _WeightUses(TorchDispatchMode):
    """The conv/matmul ops that run outside the layers: by parameter operand, and by module."""

    def __init__(self, params: Mapping[int, str], batch: int):
        super().__init__()
        self.params = params  # storage address -> parameter name
        self.batch = batch
        self.stack: list[str] = []  # names of the modules whose forward is running (innermost last)
        self.in_layer = 0  # > 0 while a quantized layer runs: its ops are its own
        self.uses: dict[str, FloatUse] = defaultdict(FloatUse)
        self.module_params: dict[str, set[str]] = defaultdict(set)  # module -> parameters it used as weights
        self.computed: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))  # module -> op -> MACs

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 - the dispatch protocol
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func in MATRIX_OPERANDS and not self.in_layer:
            macs = flop_registry[func.overloadpacket](*args, **kwargs, out_val=out) // 2 // self.batch
            used = sorted({self.params.get(_address(a)) for a in args[MATRIX_OPERANDS[func]]} - {None})
            module = self.stack[-1] if self.stack else None
            if used:
                self.uses[used[0]].macs += macs
                self.uses[used[0]].ops.add(func.overloadpacket.__name__)
                if module is not None:
                    self.module_params[module].update(used)
            elif module is not None:
                self.computed[module][func.overloadpacket.__name__] += macs
        return out

    def finish(self, float_modules: set[str]) -> dict[str, FloatUse]:
        """Add the ops with computed weights: every one a float conv/linear module runs, and the
        convolutions a module runs that uses parameters as weights too (CondConv); not the
        attention products of modules without weights."""
        for module, ops in self.computed.items():
            if module in float_modules:
                param, counted = f"{module}.weight", ops
            elif self.module_params.get(module):
                param, counted = sorted(self.module_params[module])[0], {"convolution": ops.get("convolution", 0)}
            else:
                continue
            for op, macs in counted.items():
                if macs:
                    self.uses[param].macs += macs
                    self.uses[param].ops.add(op)
        return dict(self.uses)


def _address(t: Any) -> int | None:
    if not isinstance(t, torch.Tensor) or t.is_meta or t.layout is not torch.strided:
        return None
    return t.untyped_storage().data_ptr()


class _Run(fx.Interpreter):
    """Runs the graph, records the functional layer call sites and names the node that fails."""

    def __init__(self, gm: fx.GraphModule, sites: Mapping[fx.Node, str], record, uses: _WeightUses,  # noqa: ANN001
                 input_shape: tuple[int, ...]):
        super().__init__(gm)
        self.extra_traceback = False  # the error names the node itself, in one line
        self.sites, self.record, self.uses, self.input_shape = sites, record, uses, input_shape

    def run_node(self, n: fx.Node) -> Any:
        layer = self.sites.get(n)
        self.uses.in_layer += layer is not None
        try:
            result = super().run_node(n)
        except MpqfxError:
            raise
        except Exception as exc:
            raise _untraceable(self.module, n, exc, self.input_shape) from exc
        finally:
            self.uses.in_layer -= layer is not None
        if layer is not None:
            args, kwargs = self.fetch_args_kwargs_from_env(n)
            bound = SIGNATURES[n.target].bind(*args, **kwargs).arguments
            self.record(layer, bound["input"], result, bound["weight"].shape)
        return result


def _untraceable(gm: fx.GraphModule, n: fx.Node, exc: BaseException, shape: tuple[int, ...]) -> UntraceableModelError:
    op = n.target if n.op == "call_module" else getattr(n.target, "__name__", str(n.target))
    reason = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
    stack = list((n.meta.get("nn_module_stack") or {}).values())
    where, cls = (n.target, type(gm.get_submodule(n.target)).__name__) if n.op == "call_module" else (
        stack[-1][0], stack[-1][1].__name__) if stack else ("", "")
    site = f"in module {where!r} ({cls}) of {gm.__class__.__name__}" if where else f"of {gm.__class__.__name__}.forward"
    message = (f"cannot run {op} ({n.op}) {site} on the example input {list(shape)}: {reason}. "
               "Check the input size (graph.input_size, or example_input=)")
    if not where:
        return UntraceableModelError(message + " and the forward arguments traced as inputs (graph.traced_args)")
    return UntraceableModelError(message + f"; if it is right, keep the module opaque with the recipe's "
                                           f"graph.leaf_modules, e.g. leaf_modules: [{where!r}] or [{cls!r}]")


@contextmanager
def _module_stack(names: Mapping[int, str], uses: _WeightUses, layers: set[str], record) -> Iterator[None]:  # noqa: ANN001
    """Global forward hooks (removed on exit): keep ``uses.stack`` and record the layers' calls."""
    def pre(module, args):  # noqa: ANN001
        name = names.get(id(module))
        if name:
            uses.stack.append(name)
            uses.in_layer += name in layers

    def post(module, args, out):  # noqa: ANN001
        name = names.get(id(module))
        if name:
            uses.stack.pop()
            uses.in_layer -= name in layers
            if name in layers:
                record(name, args[0], out, module.weight.shape)

    handles = [torch.nn.modules.module.register_module_forward_pre_hook(pre),
               torch.nn.modules.module.register_module_forward_hook(post)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def run_example(gm: fx.GraphModule, layers: set[str], sites: Mapping[fx.Node, str],
                float_modules: set[str], example_input: torch.Tensor) -> ExampleRun:
    """One eval-mode, no-grad run of ``gm`` that observes the layer modules ``layers``, the
    functional layer call sites ``sites`` (node -> layer name) and the conv/linear modules left
    in float ``float_modules`` (all their conv/matmul ops count as their cost)."""
    observed: dict[str, Observed] = {}

    def record(name: str, x: torch.Tensor, out: torch.Tensor, weight_shape: torch.Size) -> None:
        rec = observed.get(name)
        if rec is None:
            rec = observed[name] = Observed(len(observed), tuple(x.shape[1:]), tuple(out.shape[1:]))
        rec.calls += 1
        rec.macs += weight_macs(weight_shape, out)
        rec.input_min = min(rec.input_min, float(x.detach().min()))

    params = {_address(p): name for name, p in gm.named_parameters() if p.numel()}
    names = {id(m): name for name, m in gm.named_modules() if name}
    uses = _WeightUses(params, example_input.shape[0])
    was_training = gm.training
    try:
        gm.eval()
        with torch.no_grad(), _module_stack(names, uses, layers, record), uses:
            _Run(gm, sites, record, uses, tuple(example_input.shape)).run(example_input)
    finally:
        gm.train(was_training)
    return ExampleRun(observed, uses.finish(float_modules))
