"""Constructs the wide zoo found that torch's TorchScript exporter or deploy could not take:
``Tensor.unfold`` after a ``Pad`` (timm's HaloAttn), a leaf that reads ``.weight.device`` of a
quantized layer (XCiT's PositionalEncodingFourier), and an adaptive pool whose input sizes the
exporter lost (timm's BilinearAttnTransform after another, in bat_resnext26ts), and ``aten::rms_norm``, which has
no symbolic below opset 23 (timm's RmsNorm, in vit_dpwee_patch16_reg1_gap_256). Each is checked on its own and in a
small model of the family that has it, exported with every quantized layer as an integer kernel."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import timm
import torch
import torch.fx as fx
import torch.nn.functional as F
from timm.layers.non_local_attn import BilinearAttnTransform
from timm.models.byobnet import ByobNet, ByoBlockCfg, ByoModelCfg
from torch import nn

import mpqfx
from mpqfx import Policy
from mpqfx.export import deploy, export_onnx, integer_kernels, load_integer_model
from mpqfx.export.decompose import decompose_unfolds, static_adaptive_pools
from mpqfx.export.onnx_qdq import INTEGER_KERNELS, OnnxExportError, session
from mpqfx.export.run import export_policy_files
from mpqfx.supernet import ModelSpec


class Cut(nn.Module):
    """Overlapping windows as HaloAttn cuts them: pad, then unfold height and width."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, [1, 1, 1, 1]).unfold(2, 4, 2).unfold(dimension=-2, size=4, step=2)


class Windows(Cut):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x).mean((-1, -2))


class WindowNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.win, self.conv2, self.fc = nn.Conv2d(3, 8, 3, padding=1), Windows(), nn.Conv2d(8, 8, 3), nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv2(self.win(self.conv(x).relu())).mean((2, 3)))


def _images(n: int = 8, size: int = 32) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))


def _deployed(model: nn.Module, images: torch.Tensor, recipe="default") -> tuple[mpqfx.Supernet, fx.GraphModule]:
    net = mpqfx.prepare(model.eval(), recipe, example_input=images[:1]).eval()
    policy = Policy.uniform(net, 4)
    net.set_policy(policy)
    with torch.no_grad():
        net(images)  # fit the activation steps
    return net, deploy(net, policy, calibration=[(images, None)])


def _integer_layers(net: mpqfx.Supernet, module: nn.Module, images: torch.Tensor, path) -> tuple[int, float]:
    """(layers onnxruntime runs as integer kernels, top-1 agreement with the deployed module in float64)."""
    path = export_onnx(module, images[:1], path)
    kernels = integer_kernels(path)
    assert set(kernels) == {f"{l.name}.weight_int" for l in net.layers}
    expected = copy.deepcopy(module).double()(images.double()).numpy()
    got = session(path).run(None, {"input": images.numpy()})[0]
    return sum(op in INTEGER_KERNELS for op in kernels.values()), float((got.argmax(1) == expected.argmax(1)).mean())


def test_unfold_becomes_a_gather_equal_to_torchs_unfold():
    gm = fx.symbolic_trace(Cut())
    x = torch.randn(2, 3, 10, 12)
    from torch.fx.passes.shape_prop import ShapeProp

    ShapeProp(gm).propagate(x)
    assert decompose_unfolds(gm) == 2
    assert not [n for n in gm.graph.nodes if n.target == "unfold"]
    padded = F.pad(x, [1, 1, 1, 1])
    windows = padded.unfold(2, 4, 2).unfold(-2, 4, 2)  # torch's own op: (2, 3, 5, 6, 4, 4)
    assert windows.shape == (2, 3, 5, 6, 4, 4)
    assert torch.equal(gm(x), windows)
    assert gm.state_dict() == {}  # the indices are graph constants, not weights of the file


def test_traced_unfold_exports_with_integer_kernels(tmp_path):
    torch.manual_seed(0)
    net, module = _deployed(WindowNet(), _images())
    kernels, agreement = _integer_layers(net, module, _images(), tmp_path / "model.onnx")
    assert (kernels, len(net.layers)) == (3, 3)
    assert agreement == 1.0


def test_an_op_the_exporter_cannot_write_is_one_line_naming_the_module(tmp_path):
    torch.manual_seed(0)
    recipe = mpqfx.Recipe.load("default")
    recipe = dataclasses.replace(recipe, graph=dataclasses.replace(recipe.graph, leaf_modules=("win",)))
    _, module = _deployed(WindowNet(), _images(), recipe)  # the unfold inside a leaf: not in the graph
    with pytest.raises(OnnxExportError) as error:
        export_onnx(module, _images()[:1], tmp_path / "model.onnx")
    message = str(error.value)
    assert "\n" not in message
    assert "module 'win' (Windows)" in message
    assert "Unsupported: ONNX export of operator Unfold, input size not accessible" in message
    assert not list(tmp_path.iterdir())


