"""Creating timm models by name, with helpful errors for typos."""

from __future__ import annotations

import difflib
from typing import Any

import timm
from torch import nn

from mpqfx.errors import UnknownModelError


def create_model(name: str, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """``timm.create_model`` that names close matches when ``name`` is unknown."""
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
        hint = f"; close matches: {', '.join(close)}" if close else "; see timm.list_models()"
        raise UnknownModelError(f"unknown timm model {name!r}{hint}")
    return timm.create_model(name, pretrained=pretrained, **kwargs)
