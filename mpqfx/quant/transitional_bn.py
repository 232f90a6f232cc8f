"""Transitional BatchNorm (Bit-Mixer §3.2) and its switchable variant.

A BatchNorm right after a quantized conv is replaced by a module holding several copies of it
(gamma, beta, running mean/var each), one per bit-width *key*; the supernet selects the key
from the active policy before each forward:

* ``transitional``: key = (previous quantized layer's weight bits, this layer's weight bits);
* ``switchable``: key = (this layer's weight bits, this layer's activation bits).

The original BatchNorm is kept as the ``fp`` set, used in bypass (float) mode, so bypass
output equals the float model's bit for bit. Every set starts as a copy of the original.
"""

from __future__ import annotations

import copy
from typing import Iterable, TypeVar

import torch
from torch import nn

from mpqfx.quant.layers import LayerBits
from mpqfx.recipe import BnMode

FLOAT_KEY = "fp"
M = TypeVar("M", bound=nn.Module)


def clone_module(module: M) -> M:
    """An independent copy of a module whose state is its parameters, buffers and submodules.

    ``copy.deepcopy`` costs ~4x more through its generic machinery, which adds up to half a
    second for the ~1300 BatchNorm sets of an EfficientNet.
    """
    new = copy.copy(module)
    for key, value in module.__dict__.items():  # hook dicts and the like must not be shared
        if isinstance(value, (dict, set)):
            new.__dict__[key] = type(value)(value)
    new._parameters = {k: None if p is None else nn.Parameter(p.detach().clone(), p.requires_grad)
                       for k, p in module._parameters.items()}
    new._buffers = {k: None if b is None else b.clone() for k, b in module._buffers.items()}
    new._modules = {k: None if m is None else clone_module(m) for k, m in module._modules.items()}
    return new


def transition_key(prev_w: int | None, this_w: int) -> str:
    """Key of the set for a transition from a layer at ``prev_w`` bits (None: network input)."""
    return f"p{'in' if prev_w is None else prev_w}_c{this_w}"


def switch_key(w: int, a: int) -> str:
    return f"w{w}_a{a}"


class TransitionalBatchNorm(nn.Module):
    """A BatchNorm (or timm BatchNormAct2d) specialised per bit-width key.

    ``layer`` is the quantized conv this BN follows, ``prev_layer`` the previous quantized layer
    in the layer graph (None when the conv reads the network input).
    """

    def __init__(self, bn: nn.Module, mode: BnMode, keys: Iterable[str], layer: str, prev_layer: str | None):
        super().__init__()
        self.mode = BnMode(mode)
        self.layer = layer
        self.prev_layer = prev_layer
        sets = {FLOAT_KEY: bn}
        sets.update({k: clone_module(bn) for k in keys})
        self.sets = nn.ModuleDict(sets)
        self.active = FLOAT_KEY

    def key_for(self, this: LayerBits, prev: LayerBits | None, prev_max_w: int | None) -> str:
        """The set to use when this layer runs at ``this`` and the previous one at ``prev``.

        A float layer uses the ``fp`` set; a float previous layer counts as its highest bit-width.
        """
        if this.w is None or this.a is None:
            return FLOAT_KEY
        if self.mode is BnMode.SWITCHABLE:
            return switch_key(this.w, this.a)
        prev_w = None if prev is None else (prev.w if prev.w is not None else prev_max_w)
        return transition_key(prev_w, this.w)

    def select(self, key: str) -> None:
        if key not in self.sets:
            raise KeyError(f"{self.layer}: no BatchNorm set {key!r} (have {list(self.sets)})")
        self.active = key

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.sets[self.active](x)

    def extra_repr(self) -> str:
        return f"mode={self.mode.value}, layer={self.layer!r}, prev_layer={self.prev_layer!r}, sets={len(self.sets)}"
