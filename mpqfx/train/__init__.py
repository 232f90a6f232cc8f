"""Training: the shared loop and the strategies (declared in ``mpqfx.registry``, imported on first use).

The names below are imported on first access, so that ``mpqfx.train.options`` stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mpqfx.lazy import lazy_attributes

if TYPE_CHECKING:
    from mpqfx.train.loop import Trainer, TrainResult, train
    from mpqfx.train.strategy import STRATEGIES, Strategy, register_strategy

_LAZY = {**dict.fromkeys(("STRATEGIES", "Strategy", "register_strategy"), "mpqfx.train.strategy"),
         **dict.fromkeys(("Trainer", "TrainResult", "train"), "mpqfx.train.loop")}

__all__ = ["STRATEGIES", "Strategy", "register_strategy", "Trainer", "TrainResult", "train"]

__getattr__ = lazy_attributes(__name__, _LAZY)
