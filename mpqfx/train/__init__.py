"""Training: the shared loop and the four strategies (registered on import)."""

from mpqfx.train.strategy import STRATEGIES, Strategy, register_strategy
from mpqfx.train import bitmixer, double_rounding, float_model, limpq, oneshot  # noqa: F401  (register the strategies)
from mpqfx.train.loop import Trainer, TrainResult, train

__all__ = ["STRATEGIES", "Strategy", "register_strategy", "Trainer", "TrainResult", "train"]
