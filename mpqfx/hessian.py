"""Per-layer Hessian statistics of the loss with respect to each quantized layer's latent weight.

* ``hutchinson_traces``: tr(H_ll) for every layer at once: with independent Rademacher probes
  v, E[v_l . (H v)_l] = tr(H_ll) (Hutchinson; HAWQ-V2), used by Double Rounding's HASB.
* ``top_eigenvalues``: the largest eigenvalue of each diagonal block H_ll by power iteration
  (Bit-Mixer §4.2, following HAWQ).

Both run in eval mode (BatchNorm statistics untouched) under a given policy (default: float).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable, Iterator

import torch
import torch.nn.functional as F

from mpqfx.quant.policy import Policy
from mpqfx.supernet import Supernet

Batch = tuple[torch.Tensor, torch.Tensor]


@contextmanager
def _evaluating(net: Supernet, policy: Policy | None) -> Iterator[None]:
    was_training = net.training
    net.eval()
    try:
        with net.use_policy(policy if policy is not None else Policy.bypass(net)):
            yield
    finally:
        net.train(was_training)


def _loss_grads(net: Supernet, batch: Batch, weights: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    images, labels = batch
    device = weights[0].device
    loss = F.cross_entropy(net(images.to(device)), labels.to(device))
    return torch.autograd.grad(loss, weights, create_graph=True)


def hutchinson_traces(net: Supernet, batches: Iterable[Batch], samples: int = 16, policy: Policy | None = None,
                      seed: int = 0) -> dict[str, float]:
    """Hessian trace of the cross-entropy loss per layer, averaged over ``batches`` and ``samples`` probes."""
    modules = net.layer_modules()
    weights = [m.weight for m in modules.values()]
    gen = torch.Generator().manual_seed(seed)
    totals = torch.zeros(len(weights), dtype=torch.float64)
    count = 0
    with _evaluating(net, policy):
        for batch in batches:
            grads = _loss_grads(net, batch, weights)
            for _ in range(samples):
                probes = [(torch.randint(0, 2, w.shape, generator=gen) * 2 - 1).to(w) for w in weights]
                hv = torch.autograd.grad(grads, weights, grad_outputs=probes, retain_graph=True)
                totals += torch.tensor([float((h * v).sum()) for h, v in zip(hv, probes)], dtype=torch.float64)
                count += 1
    return {name: float(t / max(count, 1)) for name, t in zip(modules, totals)}


def top_eigenvalues(net: Supernet, batch: Batch, iters: int = 20, tol: float = 1e-3, policy: Policy | None = None,
                    seed: int = 0) -> dict[str, float]:
    """Largest eigenvalue of each layer's Hessian block H_ll, by power iteration on one batch."""
    modules = net.layer_modules()
    weights = [m.weight for m in modules.values()]
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, float] = {}
    with _evaluating(net, policy):
        grads = _loss_grads(net, batch, weights)
        for name, w, g in zip(modules, weights, grads):
            v = torch.randn(w.shape, generator=gen).to(w)
            v /= v.norm()
            eig = 0.0
            for _ in range(iters):
                (hv,) = torch.autograd.grad(g, w, grad_outputs=v, retain_graph=True)
                new = float((hv * v).sum())
                norm = hv.norm()
                if norm == 0:
                    eig = 0.0
                    break
                v = hv / norm
                converged = abs(new - eig) <= tol * max(abs(eig), 1e-12)
                eig = new
                if converged:
                    break
            out[name] = eig
    return out
