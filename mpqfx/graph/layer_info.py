"""What the annotate pass learns about each quantizable layer (read-only facts, no modules)."""

from __future__ import annotations

import enum
from dataclasses import dataclass


META_KEY = "mpqfx_layer"  # node.meta key of a traced call site's LayerInfo
MODULE_TYPES = "mpqfx_module_types"  # GraphModule.meta key: qualified name -> class name in the traced
# model (the GraphModule keeps traced-through modules as plain nn.Module containers)


class LayerKind(str, enum.Enum):
    CONV = "conv"
    DEPTHWISE = "depthwise"
    LINEAR = "linear"


class Role(str, enum.Enum):
    FIRST = "first"
    LAST = "last"
    NORMAL = "normal"


@dataclass(frozen=True)
class LayerInfo:
    """One quantizable conv/linear layer of a supernet.

    ``macs`` counts multiply-accumulates for one input sample over every call of the module
    (depthwise: k*k*C*H*W). ``in_shape``/``out_shape`` are per sample, of the first call.
    ``w_bits``/``a_bits`` are the bit-widths this layer may take after the recipe's rules.
    """

    name: str
    kind: LayerKind
    module_type: str
    macs: int
    params: int
    weight_shape: tuple[int, ...]
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    role: Role
    a_signed: bool
    signedness_source: str  # "graph" or "calibration"
    traced: bool
    w_bits: tuple[int, ...]
    a_bits: tuple[int, ...]
    order: int
    calls: int = 1


@dataclass(frozen=True)
class SkippedLayer:
    """A conv/linear weight the supernet leaves in float, with the reason."""

    name: str
    module_type: str
    params: int
    macs: int
    reason: str
