"""Content hashes that make corrupt files fail loudly on load.

Every file mpqfx writes for later loading records a SHA-256 of its content: torch files
(checkpoints, supernets) carry it as a ``sha256`` entry of their payload, safetensors files in
their metadata, ONNX files in a metadata property. Loading recomputes it; a mismatch is an error
that names the file, never a silent fallback.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch

DIGEST_KEY = "sha256"


def _update(h: "hashlib._Hash", value: Any) -> None:
    if isinstance(value, torch.Tensor):
        t = value.detach().contiguous().cpu()
        h.update(f"T|{t.dtype}|{list(t.shape)}|".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(value, dict):
        h.update(f"D{len(value)}|".encode())
        for key in sorted(value, key=repr):
            h.update(f"{key!r}=".encode())
            _update(h, value[key])
    elif isinstance(value, (list, tuple)):
        h.update(f"L{len(value)}|".encode())
        for item in value:
            _update(h, item)
    else:  # numbers, strings, None, enums: their type and exact repr
        h.update(f"{type(value).__name__}:{value!r}|".encode())


def digest(value: Any) -> str:
    """SHA-256 of a nested structure of dicts, lists, tensors and plain values (tensor bytes included)."""
    h = hashlib.sha256()
    _update(h, value)
    return h.hexdigest()


def seal(payload: dict[str, Any]) -> dict[str, Any]:
    """``payload`` with its digest under ``sha256``."""
    body = {k: v for k, v in payload.items() if k != DIGEST_KEY}
    return {**body, DIGEST_KEY: digest(body)}


def intact(payload: dict[str, Any]) -> bool:
    """Whether a sealed payload still matches the digest it records."""
    return damage(payload) is None


def damage(payload: dict[str, Any]) -> str | None:
    """Why a sealed payload cannot be trusted ("is corrupt: ...", "records no SHA-256 ..."), or None."""
    if DIGEST_KEY not in payload:
        return "records no SHA-256 (it was not written by this version of mpqfx)"
    body = {k: v for k, v in payload.items() if k != DIGEST_KEY}
    if payload[DIGEST_KEY] != digest(body):
        return "is corrupt: its content does not match the SHA-256 it records"
    return None
