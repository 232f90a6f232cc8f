"""prepare() over a list covering ResNet, MobileNetV2/V3, EfficientNet/-Lite, ConvNeXt, RegNet, a ViT,
timm's tiny test_* models and small configurations of the models that bring other layer types
(weight-standardized convs, ECA's Conv1d, BEiT's fused-bias F.linear, Hiera's forward(x, mask=None)),
at small inputs so the default run stays fast."""

from __future__ import annotations

import pytest
import timm
import torch

import mpqfx
from mpqfx import LayerBits, LayerKind, Policy, Recipe, Role
from mpqfx.recipe import QuantConfig

ZOO = {
    # name: (create kwargs, input size)
    "resnet18": ({}, (3, 32, 32)),
    "mobilenetv2_100": ({}, (3, 32, 32)),
    "mobilenetv3_small_050": ({}, (3, 32, 32)),
    "efficientnet_b0": ({}, (3, 32, 32)),
    "efficientnet_lite0": ({}, (3, 32, 32)),
    "tf_efficientnet_lite0": ({}, (3, 33, 33)),  # Conv2dSame padding at an odd size
    "convnext_atto": ({}, (3, 32, 32)),
    "regnetx_002": ({}, (3, 32, 32)),
    "vit_tiny_patch16_224": ({"img_size": 32}, (3, 32, 32)),
    "test_resnet": ({}, (3, 32, 32)),
    "test_efficientnet": ({}, (3, 32, 32)),
    "test_convnext": ({}, (3, 32, 32)),
    "test_byobnet": ({}, (3, 32, 32)),
    "test_vit": ({"img_size": 32}, (3, 32, 32)),
    "test_nfnet": ({}, (3, 32, 32)),  # ScaledStdConv2d
    "vit_tiny_r_s16_p8_224": ({"img_size": 32, "depth": 2}, (3, 32, 32)),  # hybrid: StdConv2dSame stem
    "resnet10t": ({"block_args": {"attn_layer": "eca"}}, (3, 32, 32)),  # ECA attention: Conv1d
    "beit_base_patch16_224": ({"img_size": 32, "depth": 2, "embed_dim": 64, "num_heads": 2}, (3, 32, 32)),
    # forward(x, mask=None); weight_init "skip": timm's ViT init zeroes the head, and a zero output compares nothing
    "hiera_tiny_224": ({"img_size": 32, "stages": (1, 1, 1, 1), "weight_init": "skip"}, (3, 32, 32)),
}
# what each of those must quantize: a layer type, or a layer by name
NEW_LAYER_TYPES = {"test_nfnet": "ScaledStdConv2d", "vit_tiny_r_s16_p8_224": "StdConv2dSame", "resnet10t": "Conv1d"}
NEW_LAYERS = {
    "beit_base_patch16_224": "blocks.1.attn.qkv",  # F.linear(x, self.qkv.weight, torch.cat((q_bias, k_bias, v_bias)))
    "hiera_tiny_224": "head.fc",  # traced with mask=None pinned: the head is there
}
RECIPE_WITH_8 = Recipe(quant=QuantConfig(w_bits=(2, 3, 4, 5, 6, 8), a_bits=(2, 3, 4, 5, 6, 8)))
# Largest relative L2 error of the logits at uniform 8/8 seen on these randomly initialised
# models (per-tensor LSQ, steps fitted on the example batch); measured 0.015-0.090.
MAX_REL_ERROR_8BIT = 0.1


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.fixture(scope="module", params=sorted(ZOO))
def zoo_case(request):
    kwargs, size = ZOO[request.param]
    torch.manual_seed(0)
    model = timm.create_model(request.param, **kwargs).eval()
    x = torch.randn(4, *size, generator=torch.Generator().manual_seed(0))
    net = mpqfx.prepare(model, RECIPE_WITH_8, example_input=x[:2]).eval()
    return request.param, model, net, x


def test_bypass_equals_the_float_model(zoo_case):
    _, model, net, x = zoo_case
    with torch.no_grad():
        torch.testing.assert_close(net(x), model(x), rtol=0, atol=1e-5)


def test_coverage_of_conv_and_linear_weights(zoo_case):
    _, model, net, _ = zoo_case
    weight_types = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.Linear)
    total = sum(m.weight.numel() for m in model.modules() if isinstance(m, weight_types))
    assert sum(l.params for l in net.layers) / total >= 0.99
    assert net.coverage() >= 0.99


def test_new_layer_types_are_quantized(zoo_case):
    name, _, net, _ = zoo_case
    if name in NEW_LAYER_TYPES:
        assert NEW_LAYER_TYPES[name] in {l.module_type for l in net.layers}
    if name in NEW_LAYERS:
        assert net.layer(NEW_LAYERS[name]).traced


def test_uniform_8bit_is_close_to_float(zoo_case):
    name, model, net, x = zoo_case
    with torch.no_grad(), net.use_policy(Policy.uniform(net, 8)):
        error = _rel(net(x), model(x))
    print(f"{name}: uniform 8/8 relative logit error {error:.4f}")
    assert error < MAX_REL_ERROR_8BIT


def test_every_sampled_policy_runs_and_respects_restrictions(zoo_case):
    _, _, net, x = zoo_case
    roles = [l.role for l in net.layers]
    assert roles[0] is Role.FIRST and roles[-1] is Role.LAST and roles.count(Role.NORMAL) == len(roles) - 2
    for seed in range(3):
        policy = Policy.sample(net, seed)
        for info in net.layers:
            if info.role is not Role.NORMAL:
                assert policy[info.name] == LayerBits(8, 8)
            if info.kind is LayerKind.DEPTHWISE:
                assert policy[info.name].w != 2
        with torch.no_grad(), net.use_policy(policy):
            assert torch.isfinite(net(x)).all()


def test_prepare_does_not_touch_the_original(zoo_case):
    _, model, _, _ = zoo_case
    assert not any(type(m).__name__.startswith("MultiBit") for m in model.modules())


def test_training_step_reaches_latent_weights_and_steps():
    torch.manual_seed(0)
    net = mpqfx.prepare(timm.create_model("test_efficientnet"), example_input=torch.randn(2, 3, 32, 32)).train()
    net.set_policy(Policy.sample(net, 0))
    net(torch.randn(4, 3, 32, 32)).logsumexp(1).mean().backward()
    for name, module in net.layer_modules().items():
        bits = net.policy[name]
        assert module.weight.grad is not None and module.weight.grad.abs().sum() > 0, name
        assert module.weight_quant.step(bits.w).grad is not None, name
        if name == "conv_stem":  # reads the raw input: calibrated once, then frozen
            assert not module.act_quant.step(bits.a).requires_grad and module.act_quant.initialized.any()
        else:
            assert module.act_quant.step(bits.a).grad is not None, name
