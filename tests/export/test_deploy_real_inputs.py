"""Deployed module = supernet on Fashion-MNIST images, for the two shapes test_resnet lacks: a
resnet18-style network whose block inputs have two quantized readers (conv1 and the downsample
conv) at different bit-widths, and a mobilenetv2 whose ReLU6 activations are reached (BatchNorm
scaled up) and fold into the quantizers after them."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from timm.models.resnet import BasicBlock, ResNet

import mpqfx
from mpqfx import Policy
from mpqfx.data.fashion_mnist import DataError, FashionMNIST
from mpqfx.export import deploy
from mpqfx.export.deploy import QUANTIZED_TYPES
from mpqfx.export.qdq import ActivationQuantizer


def _images(size: int) -> torch.Tensor:
    """The first 8 Fashion-MNIST test images as 3-channel images (`make test` installs the data set)."""
    try:
        data = FashionMNIST("test", size=size, limit=8)
    except DataError as error:
        pytest.skip(str(error))
    return torch.stack([data[i][0] for i in range(8)]).repeat(1, 3, 1, 1)


def _supernet(model: torch.nn.Module, images: torch.Tensor, bn_gain: float) -> mpqfx.Supernet:
    """``model`` prepared, its BatchNorms given statistics far from their defaults (gains around
    ``bn_gain``), and every activation step fitted on ``images``."""
    net = mpqfx.prepare(model.eval(), example_input=images[:2]).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                shape = module.running_mean.shape
                module.running_mean.copy_(0.1 * torch.randn(shape, generator=gen))
                module.running_var.copy_(0.5 + 1.5 * torch.rand(shape, generator=gen))
                module.weight.copy_(bn_gain * (1 + 0.3 * torch.randn(shape, generator=gen)))
                module.bias.copy_(0.5 * torch.randn(shape, generator=gen))
        for bits in range(2, 9):
            net.set_policy(Policy.uniform(net, bits))
            net(images)
    net.set_policy(Policy.bypass(net))
    return net


def _close_images(net: mpqfx.Supernet, policy: Policy, images: torch.Tensor) -> tuple[int, torch.nn.Module]:
    """How many images the deployed module (8-bit requantizers passing through, float biases) gives
    the supernet's output for, in float64, and the deployed module."""
    deployed = deploy(net, policy, calibration=[(images, None)])
    module = copy.deepcopy(deployed)
    for m in module.modules():
        if isinstance(m, ActivationQuantizer) and m.from_data:
            m.observing = True
        if isinstance(m, QUANTIZED_TYPES):
            m.use_float_bias()
    double = copy.deepcopy(net).double()
    with torch.no_grad(), double.use_policy(policy):
        expected = double(images.double())
        got = module.double()(images.double())
    close = (got - expected).abs().amax(1) <= 1e-9 * float(expected.abs().max())
    return int(close.sum()), deployed


@pytest.fixture(scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors on a shared machine
    yield
    torch.set_num_threads(threads)


def test_two_quantized_readers_at_different_bits_each_keep_their_own_quantizer(one_thread):
    images = _images(32)
    torch.manual_seed(0)
    model = ResNet(BasicBlock, layers=(1, 1, 1, 1), channels=(16, 32, 48, 64), stem_width=16, num_classes=10)
    net = _supernet(model, images, bn_gain=1.0)
    for seed in range(3):
        policy = Policy.sample(net, seed)
        differing = [i for i in (2, 3, 4) if policy[f"layer{i}.0.conv1"].a != policy[f"layer{i}.0.downsample.0"].a]
        assert differing, "the test needs block inputs whose two readers differ"
        close, deployed = _close_images(net, policy, images)
        assert close >= 7, (seed, close)  # of 8 images, as tests/export/test_deploy.py: one rounding flip at most
        for i in differing:  # each reader keeps its own b-bit quantizer; the block input is on an 8-bit grid
            readers = [deployed.get_submodule(f"layer{i}.0.conv1"), deployed.get_submodule(f"layer{i}.0.downsample.0")]
            assert [r.input_quant.bits for r in readers] == [policy[f"layer{i}.0.conv1"].a,
                                                            policy[f"layer{i}.0.downsample.0"].a]


def test_relu6_folds_into_the_quantizer_after_it(one_thread):
    images = _images(64)  # the last feature map is 2x2: the pooled head sees each ReLU6 output
    torch.manual_seed(0)
    net = _supernet(timm.create_model("mobilenetv2_035", num_classes=10), images, bn_gain=3.0)
    policy = Policy.sample(net, 0)
    close, deployed = _close_images(net, policy, images)
    assert close >= 7, close  # of 8
    head = deployed.conv_head.output_quant  # conv_head -> BN -> ReLU6 -> pooling: an 8-bit grid on [0, 6]
    assert head.restricted == (0.0, 6.0)
    assert float(head.step) == pytest.approx(6 / 255, rel=1e-6)  # its inputs reach 6: the grid spans [0, 6]
