"""``oneshot``: RFQ one-shot weight-coupled training (Tang et al., CVPR'24, and its supplementary).

Each step trains the max-bit policy plus K policies drawn uniformly per layer, with gradients
accumulated over all of them before one update (Eq. 2). On top:

* bit-width scheduler: every M steps each layer's unstable-weight criterion (Eq. 6) is profiled
  and the smallest weight bit of the top-𝒦 layers is frozen until the next profiling (Eq. 7);
  𝒦 follows a cosine decay from ``freeze_ratio`` of the searchable layers to 0;
* information distortion mitigation (Eq. 8) between the BatchNorm outputs of layers sampled at
  their smallest bit and those of the max policy;
* fairness regularization (supp. B.2): no weight decay on the in-range weights of a layer that
  ran at its current smallest bit this step;
* quantization-error minimisation (supp. B.2) between latent and quantized weights;
* optionally (``uniform_share``) a share of the sampled policies set every layer to one weight and
  one activation bit-width drawn per policy, as Bit-Mixer's stage II and Double Rounding's
  multi-precision steps do, so that uniform and near-uniform low-bit policies, the ones a search
  with floors picks, are trained directly rather than only as the rare per-layer draw;
* optionally (``sandwich``) the min policy every step as well, right after the max one: Double
  Rounding's {max, random, min} rule.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from mpqfx.graph.layer_info import Role
from mpqfx.quant.lsq import int_range
from mpqfx.quant.policy import Policy, nearest_bits
from mpqfx.quant.transitional_bn import TransitionalBatchNorm
from mpqfx.train.options import OneShotOptions
from mpqfx.train.strategy import Strategy, register_strategy


def unstable_criterion(weight: torch.Tensor, steps: dict[int, torch.Tensor], eps: float) -> float:
    """Eq. 6: sum over bits b of 2^-b times the fraction of weights within eps*step/2 of a
    quantization bound (a midpoint between two adjacent levels inside the clipping range)."""
    total = 0.0
    w = weight.detach()
    for bits, step in steps.items():
        qmin, qmax = int_range(bits, signed=True)
        v = w / step.detach()
        inside = (v >= qmin) & (v <= qmax)
        near_bound = (v - v.round()).abs() > (1 - eps) / 2
        total += float((inside & near_bound).sum()) / w.numel() / 2**bits
    return total


def freeze_count(ratio: float, searchable: int, progress: float) -> int:
    """Eq. 7's 𝒦 at ``progress`` in [0, 1]: cosine decay from ratio * searchable to 0."""
    return int(round(ratio * searchable * 0.5 * (1 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))))


def idm_distance(student: torch.Tensor, target: torch.Tensor, floor: float) -> torch.Tensor:
    """Eq. 8 for one layer: E_x || max(Q, O^S) - max(Q, O^H) ||, the norm taken as the RMS over
    the sample's elements so that θ does not depend on feature-map size. O^S and O^H are BatchNorm
    outputs, i.e. already (O - mu) / sqrt(sigma + zeta) * eta + xi with the set's own affine."""
    diff = student.clamp(min=floor) - target.detach().clamp(min=floor)
    return diff.flatten(1).pow(2).mean(1).sqrt().mean()


