"""Estimated per-layer sensitivities from one pass of gradients: the second-order loss change
1/2 * sum_i F_ii * (Q_b(x)_i - x_i)^2 of quantizing one layer's weights (or input activations)
at b bits, with F the diagonal of the Fisher information, the Hessian of the cross-entropy at a
trained model (Gauss-Newton).

This is HAWQ-V2's Omega_l(b) = Tr(H_l) / n_l * ||Q_b(W_l) - W_l||^2 (Dong et al., NeurIPS'20,
Eq. 5) with the Fisher's diagonal in place of the Hessian trace averaged over the layer, as FIT
does (Zandonati et al., 2023): a sum of squared gradients, never negative, and no second
backward pass. Labels are drawn from the model's own predictions (the Fisher, not the empirical
Fisher), so the estimate needs no labels, and E[g_n] = 0 for every image n:

* input activations: the gradient at image n's activation is image n's alone (eval mode), so
  the Fisher diagonal sum_n g_n^2 is exact per element;
* weights: the gradient of a micro-batch is a sum over its images, and
  E||sum_n g_n||^2 = sum_n E||g_n||^2 (the cross terms have zero mean), so summing the squared
  gradients of micro-batches estimates the Fisher diagonal without per-image backward passes.

Each layer's quantizer input is taken through a view of its own (a forward pre-hook), so a tensor
that feeds several layers gets each layer's share of the gradient, as quantizing that one layer
would perturb it. It costs one forward and backward pass per micro-batch of the search images,
against sum_l (|w_bits| - 1 + |a_bits| - 1) evaluations for the measured sensitivities
(mpqfx/search/sensitivity.py); the tables have the same form and feed the same ILP.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from mpqfx.quant.policy import Policy
from mpqfx.search.sensitivity import Sensitivities
from mpqfx.supernet import Supernet

MICRO_BATCH = 8  # images per backward pass for the weights' Fisher diagonal


def _private_input(found: dict[str, torch.Tensor], name: str):
    """A forward pre-hook handing the module a view of its input of its own, kept in ``found[name]``."""
    def hook(module, args):
        x = args[0]
        x = x.view_as(x) if x.requires_grad else x.detach().requires_grad_()
        found[name] = x
        return (x, *args[1:])
    return hook


def fisher_sensitivities(net: Supernet, batches: Sequence, micro_batch: int = MICRO_BATCH, seed: int = 0,
                         report: Callable[[str, int, int], None] | None = None) -> Sensitivities:
    """Per-layer, per-bit estimated loss increases of the float model (bypass policy, eval mode)
    when that one layer's weights or input activations are quantized at each candidate bit-width
    with its current steps; ``report("sensitivities", done, total)`` follows the micro-batches."""
    report = report or (lambda what, done, total: None)
    modules = net.layer_modules()
    device = next(net.parameters()).device
    draw = torch.Generator().manual_seed(seed)
    found: dict[str, torch.Tensor] = {}
    handles = [quant.register_forward_pre_hook(_private_input(found, f"{which}:{name}"))
               for name, module in modules.items()
               for which, quant in (("w", module.weight_quant), ("a", module.act_quant))]
    weight_fisher: dict[str, torch.Tensor] = {}
    act_cost = {l.name: dict.fromkeys(l.a_bits, 0.0) for l in net.layers}
    parts = [x[i:i + micro_batch] for x, _ in batches for i in range(0, len(x), micro_batch)]
    was_training = net.training
    net.eval()
    try:
        with net.use_policy(Policy.bypass(net.layers)), torch.enable_grad():
            for done, images in enumerate(parts):
                report("sensitivities", done, len(parts))
                found.clear()
                logits = net(images.to(device))
                labels = torch.multinomial(logits.detach().float().softmax(1).cpu(), 1, generator=draw)[:, 0]
                loss = F.cross_entropy(logits, labels.to(device), reduction="sum")
                keys = list(found)
                grads = torch.autograd.grad(loss, [found[k] for k in keys], allow_unused=True)
                with torch.no_grad():
                    for key, grad in zip(keys, grads):
                        which, name = key.split(":", 1)
                        if grad is None:
                            continue
                        square = grad.float().square()
                        if which == "w":
                            weight_fisher[name] = weight_fisher[name] + square if name in weight_fisher else square
                        else:
                            quant, x = modules[name].act_quant, found[key].detach()
                            for bits in act_cost[name]:
                                error = (quant.forward(x, bits) - x).float().square_()  # forward: not the hook
                                act_cost[name][bits] += float((square * error).sum())
        report("sensitivities", len(parts), len(parts))
    finally:
        net.train(was_training)
        for handle in handles:
            handle.remove()
    images = sum(len(p) for p in parts)
    out: Sensitivities = {}
    with torch.no_grad():
        for layer in net.layers:
            module = modules[layer.name]
            weight = module.float_weight().detach()
            fisher = weight_fisher.get(layer.name, torch.zeros_like(weight, dtype=torch.float32))
            costs_w = {bits: float((fisher * (module.weight_quant(weight, bits) - weight).float().square()).sum())
                       for bits in layer.w_bits}
            out[layer.name] = {"w": {b: _second_order(c, images) for b, c in costs_w.items()},
                               "a": {b: _second_order(c, images) for b, c in act_cost[layer.name].items()}}
    return out


def _second_order(weighted_squares: float, images: int) -> float:
    """1/2 * sum_i F_ii * delta_i^2 per image, F summed over ``images``; 0 when none were read."""
    value = 0.5 * weighted_squares / max(images, 1)
    return value if math.isfinite(value) else math.inf
