"""The Strategy interface and its registry.

A strategy decides, for every training step, which policies run and which losses they get;
the shared loop (mpqfx/train/loop.py) owns everything else: data, optimizers, schedules,
distillation, checkpoints, progress and DDP.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from mpqfx.registry import STRATEGIES
from mpqfx.train.options import NoOptions

if TYPE_CHECKING:
    from mpqfx.train.loop import Trainer

register_strategy = STRATEGIES.register


class Strategy:
    """Base class of training strategies; register subclasses with ``@register_strategy(name)``.

    Example:
        >>> @register_strategy("max_only")
        ... class MaxOnly(Strategy):
        ...     def train_step(self, images, labels):
        ...         out = self.trainer.run(Policy.max(self.net), images, labels)
        ...         self.trainer.optimizer_step()
        ...         return {"loss": out.loss}
    """

    options_cls: ClassVar[type] = NoOptions

    def __init__(self, trainer: "Trainer", options: Any):
        self.trainer = trainer
        self.net = trainer.net
        self.options = options

    def setup(self) -> None:
        """Runs once before the first step of a fresh run (not after a resume)."""

    def train_step(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        """Forward/backward the step's policies through ``trainer.run`` and call ``trainer.optimizer_step``."""
        raise NotImplementedError

    def finish(self, run_dir: Path | None) -> None:
        """Runs once after the last step (e.g. to write indicators)."""

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint must hold for an exact resume."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
