"""``bitmixer``: Bit-Mixer's 3-stage training (Bulat & Tzimiropoulos, ICCV'21, §3.3).

* Stage I: weights stay float; activations of all layers use one bit-width drawn uniformly
  each step.
* Stage II: weights and activations of all layers use one bit-width drawn uniformly each step.
* Stage III: with probability sigma as in stage II, otherwise every layer draws its own
  bit-width independently; 1 - sigma rises linearly from 0 to k (3/4) over the stage.

All stages share one schedule (the recipe's). Transitional BatchNorm is required (§3.2).
"""

from __future__ import annotations

import torch

from mpqfx.graph.layer_info import Role
from mpqfx.quant.policy import Policy, nearest_bits
from mpqfx.train.options import BitMixerOptions
from mpqfx.train.strategy import Strategy, register_strategy


@register_strategy("bitmixer")
class BitMixer(Strategy):
    """Bit-Mixer: activations-only, then uniform, then progressively layer-wise random bit-widths."""

    options_cls = BitMixerOptions

    def __init__(self, trainer, options: BitMixerOptions):
        super().__init__(trainer, options)
        normal = [l for l in self.net.layers if l.role is Role.NORMAL] or list(self.net.layers)
        self.bits = sorted({b for l in normal for b in l.w_bits})

    def stage_at(self, progress: float) -> tuple[int, float]:
        """(stage index 0/1/2, progress within that stage in [0, 1])."""
        start = 0.0
        for index, fraction in enumerate(self.options.stages):
            if progress < start + fraction or index == 2:
                return index, (progress - start) / fraction if fraction > 0 else 1.0
            start += fraction
        return 2, 1.0

    def layerwise_probability(self, progress: float) -> float:
        """1 - sigma: 0 before stage III, then rising linearly to k at the end."""
        stage, within = self.stage_at(progress)
        return self.options.k * min(max(within, 0.0), 1.0) if stage == 2 else 0.0

    def policy_at(self, progress: float) -> Policy:
        rng = self.trainer.rng
        stage, _ = self.stage_at(progress)
        bits = rng.choice(self.bits)
        if stage == 0:
            return Policy({l.name: (None, nearest_bits(l.a_bits, bits)) for l in self.net.layers})
        if stage == 2 and rng.random() < self.layerwise_probability(progress):
            table = {}
            for l in self.net.layers:
                b = rng.choice(l.w_bits)
                table[l.name] = (b, nearest_bits(l.a_bits, b))
            return Policy(table)
        return Policy.uniform(self.net, bits)

    def train_step(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        trainer = self.trainer
        stage, _ = self.stage_at(trainer.progress)
        out = trainer.run(self.policy_at(trainer.progress), images, labels, teacher_logits=trainer.teacher_logits(images))
        trainer.optimizer_step()
        return {"loss": out.loss, "stage": float(stage + 1)}
