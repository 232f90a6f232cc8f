"""Hutchinson traces and power-iteration eigenvalues against exact Hessians of a tiny model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mpqfx
from mpqfx.hessian import hutchinson_traces, top_eigenvalues


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))
    net = mpqfx.prepare(model, example_input=torch.randn(1, 6))
    gen = torch.Generator().manual_seed(1)
    batch = (torch.randn(16, 6, generator=gen), torch.randint(0, 3, (16,), generator=gen))
    return model, net, batch


def exact_block(model, batch, layer_index):
    linear = [m for m in model if isinstance(m, nn.Linear)][layer_index]
    w0 = linear.weight.detach().clone()

    def loss_of(w):
        x, y = batch
        h = x
        for m in model:
            h = F.linear(h, w, m.bias) if m is linear else m(h)
        return F.cross_entropy(h, y)

    return torch.autograd.functional.hessian(loss_of, w0).reshape(w0.numel(), w0.numel())


def test_hutchinson_traces_match_exact_block_traces(tiny):
    model, net, batch = tiny
    estimate = hutchinson_traces(net, [batch], samples=3000)
    for i, name in enumerate(["0", "2"]):
        exact = float(torch.trace(exact_block(model, batch, i)))
        assert estimate[name] == pytest.approx(exact, rel=0.08, abs=1e-3)


def test_power_iteration_finds_the_top_eigenvalue_of_each_block(tiny):
    model, net, batch = tiny
    found = top_eigenvalues(net, batch, iters=200, tol=1e-7)
    for i, name in enumerate(["0", "2"]):
        eigs = torch.linalg.eigvalsh(exact_block(model, batch, i))
        top = float(eigs[eigs.abs().argmax()])
        assert found[name] == pytest.approx(top, rel=1e-3)
