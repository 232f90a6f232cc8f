"""``float``: trains the original float model (the supernet in bypass mode).

``compress`` runs it as the warm start when no pretrained or local weights are given; a
supernet strategy then starts from those weights after ``Supernet.refit_quantizers``.
"""

from __future__ import annotations

import torch

from mpqfx.quant.policy import Policy
from mpqfx.train.strategy import Strategy, register_strategy


@register_strategy("float")
class FloatTraining(Strategy):
    """One forward/backward of the float model per step."""

    def train_step(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        out = self.trainer.run(Policy.bypass(self.net.layers), images, labels)
        self.trainer.optimizer_step()
        return {"loss": out.loss}
