"""``double_rounding``: one-shot joint training from the Double Rounding paper.

Weights use the Double Rounding quantizer (one stored highest-bit scale, Eq. 1-3, see
mpqfx/quant/double_rounding.py); activations keep one LSQ step per bit (Eq. 4-5).

* Multi-precision stage (Alg. A.2), the first ``multi_precision`` fraction of training: for each
  candidate bit-width, highest first, the whole network runs at that bit-width, then both
  optimizers step; with ALRS the quantizer steps use lambda_b of Eq. 6-7.
* Mixed-precision SuperNet stage (Alg. A.3): the per-layer Hessian traces of the float model
  (Hutchinson) drive Hessian-Aware Stochastic Bit-switching: for each bit-width b, every layer
  switches with probability sigma to a bit drawn by the roulette of Alg. 1, else runs at b;
  sigma rises with the epochs of this stage.
"""

from __future__ import annotations

import random
from itertools import islice
from typing import Any, Sequence

import torch
from torch.utils.data import DataLoader, Subset

from mpqfx.graph.layer_info import Role
from mpqfx.hessian import hutchinson_traces
from mpqfx.quant.policy import Policy, nearest_bits
from mpqfx.train.options import DoubleRoundingOptions
from mpqfx.train.strategy import Strategy, register_strategy


def alrs_factor(bits: int, highest: int) -> float:
    """Eq. 7: eta_b = 10^(-delta/2) for even delta = h - b, 5 * 10^(-(delta+1)/2) for odd delta."""
    delta = highest - bits
    return 10.0 ** (-delta / 2) if delta % 2 == 0 else 5 * 10.0 ** (-(delta + 1) / 2)


def alrs_lr(lr: float, bits: int, highest: int, layer_grads: Sequence[Sequence[torch.Tensor]]) -> float:
    """Eq. 6: lambda_b = eta_b * (lambda - mean_i min(max_abs(clip_grad(grad s_i^b, 1.0)), 1.0)).

    ``layer_grads`` holds, per layer, the gradients of its b-bit quantization scales; clip_grad
    rescales them to norm <= 1. The result is floored at 0 (a negative rate would ascend).
    """
    terms = []
    for grads in layer_grads:
        flat = torch.cat([g.reshape(-1).float() for g in grads]) if grads else torch.zeros(1)
        flat = flat * min(1.0, 1.0 / max(float(flat.norm()), 1e-12))
        terms.append(min(float(flat.abs().max()), 1.0))
    mean = sum(terms) / max(len(terms), 1)
    return alrs_factor(bits, highest) * max(lr - mean, 0.0)


def roulette(candidates: Sequence[int], trace: float, mean_trace: float, rng: random.Random) -> int:
    """Alg. 1: uniform over the candidates for an insensitive layer (trace below the mean),
    otherwise p_i = b_i / ||B||_1, sampled by walking the cumulative sum past r ~ U(0, 1]."""
    bits = sorted(candidates)
    probs = [1 / len(bits)] * len(bits) if trace < mean_trace else [b / sum(bits) for b in bits]
    r = 1.0 - rng.random()
    cumulative = 0.0
    for b, p in zip(bits, probs):
        cumulative += p
        if cumulative >= r:
            return b
    return bits[-1]


@register_strategy("double_rounding")
class DoubleRounding(Strategy):
    """Double Rounding: multi-precision with ALRS, then a HASB mixed-precision SuperNet."""

    options_cls = DoubleRoundingOptions

    def __init__(self, trainer, options: DoubleRoundingOptions):
        super().__init__(trainer, options)
        normal = [l for l in self.net.layers if l.role is Role.NORMAL] or list(self.net.layers)
        self.bits = sorted({b for l in normal for b in l.w_bits}, reverse=True)
        self.highest = self.bits[0]
        self.traces: dict[str, float] = {}

    def setup(self) -> None:
        """Hessian traces of the float model on ``hessian_images`` training images (for HASB)."""
        o, trainer = self.options, self.trainer
        if not (o.hasb and o.multi_precision < 1):
            return
        count = min(o.hessian_images, len(trainer.dataset))
        order = torch.randperm(len(trainer.dataset), generator=torch.Generator().manual_seed(trainer.cfg.seed))
        loader = DataLoader(Subset(trainer.dataset, order[:count].tolist()), batch_size=trainer.cfg.batch_size)
        batches = [(x.to(trainer.device), y.to(trainer.device)) for x, y in islice(loader, None)]
        self.traces = hutchinson_traces(self.net, batches, o.hessian_samples, seed=trainer.cfg.seed)

    def sigma_at(self, progress: float) -> float:
        """Alg. A.3 line 3: sigma * (epoch + 1) / epochs, counted over the epochs of the HASB stage."""
        o = self.options
        epochs = max(1, round(self.trainer.cfg.epochs * (1 - o.multi_precision)))
        stage_progress = (progress - o.multi_precision) / max(1 - o.multi_precision, 1e-12)
        epoch = min(int(stage_progress * epochs), epochs - 1)
        return o.sigma * (epoch + 1) / epochs

    def hasb_policy(self, bits: int, sigma: float, rng: random.Random) -> Policy:
        mean_trace = sum(self.traces.values()) / max(len(self.traces), 1)
        table = {}
        for l in self.net.layers:
            b = bits
            if l.role is Role.NORMAL and rng.random() < sigma:
                b = roulette(l.w_bits, self.traces.get(l.name, 0.0), mean_trace, rng)
            table[l.name] = (nearest_bits(l.w_bits, b), nearest_bits(l.a_bits, b))
        return Policy(table)

    def _scale_grads(self, policy: Policy) -> list[list[torch.Tensor]]:
        grads = []
        for name, module in self.net.layer_modules().items():
            params = [module.weight_quant.scale, module.act_quant.step(policy[name].a)]
            grads.append([p.grad for p in params if p.grad is not None])
        return grads

    def train_step(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        o, trainer = self.options, self.trainer
        multi = trainer.progress < o.multi_precision or not o.hasb
        sigma = 0.0 if multi else self.sigma_at(trainer.progress)
        teacher = trainer.teacher_logits(images)
        losses = {}
        for bits in self.bits:  # highest first
            policy = Policy.uniform(self.net, bits) if multi else self.hasb_policy(bits, sigma, trainer.rng)
            out = trainer.run(policy, images, labels, teacher_logits=teacher)
            quant_lr = None
            if multi and o.alrs and trainer.quant_optimizer is not None:
                quant_lr = alrs_lr(trainer.quant_lr, bits, self.highest, self._scale_grads(policy))
            trainer.optimizer_step(quant_lr=quant_lr)
            losses[bits] = out.loss
        return {"loss": sum(losses.values()) / len(losses), "sigma": sigma,
                **{f"loss_{b}bit": v for b, v in losses.items()}}

    def state_dict(self) -> dict[str, Any]:
        return {"traces": dict(self.traces)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.traces = dict(state["traces"])