def test_a_leaf_reading_weight_device_deploys_and_reads_the_dequantized_weight():
    class Leaf(nn.Module):  # XCiT's PositionalEncodingFourier reads its projection's weight like this
        def __init__(self):
            super().__init__()
            self.proj = nn.Conv2d(3, 8, 1)

        def forward(self, x):
            return self.proj(x.to(device=self.proj.weight.device, dtype=self.proj.weight.dtype))

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.leaf, self.fc = Leaf(), nn.Linear(8, 10)

        def forward(self, x):
            return self.fc(self.leaf(x).mean((2, 3)))

    recipe = mpqfx.Recipe.load("default")
    recipe = dataclasses.replace(recipe, graph=dataclasses.replace(recipe.graph, leaf_modules=("Leaf",)))
    torch.manual_seed(0)
    net, module = _deployed(Model(), _images(), recipe)
    layer = module.get_submodule("leaf.proj")
    assert layer.weight.dtype == torch.float32 and layer.weight.device == torch.device("cpu")
    assert torch.equal(layer.weight, layer.weight_int.float() * layer.weight_scale.reshape(-1, 1, 1, 1))
    assert torch.equal(layer.bias, layer.bias_int.float() * layer.bias_scale)
    assert copy.deepcopy(module).double().get_submodule("leaf.proj").weight.dtype == torch.float64


def test_tiny_xcit_exports_with_integer_kernels(tmp_path):
    torch.manual_seed(0)
    model = timm.create_model("xcit_tiny_12_p16_384", img_size=32, depth=1, cls_attn_layers=1, num_classes=10)
    net, module = _deployed(model, _images())
    assert "pos_embed.token_projection" in {l.name for l in net.layers}  # the layer inside the leaf
    kernels, agreement = _integer_layers(net, module, _images(), tmp_path / "model.onnx")
    # hand count: 4 patch-embedding convs, the positional encoding's projection, 6 in the XCA block
    # (qkv, proj, 2 local patch convs, 2 MLP), 6 in the class-attention block (q, k, v, proj, 2 MLP), head
    assert kernels == len(net.layers) == 4 + 1 + 6 + 6 + 1
    assert agreement >= 7 / 8


def test_tiny_halo_regnet_exports_with_integer_kernels(tmp_path):
    """haloregnetz_b's blocks (grouped bottlenecks with SE, then HaloAttn) at 32x32."""
    cfg = ByoModelCfg(
        blocks=(ByoBlockCfg(type="bottle", d=1, c=16, s=2, gs=8, br=2),
                ByoBlockCfg(type="self_attn", d=1, c=32, s=2, gs=8, br=2)),
        stem_chs=8, stem_pool="", downsample="", num_features=64, act_layer="silu", attn_layer="se",
        attn_kwargs=dict(rd_ratio=0.25), block_kwargs=dict(bottle_in=True, linear_out=True),
        self_attn_layer="halo", self_attn_kwargs=dict(block_size=4, halo_size=1, qk_ratio=0.5))
    torch.manual_seed(0)
    net, module = _deployed(ByobNet(cfg, num_classes=10), _images())
    assert not [n for n in module.graph.nodes if n.target == "unfold"]
    kernels, agreement = _integer_layers(net, module, _images(), tmp_path / "model.onnx")
    assert kernels == len(net.layers)
    assert agreement >= 7 / 8


@pytest.mark.parametrize("pool, output_size, plain", [
    ("max", (4, 1), "aten::max_pool2d"), ("max", (1, 4), "aten::max_pool2d"), ("avg", (3, 2), "aten::avg_pool2d"),
    ("max", 4, "aten::max_pool2d"), ("max", (None, 2), "aten::max_pool2d"),
    ("max", (5, 3), "aten::adaptive_max_pool2d"),  # 12 rows in 5 bins: overlapping bins, no plain pool
    ("avg", (1, 1), "aten::adaptive_avg_pool2d"),  # global: the exporter writes GlobalAveragePool
])
@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore:.*torch.jit.trace.*:FutureWarning")
def test_adaptive_pools_trace_as_plain_pools_with_constant_kernels_while_exporting(pool, output_size, plain):
    x = torch.randn(2, 3, 12, 8, generator=torch.Generator().manual_seed(0))
    adaptive = {"max": F.adaptive_max_pool2d, "avg": F.adaptive_avg_pool2d}[pool]
    expected = adaptive(x, output_size)  # torch's own adaptive pool
    with static_adaptive_pools():
        got = {"max": F.adaptive_max_pool2d, "avg": F.adaptive_avg_pool2d}[pool](x, output_size)
        traced = torch.jit.trace(lambda t: getattr(F, f"adaptive_{pool}_pool2d")(t, output_size), (x,))
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    assert plain in str(traced.graph)
    assert (F.adaptive_max_pool2d, F.adaptive_avg_pool2d) == (torch.nn.functional.adaptive_max_pool2d,
                                                            torch.nn.functional.adaptive_avg_pool2d)
    assert "static_adaptive_pools" not in F.adaptive_max_pool2d.__qualname__  # restored


