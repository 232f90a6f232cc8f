"""Parsing of CLI option values that click's types do not cover."""

from __future__ import annotations

import torch

from mpqfx.errors import MpqfxError


def parse_input_size(text: str | None, default: torch.Tensor) -> torch.Tensor:
    """``--input-size``: "H" (square, channels from ``default``) or "C,H,W"; None keeps ``default``."""
    if text is None:
        return default
    try:
        dims = [int(v) for v in text.replace("x", ",").split(",")]
    except ValueError:
        dims = []
    if len(dims) == 1:
        dims = [default.shape[1], dims[0], dims[0]]
    if len(dims) != 3 or min(dims) < 1:
        raise MpqfxError(f"--input-size: expected H or C,H,W of positive integers, got {text!r}")
    return torch.randn(1, *dims, generator=torch.Generator().manual_seed(0))