@register_strategy("oneshot")
class OneShot(Strategy):
    """RFQ: max policy (+ min policy) + K uniformly sampled policies per step, bit scheduler, IDM,
    fairness, QE."""

    options_cls = OneShotOptions

    def __init__(self, trainer, options: OneShotOptions):
        super().__init__(trainer, options)
        self.modules = self.net.layer_modules()
        self.searchable = [l.name for l in self.net.layers if l.role is Role.NORMAL and len(l.w_bits) > 1]
        self.frozen: list[str] = []
        self.bns = {bn.layer: bn for bn in self.net.transitional_bns()}
        normal = [l for l in self.net.layers if l.role is Role.NORMAL] or list(self.net.layers)
        self.uniform_w = sorted({b for l in normal for b in l.w_bits})
        self.uniform_a = sorted({b for l in normal for b in l.a_bits})

    # -- bit-width scheduler (Eq. 6-7) ---------------------------------------------------------
    def w_candidates(self, name: str) -> tuple[int, ...]:
        bits = self.net.layer(name).w_bits
        return bits[1:] if name in self.frozen and len(bits) > 1 else bits

    def criteria(self) -> dict[str, float]:
        out = {}
        for name in self.searchable:
            quant = self.modules[name].weight_quant
            steps = {b: quant.step(b) for b in self.net.layer(name).w_bits}
            out[name] = unstable_criterion(self.modules[name].float_weight(), steps, self.options.unstable_eps)
        return out

    def reschedule(self) -> None:
        k = freeze_count(self.options.freeze_ratio, len(self.searchable), self.trainer.progress)
        scores = self.criteria()
        self.frozen = sorted(scores, key=lambda n: (-scores[n], n))[:k]

    # -- one step ----------------------------------------------------------------------------
    def _sample(self) -> Policy:
        rng = self.trainer.rng
        if self.options.uniform_share > 0 and rng.random() < self.options.uniform_share:
            return self._sample_uniform()
        return Policy({l.name: (rng.choice(self.w_candidates(l.name)), rng.choice(l.a_bits)) for l in self.net.layers})

    def _sample_uniform(self) -> Policy:
        """One weight and one activation bit-width for every layer (each layer takes its nearest
        allowed one; first/last keep theirs, frozen layers skip their smallest weight bit)."""
        rng = self.trainer.rng
        w, a = rng.choice(self.uniform_w), rng.choice(self.uniform_a)
        return Policy({l.name: (nearest_bits(self.w_candidates(l.name), w), nearest_bits(l.a_bits, a))
                       for l in self.net.layers})

    def _min_policy(self) -> Policy:
        """Every layer at its smallest weight (frozen layers: the next one up) and activation bit-width."""
        return Policy({l.name: (min(self.w_candidates(l.name)), min(l.a_bits)) for l in self.net.layers})

    def _capture(self, layers: set[str], detach: bool) -> tuple[dict[str, torch.Tensor], list]:
        outputs: dict[str, torch.Tensor] = {}
        handles = []
        for name in layers:
            bn: TransitionalBatchNorm | None = self.bns.get(name)
            if bn is not None:
                def hook(module, args, out, name=name):
                    outputs[name] = out.detach() if detach else out
                handles.append(bn.register_forward_hook(hook))
        return outputs, handles

    def _qe_loss(self, policy: Policy) -> torch.Tensor:
        """Supp. B.2: mean over layers of ||clip(W) - sg(Q(W))||^2 / numel at the policy's weight bits."""
        terms = []
        for name in self.searchable:
            module, bits = self.modules[name], policy[name].w
            step = module.weight_quant.step(bits).detach()
            qmin, qmax = int_range(bits, signed=True)
            weight = module.float_weight()
            clipped = weight.clamp(qmin * step, qmax * step)
            with torch.no_grad():
                quantized = module.weight_quant(weight, bits)
            terms.append((clipped - quantized).pow(2).mean())
        return torch.stack(terms).mean() if terms else torch.zeros((), device=self.trainer.device)

    def _fairness_loss(self, layers: set[str]) -> torch.Tensor:
        """Supp. B.2: -(wd/2) * ||clip(W)||^2 over the smallest bit's range cancels the (coupled)
        weight decay on those weights for this step."""
        wd = self.trainer.cfg.weight_decay
        terms = []
        for name in sorted(layers):  # a fixed summation order keeps resumed runs bit-identical
            module = self.modules[name]
            bits = min(self.w_candidates(name))
            step = module.weight_quant.step(bits).detach()
            qmin, qmax = int_range(bits, signed=True)
            terms.append(module.weight.clamp(qmin * step, qmax * step).pow(2).sum())
        return -0.5 * wd * torch.stack(terms).sum() if terms else torch.zeros((), device=self.trainer.device)

    def train_step(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        o, trainer = self.options, self.trainer
        if o.scheduler and trainer.global_step % o.schedule_every == 0:
            self.reschedule()
        teacher = trainer.teacher_logits(images)
        policies = ([Policy.max(self.net)] + ([self._min_policy()] if o.sandwich else [])
                    + [self._sample() for _ in range(o.samples)])
        n = len(policies)
        qe_on = o.qe_weight > 0 and trainer.progress >= o.qe_start
        targets, handles = self._capture(set(self.bns), detach=True) if o.idm else ({}, [])
        first = trainer.run(policies[0], images, labels, teacher_logits=teacher, weight=1 / n, sync=n == 1)
        for h in handles:
            h.remove()
        ran_at_min: set[str] = set()
        losses = [first.loss]
        for i, policy in enumerate(policies[1:], start=1):
            last = i == n - 1
            at_min = {name for name in self.searchable if policy[name].w == min(self.w_candidates(name))}
            ran_at_min |= at_min
            outputs, handles = self._capture(at_min, detach=False) if o.idm else ({}, [])

            def extra(policy=policy, outputs=outputs, last=last) -> torch.Tensor:
                loss = torch.zeros((), device=images.device)
                if qe_on:
                    loss = loss + o.qe_weight * self._qe_loss(policy)
                if outputs:
                    idm = sum(idm_distance(outputs[k], targets[k], o.idm_floor) for k in outputs)
                    loss = loss + o.idm_weight * idm
                if last and o.fairness and ran_at_min:
                    loss = loss + n * self._fairness_loss(ran_at_min)  # run() scales by 1/n
                return loss

            teacher_i = teacher if teacher is not None else (first.logits if trainer.cfg.distill.inplace else None)
            out = trainer.run(policy, images, labels, teacher_logits=teacher_i, extra_loss=extra, weight=1 / n, sync=last)
            for h in handles:
                h.remove()
            losses.append(out.loss)
        trainer.optimizer_step()
        return {"loss": sum(losses) / n, "loss_max": losses[0], "frozen": float(len(self.frozen))}

    def state_dict(self) -> dict[str, Any]:
        return {"frozen": list(self.frozen)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.frozen = list(state["frozen"])
