"""``limpq``: LIMPQ importance-indicator training (Tang et al., ECCV'22, §3.4).

Each step runs every uniform bit-width and one (or more) random per-layer policies, accumulates
their gradients, then makes one update. The learned per-bit LSQ steps of weights and
activations are the layer-importance indicators the ILP search uses (Eq. 4); ``finish`` writes
them to ``indicators.json`` in the run directory.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from mpqfx.graph.layer_info import Role
from mpqfx.io import atomic_write_text
from mpqfx.quant.policy import Policy
from mpqfx.search.indicators import FORMAT as INDICATORS_FORMAT
from mpqfx.supernet import Supernet
from mpqfx.train.options import LimpqOptions
from mpqfx.train.strategy import Strategy, register_strategy

INDICATORS_NAME = "indicators.json"


def importance_indicators(net: Supernet) -> dict[str, dict[str, dict[int, float]]]:
    """Per layer, the learned step of every weight and activation bit-width: {name: {"w": {b: s}, "a": {b: s}}}."""
    out = {}
    for name, module in net.layer_modules().items():
        out[name] = {kind: {b: float(quant.step(b).detach()) for b in quant.bits}
                     for kind, quant in (("w", module.weight_quant), ("a", module.act_quant))}
    return out


def save_indicators(path: Path, indicators: dict[str, dict[str, dict[int, float]]]) -> None:
    data = {"format": INDICATORS_FORMAT,
            "layers": {n: {k: {str(b): s for b, s in v.items()} for k, v in kinds.items()} for n, kinds in indicators.items()}}
    atomic_write_text(path, json.dumps(data, indent=1))


@register_strategy("limpq")
class Limpq(Strategy):
    """LIMPQ: all uniform bit-widths + random policies per step, one update; steps become indicators."""

    options_cls = LimpqOptions

    def __init__(self, trainer, options: LimpqOptions):
        super().__init__(trainer, options)
        normal = [l for l in self.net.layers if l.role is Role.NORMAL] or list(self.net.layers)
        self.uniform_bits = sorted({b for l in normal for b in l.w_bits + l.a_bits}, reverse=True)

    def train_step(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        trainer = self.trainer
        policies = [Policy.uniform(self.net, b) for b in self.uniform_bits]
        policies += [Policy.sample(self.net, trainer.rng) for _ in range(self.options.random_policies)]
        n = len(policies)
        teacher = trainer.teacher_logits(images)
        losses, top = [], None
        for i, policy in enumerate(policies):
            teacher_i = teacher if teacher is not None else (top if trainer.cfg.distill.inplace else None)
            out = trainer.run(policy, images, labels, teacher_logits=teacher_i, weight=1 / n, sync=i == n - 1)
            top = out.logits if top is None else top
            losses.append(out.loss)
        trainer.optimizer_step()
        return {"loss": sum(losses) / n, f"loss_w{self.uniform_bits[-1]}": losses[len(self.uniform_bits) - 1]}

    def finish(self, run_dir: Path | None) -> None:
        if run_dir is not None and self.trainer.is_main:
            save_indicators(run_dir / INDICATORS_NAME, importance_indicators(self.net))
