"""Property-based tests of ``mpqfx.prepare`` over random small conv nets (issue "Reliability", "Fuzzing").

A grammar builds tiny models: a stem conv, then blocks (conv+BN+ReLU, depthwise+BN+ReLU6, 1x1
conv+BN, residual adds, two-branch blocks joined by cat or add, stride-2 convs, pooling, a conv
shared by two call sites, a per-pixel Linear over channels, grouped / dilated / reflect-padded
convs), then global pooling and one or two Linear layers. Some models carry Python control flow
on tensor values that torch.fx cannot trace.

Property: ``prepare`` either succeeds, and then the bypass supernet computes exactly what the
float model computes and ``bitops`` equals MACs counted here with forward hooks on the original
model times the bits the recipe's rules give each layer; or it raises ``UntraceableModelError``,
exactly for the models with untraceable control flow outside a recipe leaf module.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
import os
import warnings
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, currently_in_test_context, event, given, settings
from hypothesis import strategies as st
from torch import nn

import mpqfx
from mpqfx import Policy, Recipe, UntraceableModelError
from mpqfx.recipe import GraphConfig

SCALE = int(os.environ.get("MPQFX_FUZZ_SCALE", "1"))  # as in test_recipe_policy_fuzz.py
SETTINGS = dict(deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow,
                                                                       HealthCheck.data_too_large])
RECIPE = Recipe.load("default")
FIRST_LAST_BITS = 8
DEPTHWISE_W_BITS = (3, 4, 5, 6)  # the default recipe's {2..6} without depthwise_exclude's 2
DYNAMIC_KINDS = ("if", "item", "range", "int")


# -- the grammar -------------------------------------------------------------------------------
def conv(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, bias: bool = False, dilation: int = 1,
         padding_mode: str = "zeros", same: bool = False) -> nn.Conv2d:
    padding: Any = "same" if same else dilation * (k // 2)
    return nn.Conv2d(cin, cout, k, stride, padding, dilation=dilation, groups=groups, bias=bias,
                     padding_mode=padding_mode)


class ConvBnAct(nn.Module):
    """conv -> BN -> optional activation (as a module, a function or an in-place module)."""

    def __init__(self, c: nn.Conv2d, act: str):
        super().__init__()
        self.conv = c
        self.bn = nn.BatchNorm2d(c.out_channels)
        self.act_name = act
        self.act = {"relu": nn.ReLU(), "relu_inplace": nn.ReLU(inplace=True), "relu6": nn.ReLU6(),
                    "hardswish": nn.Hardswish()}.get(act, nn.Identity())

    def forward(self, x):
        x = self.bn(self.conv(x))
        if self.act_name == "functional_relu":
            return F.relu(x)
        if self.act_name == "torch_relu6":
            return torch.clamp(x, 0, 6)
        return self.act(x)


class Residual(nn.Module):
    """x + f(x), written as ``+``, ``torch.add`` or ``Tensor.add``."""

    def __init__(self, body: nn.Module, style: str, post_relu: bool):
        super().__init__()
        self.body, self.style, self.post_relu = body, style, post_relu

    def forward(self, x):
        y = self.body(x)
        out = x + y if self.style == "plus" else torch.add(y, x) if self.style == "torch" else x.add(y)
        return torch.relu(out) if self.post_relu else out


class TwoBranch(nn.Module):
    """Two parallel branches joined by torch.cat over channels or by an add, optionally followed by BN."""

    def __init__(self, a: nn.Module, b: nn.Module, mode: str, out_channels: int, post_bn: bool):
        super().__init__()
        self.a, self.b, self.mode = a, b, mode
        self.post = nn.BatchNorm2d(out_channels) if post_bn else nn.Identity()

    def forward(self, x):
        ya, yb = self.a(x), self.b(x)
        return self.post(torch.cat([ya, yb], dim=1) if self.mode == "cat" else ya + yb)


class Shared(nn.Module):
    """One conv module called at two sites: one layer whose MACs add up over both calls."""

    def __init__(self, c: nn.Conv2d):
        super().__init__()
        self.conv = c

    def forward(self, x):
        return self.conv(F.relu(self.conv(x)))


class TokenLinear(nn.Module):
    """A Linear over the channels of every pixel (channels-last), as in ConvNeXt's MLPs."""

    def __init__(self, cin: int, cout: int, bias: bool):
        super().__init__()
        self.fc = nn.Linear(cin, cout, bias=bias)

    def forward(self, x):
        return self.fc(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class Dynamic(nn.Module):
    """A block whose forward branches or loops on tensor values: torch.fx cannot trace it."""

    def __init__(self, c: nn.Conv2d, kind: str):
        super().__init__()
        self.conv, self.kind = c, kind

    def forward(self, x):
        if self.kind == "if":
            if x.sum() > 0:
                return self.conv(x)
            return x
        if self.kind == "item":
            return self.conv(x) if x.mean().item() > -1e9 else x
        if self.kind == "range":
            for _ in range(x.shape[1] // x.shape[1]):
                x = self.conv(x)
            return x
        scale = int(x.abs().max() > -1)  # "int": a Python int from a tensor value
        return self.conv(x) * scale


class Head(nn.Module):
    def __init__(self, cin: int, pool: str, flatten: str, hidden: int | None, classes: int, bias: bool):
        super().__init__()
        self.pool_kind, self.flatten_kind = pool, flatten
        self.pool = nn.AdaptiveAvgPool2d(1)
        if hidden is None:
            self.fc = nn.Linear(cin, classes, bias=bias)
        else:
            self.fc = nn.Sequential(nn.Linear(cin, hidden, bias=bias), nn.ReLU(), nn.Dropout(0.1),
                                    nn.Linear(hidden, classes))

    def forward(self, x):
        if self.pool_kind == "adaptive":
            x = self.pool(x)
        elif self.pool_kind == "mean":
            x = x.mean((2, 3), keepdim=True)
        else:
            x = torch.amax(x, dim=(2, 3), keepdim=True)
        if self.flatten_kind == "flatten":
            x = torch.flatten(x, 1)
        elif self.flatten_kind == "view":
            x = x.view(x.size(0), -1)
        else:
            x = x.reshape(x.shape[0], -1)
        return self.fc(x)


class FuzzNet(nn.Module):
    def __init__(self, stem: nn.Module, blocks: list[nn.Module], head: nn.Module, dynamic_root: bool):
        super().__init__()
        self.stem, self.blocks, self.head = stem, nn.ModuleList(blocks), head
        self.dynamic_root = dynamic_root

    def forward(self, x):
        x = self.stem(x)
        if self.dynamic_root and x.mean() > 0:  # Python control flow in the root's own forward
            x = -x
        for block in self.blocks:
            x = block(x)
        return self.head(x)


class Case:
    def __init__(self, model: FuzzNet, x: torch.Tensor, recipe: Recipe, untraceable: bool, spec: list):
        self.model, self.x, self.recipe = model, x, recipe
        self.untraceable = untraceable  # prepare must raise UntraceableModelError
        self.spec = spec  # the drawn block descriptions, for hypothesis' failure report

    def __repr__(self) -> str:
        return (f"Case(input={tuple(self.x.shape)}, untraceable={self.untraceable}, "
                f"leaf_modules={self.recipe.graph.leaf_modules}, spec={self.spec})")


def _randomize(model: nn.Module, seed: int) -> None:
    """Seeded weights and non-trivial BatchNorm statistics, kept at a moderate scale."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) / math.sqrt(fan_in))
                if m.bias is not None:
                    m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
            elif isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(1 + 0.2 * torch.randn(n, generator=g))
                m.bias.copy_(0.1 * torch.randn(n, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(n, generator=g))
                m.running_var.copy_(0.5 + torch.rand(n, generator=g))


@st.composite
def cases(draw) -> Case:
    spec: list = []
    in_chans = draw(st.sampled_from([3, 3, 1]))
    size = h = draw(st.integers(8, 16))
    c = draw(st.integers(2, 8))
    stem_k, stem_s = draw(st.sampled_from([1, 3, 5])), draw(st.sampled_from([1, 1, 2]))
    stem_bias = draw(st.booleans())
    stem = ConvBnAct(conv(in_chans, c, stem_k, stem_s, bias=stem_bias), "relu")
    spec.append(("stem", in_chans, c, stem_k, stem_s, stem_bias))
    h = (h - 1) // stem_s + 1

    def act():
        return draw(st.sampled_from(["relu", "relu", "relu_inplace", "functional_relu", "relu6", "torch_relu6",
                                     "hardswish", "none"]))

    def same_shape_conv(cin, cout):
        """A stride-1 conv keeping H x W, sometimes dilated, 'same'-padded or reflect/circular-padded."""
        k = draw(st.sampled_from([1, 3, 5]))
        dilation = draw(st.sampled_from([1, 1, 1, 2])) if k > 1 else 1
        mode = draw(st.sampled_from(["zeros", "zeros", "zeros", "reflect", "circular"]))
        if mode == "reflect" and dilation * (k // 2) >= h or mode == "circular" and dilation * (k // 2) > h:
            mode = "zeros"
        same = mode == "zeros" and draw(st.integers(0, 5)) == 0
        groups = 2 if cin % 2 == 0 and cout % 2 == 0 and draw(st.integers(0, 4)) == 0 else 1
        spec.append(("conv", cin, cout, k, dilation, mode, same, groups))
        return conv(cin, cout, k, 1, groups=groups, bias=draw(st.booleans()), dilation=dilation,
                    padding_mode=mode, same=same)

    blocks: list[nn.Module] = []
    dynamic: list[str] = []
    leaves: tuple[str, ...] = ()
    for index in range(draw(st.integers(0, 5))):
        kind = draw(st.sampled_from(["plain", "dw", "pw", "residual", "branch", "stride2", "pool", "shared",
                                     "token_linear", "dynamic"]))
        spec.append(kind)
        if kind == "plain":
            cout = draw(st.integers(2, 8))
            blocks.append(ConvBnAct(same_shape_conv(c, cout), act()))
            c = cout
        elif kind == "dw":
            k, mult = draw(st.sampled_from([3, 5])), draw(st.sampled_from([1, 1, 2]))
            spec.append(("dw", c, k, mult))
            blocks.append(ConvBnAct(conv(c, c * mult, k, groups=c), draw(st.sampled_from(["relu6", "torch_relu6"]))))
            c *= mult
        elif kind == "pw":
            cout = draw(st.integers(2, 8))
            blocks.append(ConvBnAct(conv(c, cout, 1, bias=draw(st.booleans())), "none"))
            c = cout
        elif kind == "residual":
            hidden = draw(st.integers(2, 8))
            body = [ConvBnAct(same_shape_conv(c, hidden), act())]
            if draw(st.booleans()):  # an inverted-residual body: pw -> dw -> pw
                body += [ConvBnAct(conv(hidden, hidden, 3, groups=hidden), "relu6"), ConvBnAct(conv(hidden, c, 1), "none")]
            else:
                body.append(ConvBnAct(same_shape_conv(hidden, c), "none"))
            blocks.append(Residual(nn.Sequential(*body), draw(st.sampled_from(["plus", "torch", "method"])),
                                   draw(st.booleans())))
        elif kind == "branch":
            mode = draw(st.sampled_from(["cat", "add"]))
            ca = draw(st.integers(1, 4))
            cb = draw(st.integers(1, 4)) if mode == "cat" else ca
            a = ConvBnAct(same_shape_conv(c, ca), act())
            b = (ConvBnAct(same_shape_conv(c, cb), act()) if draw(st.booleans())
                 else nn.Sequential(ConvBnAct(conv(c, cb, 1), "relu"), ConvBnAct(same_shape_conv(cb, cb), "none")))
            c = ca + cb if mode == "cat" else ca
            blocks.append(TwoBranch(a, b, mode, c, draw(st.booleans())))
        elif kind == "stride2":
            k = draw(st.sampled_from([1, 3, 5]))
            cout = draw(st.integers(2, 8))
            spec.append(("s2", c, cout, k))
            blocks.append(ConvBnAct(conv(c, cout, k, 2, bias=draw(st.booleans())), act()))
            c, h = cout, (h - 1) // 2 + 1
        elif kind == "pool":
            if h < 2:
                blocks.append(nn.Identity())
                continue
            blocks.append(draw(st.sampled_from([nn.MaxPool2d(2), nn.AvgPool2d(2), nn.MaxPool2d(3, 2, 1)])))
            h = h // 2 if isinstance(blocks[-1], (nn.AvgPool2d,)) or blocks[-1].kernel_size == 2 else (h - 1) // 2 + 1
        elif kind == "shared":
            blocks.append(Shared(conv(c, c, draw(st.sampled_from([1, 3])), bias=draw(st.booleans()))))
        elif kind == "token_linear":
            cout = draw(st.integers(2, 8))
            blocks.append(TokenLinear(c, cout, draw(st.booleans())))
            c = cout
        else:  # dynamic: untraceable unless the recipe names it (by class or qualified name) as a leaf
            dyn = draw(st.sampled_from(DYNAMIC_KINDS))
            spec.append(("dynamic", dyn))
            blocks.append(Dynamic(conv(c, c, 3), dyn))
            dynamic.append(f"blocks.{index}")
            leaf = draw(st.sampled_from([None, "Dynamic", f"blocks.{index}", "blocks.*"]))
            leaves += () if leaf is None else (leaf,)
    # a dynamic block is traceable only as a leaf: named by class or by a pattern on its name
    untraceable = any("Dynamic" not in leaves and not any(fnmatch.fnmatchcase(name, p) for p in leaves)
                      for name in dynamic)
    dynamic_root = draw(st.integers(0, 15)) == 0
    untraceable |= dynamic_root
    hidden = draw(st.one_of(st.none(), st.integers(2, 8)))
    head = Head(c, draw(st.sampled_from(["adaptive", "mean", "amax"])), draw(st.sampled_from(["flatten", "view", "reshape"])),
                hidden, draw(st.integers(2, 5)), draw(st.booleans()))
    spec.append(("head", hidden, dynamic_root))
    model = FuzzNet(stem, blocks, head, dynamic_root)
    seed = draw(st.integers(0, 2**16))
    _randomize(model, seed)
    model.eval()
    x = torch.randn(2, in_chans, size, size, generator=torch.Generator().manual_seed(seed + 1))
    recipe = dataclasses.replace(RECIPE, graph=GraphConfig(leaf_modules=tuple(sorted(set(leaves)))))
    return Case(model, x, recipe, untraceable, spec)


# -- the independent count -----------------------------------------------------------------------
def count_macs(model: nn.Module, x: torch.Tensor) -> dict[str, tuple[int, int, bool]]:
    """{qualified name: (MACs per sample over every call, order of the first call, depthwise?)} of
    every nn.Conv2d / nn.Linear that runs on ``x``, from forward hooks on the float model."""
    found: dict[str, list] = {}

    def hook(name):
        def fn(module, args, out):
            per_sample_out = math.prod(out.shape[1:])
            if isinstance(module, nn.Conv2d):
                kh, kw = module.kernel_size
                macs = per_sample_out * (module.in_channels // module.groups) * kh * kw
            else:
                macs = per_sample_out * module.in_features
            entry = found.setdefault(name, [0, len(found)])
            entry[0] += macs
        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    modules = dict(model.named_modules())
    return {n: (macs, order, isinstance(modules[n], nn.Conv2d) and 1 < modules[n].groups == modules[n].in_channels)
            for n, (macs, order) in found.items()}


def expected_bits(counted: dict[str, tuple[int, int, bool]], uniform: int) -> dict[str, tuple[int, int]]:
    """The bits ``Policy.uniform(net, uniform)`` must give under the default recipe: first and last
    layers (by first call) 8/8, depthwise weights the nearest of 3..6, every other bit as asked."""
    order = sorted(counted, key=lambda n: counted[n][1])
    bits = {}
    for name, (_, _, depthwise) in counted.items():
        if name in (order[0], order[-1]):
            bits[name] = (FIRST_LAST_BITS, FIRST_LAST_BITS)
        else:
            w = min(DEPTHWISE_W_BITS, key=lambda b: (abs(b - uniform), -b)) if depthwise else uniform
            bits[name] = (w, uniform)
    return bits


# -- the property --------------------------------------------------------------------------------
def _note(what: str) -> None:
    """Count an outcome in hypothesis' statistics (``--hypothesis-show-statistics``)."""
    if currently_in_test_context():
        event(what)


def check_case(case: Case) -> None:
    model, x = case.model, case.x
    with torch.no_grad():
        reference = model(x)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # low coverage: a leaf's conv not called on the example input
            net = mpqfx.prepare(model, case.recipe, example_input=x)
    except UntraceableModelError as exc:
        assert case.untraceable, f"a traceable model was refused: {exc}"
        assert str(exc)
        _note("prepare: UntraceableModelError")
        return
    assert not case.untraceable, "an untraceable model was traced"
    assert not net.training
    _note(f"prepare: ok, {'some' if any(not l.traced for l in net.layers) else 'no'} layers inside leaves")
    _note(f"prepare: ok, {len(net.layers) // 5 * 5}+ layers")

    with torch.no_grad():  # bypass (the state prepare leaves) computes the float model
        assert net.policy.is_bypass
        torch.testing.assert_close(net(x), reference, rtol=0, atol=1e-5)

    counted = count_macs(model, x)
    assert {l.name for l in net.layers} == set(counted)
    assert all(s.macs == 0 for s in net.skipped)  # only leaf convs never called on x stay float here
    for uniform in (4, 2):
        policy = Policy.uniform(net, uniform)
        want = expected_bits(counted, uniform)
        assert {name: tuple(bits) for name, bits in policy.items()} == want
        report = mpqfx.bitops(net, policy)
        assert report.macs == sum(m for m, _, _ in counted.values())
        assert report.total == sum(counted[n][0] * w * a for n, (w, a) in want.items())
    assert mpqfx.bitops(net, Policy.bypass(net)).total == 32 * 32 * sum(m for m, _, _ in counted.values())

    with torch.no_grad():  # a quantized forward runs, and bypass afterwards still gives the float model
        net.set_policy(Policy.uniform(net, 4))
        quantized = net(x)
        assert quantized.shape == reference.shape and torch.isfinite(quantized).all()
        net.set_policy(Policy.bypass(net))
        torch.testing.assert_close(net(x), reference, rtol=0, atol=1e-5)
        torch.testing.assert_close(model(x), reference, rtol=0, atol=0)  # prepare deep-copied the model


@settings(max_examples=60 * SCALE, **SETTINGS)
@given(cases())
def test_prepare_random_conv_nets(case):
    check_case(case)


# Each way of being untraceable, at least once regardless of what the random draw covers.
@pytest.mark.parametrize("kind", DYNAMIC_KINDS + ("root",))
@pytest.mark.parametrize("as_leaf", [False, True])
def test_untraceable_blocks_raise_untraceable_model_error(kind, as_leaf):
    torch.manual_seed(0)
    dynamic = kind != "root"
    blocks = [ConvBnAct(conv(4, 4, 3, groups=4), "relu6")] + ([Dynamic(conv(4, 4, 3), kind)] if dynamic else [])
    model = FuzzNet(ConvBnAct(conv(3, 4, 3), "relu"), blocks, Head(4, "mean", "flatten", None, 3, True), not dynamic)
    _randomize(model, 0)
    model.eval()
    recipe = dataclasses.replace(RECIPE, graph=GraphConfig(leaf_modules=("Dynamic",) if as_leaf else ()))
    check_case(Case(model, torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1)), recipe,
                    untraceable=not (dynamic and as_leaf), spec=[kind, as_leaf]))
