"""Where the deployed model quantizes the tensors the supernet keeps in float: a residual sum read
only by quantized layers takes their quantizer, and an 8-bit grid read by a b-bit layer contains
that layer's rounding boundaries, so rounding twice gives the supernet's integers."""

from __future__ import annotations

from collections import Counter

import onnx
import pytest
import torch
from torch import nn

import mpqfx
from mpqfx import Policy
from mpqfx.export import deploy, export_onnx, integer_kernels
from mpqfx.export.onnx_qdq import INTEGER_KERNELS, session
from mpqfx.export.qdq import ActivationQuantizer


@pytest.mark.parametrize("bits, signed, spread", [(4, True, 3.0), (3, False, 2.0), (2, True, 0.4), (8, True, 2.5)])
def test_an_8_bit_grid_at_an_odd_fraction_of_the_readers_step_changes_none_of_its_integers(bits, signed, spread):
    reader = ActivationQuantizer(bits, signed, step=0.173)
    x = spread * torch.randn(200_000, generator=torch.Generator().manual_seed(bits))
    x = x if signed else x.abs()
    aligned, plain = ActivationQuantizer(8, signed=True), ActivationQuantizer(8, signed=True)
    aligned.reader_step = float(reader.step)
    for quant in (aligned, plain):
        quant.set_range(float(x.min()), float(x.max()))
    k = float(reader.step / aligned.step)
    assert abs(k - round(k)) < 1e-4 and round(k) % 2 == 1
    assert float(aligned.step) >= float(plain.step)  # the grid still covers the calibrated range
    assert torch.equal(reader(aligned(x)), reader(x))
    assert not torch.equal(reader(plain(x)), reader(x))  # a min/max grid alone moves 1-13% of them here


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.conv_a = nn.Conv2d(8, 8, 3, padding=1)
        self.conv_b = nn.Conv2d(8, 8, 1)
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        x = self.stem(x)  # read by conv_a and the add: an 8-bit grid aligned to conv_a's step
        total = self.conv_a(x) + x  # read only by conv_b: conv_b's own quantizer
        return self.head(self.conv_b(total).mean((2, 3)))


