"""Parsing of CLI option values that click's types do not cover."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click
import yaml

from mpqfx.errors import MpqfxError

if TYPE_CHECKING:
    import torch


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
    import torch  # here, not at the top: `mpqfx --help` must not import torch

    return torch.randn(1, *dims, generator=torch.Generator().manual_seed(0))


def parse_options(pairs: tuple[str, ...]) -> dict[str, object]:
    """``--option KEY=VALUE`` pairs as a mapping; values are read as YAML scalars (1.5, true, sensitivity)."""
    out: dict[str, object] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise MpqfxError(f"--option: expected KEY=VALUE, got {pair!r}")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            out[key.strip()] = value
    return out


def device_option(what: str):
    """``--device cpu|cuda`` (default: cuda when available) for a command whose supernet runs ``what``."""
    return click.option("--device", type=click.Choice(["cpu", "cuda"]), default=None,
                        help=f"Where the supernet {what} [default: cuda when available].")