class TwoBilinear(nn.Module):
    """bat_resnext26ts's construct: the second BilinearAttnTransform pools a tensor whose height and
    width the exporter lost in the first one's batch-sized reshapes."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.ba1, self.ba2 = BilinearAttnTransform(8, 4, 2), BilinearAttnTransform(8, 4, 2)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.ba2(self.ba1(self.conv(x))).mean((2, 3)))


def test_an_adaptive_pool_after_batch_sized_reshapes_exports_with_integer_kernels(tmp_path):
    torch.manual_seed(0)
    net, module = _deployed(TwoBilinear(), _images())
    kernels, agreement = _integer_layers(net, module, _images(), tmp_path / "model.onnx")
    # hand count: the stem conv, 4 in each BilinearAttnTransform (conv1, conv_p, conv_q, conv2), the head
    assert kernels == len(net.layers) == 1 + 2 * 4 + 1
    assert agreement >= 7 / 8


@pytest.mark.parametrize("formats", [("safetensors", "onnx"), ("onnx",)])
def test_a_failed_onnx_export_still_writes_the_integer_weights(tmp_path, formats, monkeypatch):
    # the integer file rebuilds its model by timm name: WindowNet under one, for this test only
    monkeypatch.setitem(timm.models._registry._model_entrypoints, "mpqfx_test_windownet", lambda **_: WindowNet())
    torch.manual_seed(0)
    recipe = mpqfx.Recipe.load("default")
    recipe = dataclasses.replace(recipe, graph=dataclasses.replace(recipe.graph, leaf_modules=("win",)))
    spec = ModelSpec("mpqfx_test_windownet", {})
    net = mpqfx.prepare(WindowNet().eval(), recipe, example_input=_images()[:1], model_spec=spec).eval()
    policy = Policy.uniform(net, 4)
    paths = {fmt: tmp_path / f"uniform-4.{fmt}" for fmt in formats}
    with pytest.raises(OnnxExportError) as error:
        export_policy_files(net, policy, paths, [(_images(), None)], [(_images(), torch.zeros(8))])
    weights = tmp_path / "uniform-4.safetensors"
    assert str(error.value).endswith(f"; the policy's integer weights are in {weights}")
    assert "module 'win' (Windows)" in str(error.value) and "\n" not in str(error.value)
    assert error.value.written == {"safetensors": str(weights), "safetensors_bytes": weights.stat().st_size}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["uniform-4.safetensors"]  # no ONNX file, no staging folder
    x = _images(2)
    assert torch.equal(load_integer_model(weights)(x), deploy(net, policy, [(_images(), None)])(x))


class RmsNet(nn.Module):
    """conv -> tokens -> RMSNorm (torch's module: aten::rms_norm) -> linear -> F.rms_norm without weight -> head."""

    def __init__(self):
        super().__init__()
        self.conv, self.norm, self.fc, self.head = nn.Conv2d(3, 16, 4, 4), nn.RMSNorm(16, eps=1e-5), nn.Linear(16, 16), nn.Linear(16, 10)
        with torch.no_grad():
            self.norm.weight.uniform_(0.5, 1.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.norm(self.conv(x).flatten(2).transpose(1, 2))
        return self.head(F.rms_norm(self.fc(tokens).relu(), (16,)).mean(1))


@pytest.mark.parametrize("opset", [17, 18])  # ReduceMean's axes: an attribute up to 17, an input from 18
def test_rms_norm_exports_as_its_definition_and_matches_torchs_kernel(tmp_path, opset):
    model = RmsNet().eval()
    x = _images(4)
    path = export_onnx(model, x[:1], tmp_path / "rms.onnx", opset=opset)
    got = session(path).run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        expected = model(x).numpy()  # torch's own rms_norm kernel
    assert abs(got - expected).max() <= 1e-5 * abs(expected).max()


def test_a_vit_with_rms_norm_exports_with_integer_kernels(tmp_path):
    """vit_dpwee's blocks (DiffParallelScalingBlock with timm's RmsNorm) at 32x32."""
    torch.manual_seed(0)
    model = timm.create_model("vit_dpwee_patch16_reg1_gap_256", img_size=32, patch_size=8, embed_dim=32, depth=1,
                              num_heads=2, num_classes=10)
    net, module = _deployed(model, _images())
    kernels, agreement = _integer_layers(net, module, _images(), tmp_path / "model.onnx")
    assert kernels == len(net.layers)
    assert agreement >= 7 / 8