def test_a_residual_sum_read_by_one_layer_takes_its_quantizer_and_runs_as_integer_kernels(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(8, 3, 12, 12)
    net = mpqfx.prepare(Residual().eval(), example_input=x[:2]).eval()
    with torch.no_grad():
        for bits in range(2, 9):  # fit the activation steps
            net.set_policy(Policy.uniform(net, bits))
            net(x)
    policy = Policy.uniform(net, 4)
    module = deploy(net, policy, calibration=[(x, None)])
    conv_b = module.conv_b
    assert conv_b.input_from == "requantize_add" and isinstance(conv_b.input_quant, nn.Identity)
    assert module.requantize_add.bits == policy["conv_b"].a and not module.requantize_add.from_data
    assert torch.equal(module.requantize_add.step, net.layer_modules()["conv_b"].act_quant.step(policy["conv_b"].a))
    stem_out, reader = module.stem.output_quant, module.conv_a.input_quant
    assert stem_out.from_data and stem_out.reader_step == float(reader.step)
    values = 3 * torch.randn(100_000)
    values = values[(values > stem_out.step * (0 - int(stem_out.zero_point)))
                    & (values < stem_out.step * (255 - int(stem_out.zero_point)))]
    assert torch.equal(reader(stem_out(values)), reader(values))
    path = export_onnx(module, x[:1], tmp_path / "residual.onnx")
    assert all(op in INTEGER_KERNELS for op in integer_kernels(path).values())
    session(path, save_optimized=tmp_path / "optimized.onnx")
    ops = Counter(node.op_type for node in onnx.load(str(tmp_path / "optimized.onnx")).graph.node)
    assert ops["QLinearAdd"] + ops["NhwcQLinearAdd"] == 1 and ops["Add"] == 0, ops


def test_an_8_bit_quantizer_is_calibrated_on_the_layers_output_with_its_bias():
    torch.manual_seed(0)
    x = torch.randn(8, 3, 12, 12)
    model = Residual().eval()
    with torch.no_grad():
        model.stem.bias.fill_(3.0)  # outputs far from the bias-free ones
    net = mpqfx.prepare(model, example_input=x[:2]).eval()
    policy = Policy.uniform(net, 8)
    outputs = []
    handle = net.layer_modules()["stem"].register_forward_hook(lambda m, i, out: outputs.append(out.detach()))
    with torch.no_grad(), net.use_policy(policy):
        net(x)
    handle.remove()
    low, high = torch.quantile(outputs[0].flatten(), torch.tensor([1e-5, 1 - 1e-5]))
    quant = deploy(net, policy, calibration=[(x, None)]).stem.output_quant
    top = float(quant.step) * (255 - int(quant.zero_point))
    bottom = float(quant.step) * (0 - int(quant.zero_point))
    assert bottom <= min(float(low), 0.0) + float(quant.step) and top >= float(high) - float(quant.step)
    assert top <= 3 * float(high)  # at most the widening to an odd fraction of conv_a's step (k = 1)


@pytest.mark.parametrize("act, bounds", [(nn.ReLU6(), (0.0, 6.0)), (nn.Hardtanh(-1.0, 2.5), (-1.0, 2.5)),
                                         (nn.ReLU(), (0.0, float("inf"))), ("relu6", (0.0, 6.0))])
def test_clamp_activations_fold_with_their_own_bounds(act, bounds):
    import torch.fx as fx
    import torch.nn.functional as F

    from mpqfx.export.requantize import _clamp_range

    class Act(nn.Module):
        def __init__(self):
            super().__init__()
            self.act = act if isinstance(act, nn.Module) else nn.Identity()

        def forward(self, x):
            return F.relu6(x) if act == "relu6" else self.act(x)

    gm = fx.symbolic_trace(Act())
    node = next(n for n in gm.graph.nodes if n.op in ("call_module", "call_function"))
    assert _clamp_range(gm, node) == bounds


class _TwoReaders(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1)

    def forward(self, x):
        y = self.stem(x)
        return self.a(y), self.b(y)


@pytest.mark.parametrize("a, b, shared", [
    ((4, False, 0.5), (4, False, 0.5), True),  # equal quantizers (two objects): the stem writes their grid
    ((4, False, 0.5), (4, False, 0.25), False),  # another step
    ((4, False, 0.5), (3, False, 0.5), False),  # other bits
    ((4, False, 0.5), (4, True, 0.5), False),  # signed
])
def test_two_readers_share_a_quantizer_only_when_bits_sign_and_step_agree(a, b, shared):
    from mpqfx.export.requantize import place_output_quantizers

    gm = torch.fx.symbolic_trace(_TwoReaders())
    gm.a.input_quant, gm.b.input_quant = ActivationQuantizer(*a), ActivationQuantizer(*b)
    quant_a = gm.a.input_quant
    moved = place_output_quantizers(gm, {"stem", "a", "b"})
    if shared:
        assert moved == {"a": "stem", "b": "stem"} and gm.stem.output_quant is quant_a
        assert isinstance(gm.a.input_quant, nn.Identity) and isinstance(gm.b.input_quant, nn.Identity)
    else:
        assert moved == {} and gm.a.input_quant is quant_a
        out = gm.stem.output_quant
        assert (out.bits, out.signed, out.from_data, out.reader_step) == (8, True, True, min(a[2], b[2]))


@pytest.mark.parametrize("restrict, seen, step, zero_point", [
    (None, (0.5, 2.0), 2.0 / 255, 0),  # the grid always holds 0: [0, 2]
    (None, (-2.0, 0.5), 2.5 / 255, 204),  # 2 / (2.5 / 255) = 204
    (None, (-1.0, -0.5), 1.0 / 255, 255),  # [-1, 0]
    ((0.0, 6.0), (-3.0, 10.0), 6.0 / 255, 0),  # a folded ReLU6: [0, 6]
])
def test_an_8_bit_grid_spans_the_seen_range_with_zero_by_hand(restrict, seen, step, zero_point):
    quant = ActivationQuantizer(8, signed=True)
    if restrict:
        quant.restrict(*restrict)
    quant.set_range(*seen)
    assert float(quant.step) == pytest.approx(step, rel=1e-6) and int(quant.zero_point) == zero_point
    assert (int(quant.lo), int(quant.hi)) == (0, 255)


class _Pools(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.pool, self.a = nn.Conv2d(3, 4, 1), nn.MaxPool2d(2), nn.Conv2d(4, 4, 1)
        self.indexed = nn.MaxPool2d(2, return_indices=True)

    def forward(self, x):
        y = self.a(self.pool(self.stem(x)))  # a layer's output pooled: its quantizer again after the pool
        z = torch.nn.functional.max_pool2d(y, 2)  # a functional pool of a layer's output
        return z, self.indexed(y)[0], torch.nn.functional.max_pool2d(x, 2)  # indices kept / the float input: none


def test_a_max_pool_of_a_quantized_tensor_is_followed_by_that_tensor_s_quantizer():
    from mpqfx.export.requantize import place_output_quantizers

    gm = torch.fx.symbolic_trace(_Pools())
    gm.a.input_quant = ActivationQuantizer(4, False, 0.5)
    place_output_quantizers(gm, {"stem", "a"})
    added = {n.target: n.args[0].name for n in gm.graph.nodes if n.op == "call_module" and n.target.startswith("requantize_")}
    assert added == {"requantize_pool": "pool", "requantize_max_pool2d": "max_pool2d"}
    assert gm.requantize_pool is gm.stem.output_quant and gm.requantize_max_pool2d is gm.a.output_quant
    assert [n.args[0].name for n in gm.graph.nodes if n.name == "a"] == ["requantize_pool"]


class _Clamps(nn.Module):
    def __init__(self):
        super().__init__()
        self.relu, self.relu6, self.hardtanh = nn.ReLU(), nn.ReLU6(), nn.Hardtanh(-2.0, 3.0)
        self.identity, self.dropout, self.gelu = nn.Identity(), nn.Dropout(), nn.GELU()
        self.folded_act = nn.Sequential(nn.Identity(), nn.ReLU())  # what a folded BatchNormAct2d leaves
        self.folded_none = nn.Sequential(nn.Dropout(), nn.Identity())
        self.two_acts = nn.Sequential(nn.ReLU(), nn.ReLU6())

    def forward(self, x):
        F = torch.nn.functional
        modules = [m(x) for m in (self.relu, self.relu6, self.hardtanh, self.identity, self.dropout, self.gelu,
                                  self.folded_act, self.folded_none, self.two_acts)]
        return modules + [F.relu(x), torch.relu(x), torch.relu_(x), F.relu6(x), x.relu(), x.relu_(), torch.sigmoid(x),
                          x.sigmoid()]


def test_clamp_ranges_of_activation_modules_functions_and_methods_by_hand():
    from mpqfx.export.requantize import _clamp_range

    class Leaves(torch.fx.Tracer):  # Sequentials stay one node, as mpqfx's tracer leaves BatchNormAct2d's
        def is_leaf_module(self, m, qualname):
            return isinstance(m, nn.Sequential) or super().is_leaf_module(m, qualname)

    module = _Clamps()
    gm = torch.fx.GraphModule(module, Leaves().trace(module))
    inf = float("inf")
    got = [_clamp_range(gm, n) for n in gm.graph.nodes if n.op not in ("placeholder", "output")]
    assert got == [(0.0, inf), (0.0, 6.0), (-2.0, 3.0), (-inf, inf), (-inf, inf), None, (0.0, inf), (-inf, inf), None,
                   (0.0, inf), (0.0, inf), (0.0, inf), (0.0, 6.0), (0.0, inf), (0.0, inf), None, None]


class _Chain(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.relu, self.relu6 = nn.Conv2d(3, 3, 1), nn.ReLU(), nn.ReLU6()

    def forward(self, x):
        y = self.relu6(self.relu(self.conv(x)))
        relu = torch.nn.functional.relu(self.conv(y))
        z = self.conv(y)
        return relu + relu, z.relu(), z * 2  # the third conv's output has two readers: no chain


def test_clamps_that_each_read_only_their_input_chain_and_their_bounds_intersect():
    from mpqfx.export.requantize import _follow_clamps

    gm = torch.fx.symbolic_trace(_Chain())
    first, second, third = [n for n in gm.graph.nodes if n.target == "conv"]
    end, chain, bounds = _follow_clamps(gm, first)
    assert end.target == "relu6" and [n.target for n in chain] == ["relu", "relu6"] and bounds == (0.0, 6.0)
    end, chain, bounds = _follow_clamps(gm, second)
    assert end is chain[0] and len(chain) == 1 and chain[0].target is torch.nn.functional.relu
    assert bounds == (0.0, float("inf"))
    end, chain, bounds = _follow_clamps(gm, third)
    assert end is third and chain == [] and bounds == (-float("inf"), float("inf"))


def test_calibrating_without_batches_is_an_error():
    from mpqfx.export.requantize import calibrate

    with pytest.raises(ValueError, match="calibration saw no data: pass at least one batch"):
        calibrate(nn.Sequential(ActivationQuantizer(8, True)), [])


def test_calibration_keeps_the_min_and_max_over_every_batch():
    from mpqfx.export.requantize import calibrate

    quant = ActivationQuantizer(8, signed=True)
    calibrate(nn.Sequential(quant), [(torch.tensor([-1.0, 2.0]), None), (torch.tensor([0.5, 3.0]), None),
                                     (torch.tensor([0.0, 1.0]), None)])
    assert quant.seen == (-1.0, 3.0)
    assert float(quant.step) == pytest.approx(4.0 / 255, rel=1e-6) and int(quant.zero_point) == 64  # 1 / (4 / 255)
