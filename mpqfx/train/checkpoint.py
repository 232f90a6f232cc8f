"""Training checkpoints: atomic writes, RNG states, and a clear error when one does not fit."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mpqfx.errors import MpqfxError
from mpqfx.integrity import damage, seal
from mpqfx.io import atomic_open

FORMAT = "mpqfx.checkpoint/1"


class CheckpointError(MpqfxError):
    """A checkpoint is missing, unreadable, or belongs to another model or recipe. ``then_resume``:
    the message ends by telling the user to resume (a caller may add the command that does it)."""

    def __init__(self, message: str, then_resume: bool = False):
        super().__init__(message)
        self.then_resume = then_resume


def rng_state() -> dict[str, Any]:
    """Python, numpy and torch (CPU and CUDA) global RNG states, in types torch.load accepts safely."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "gauss": float(gauss)}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(as_tuples(state["python"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def as_tuples(value: Any) -> Any:
    return tuple(as_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def fingerprint(state_dict: dict[str, torch.Tensor]) -> dict[str, list[int]]:
    """Names and shapes of a model's state: two supernets match iff their fingerprints do."""
    return {k: list(v.shape) for k, v in state_dict.items()}


def previous_path(path: Path) -> Path:
    """Where the checkpoint before ``path`` is kept: ``checkpoint.pt`` -> ``checkpoint.prev.pt``."""
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def save_checkpoint(path: Path, state: dict[str, Any], keep_previous: bool = False) -> None:
    """Write ``state`` with its SHA-256 to ``path`` atomically (temp file, fsync, rename);
    ``keep_previous`` first moves the checkpoint already at ``path`` to :func:`previous_path`."""
    if keep_previous and path.is_file():
        os.replace(path, previous_path(path))
    with atomic_open(path, "wb") as fh:
        torch.save(seal({"format": FORMAT, **state}), fh)


def reason(exc: Exception) -> str:
    """An exception as "Type: first line of its message", never cut mid-sentence."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def load_checkpoint(path: Path, map_location: Any = "cpu") -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {str(path)!r}: nothing to resume")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for truncated or corrupt zips
        raise CheckpointError(f"checkpoint {str(path)!r} is corrupt or truncated ({reason(exc)})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{str(path)!r} is not an mpqfx checkpoint (format {FORMAT})")
    problem = damage(state)
    if problem:
        raise CheckpointError(f"checkpoint {str(path)!r} {problem}")
    return state


def load_latest_checkpoint(path: Path, map_location: Any = "cpu") -> tuple[dict[str, Any], str | None]:
    """The checkpoint at ``path``, or the one kept before it when ``path`` is missing or damaged;
    (state, why ``path`` was passed over or None). When neither loads, the error says what to do."""
    try:
        return load_checkpoint(path, map_location), None
    except CheckpointError as latest:
        previous = previous_path(path)
        if not previous.is_file():
            if not path.is_file():
                raise
            raise CheckpointError(f"{latest}; no earlier checkpoint is kept. Delete it ({str(path)!r}) to train "
                                  "this phase again from step 0, then resume", then_resume=True) from None
        try:
            return load_checkpoint(previous, map_location), str(latest)
        except CheckpointError as earlier:
            raise CheckpointError(f"{latest}; the earlier {earlier}. Delete both to train this phase again from "
                                  "step 0, then resume", then_resume=True) from None


def peek_progress(path: Path) -> tuple[int, int | None] | None:
    """(step, total steps or None) a checkpoint was written at, read without checking its hash;
    None when it cannot be read."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return int(state["step"]), state.get("total_steps")
    except Exception:  # a damaged file: the caller describes it as unusable
        return None


def mismatch(expected: dict[str, list[int]], found: dict[str, list[int]], what: str = "layers") -> str | None:
    """A one-line description of how two fingerprints differ, or None when they match."""
    missing = [k for k in expected if k not in found]
    extra = [k for k in found if k not in expected]
    shapes = [k for k in expected if k in found and expected[k] != found[k]]
    if not (missing or extra or shapes):
        return None
    parts = []
    for label, keys in (("missing", missing), ("unexpected", extra), ("different shape", shapes)):
        if keys:
            more = f" and {len(keys) - 3} more" if len(keys) > 3 else ""
            parts.append(f"{label}: {', '.join(keys[:3])}{more}")
    return f"{what} differ ({'; '.join(parts)})"


def recipe_differences(expected: dict[str, Any], found: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted names of the recipe fields whose values differ."""
    keys = sorted(set(expected) | set(found))
    out = []
    for k in keys:
        a, b = expected.get(k), found.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += recipe_differences(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}")
    return out
