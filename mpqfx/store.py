"""Supernet files: everything needed to rebuild a trained supernet without training.

A file holds the timm model spec (name + kwargs), the example input ``prepare`` annotated with,
the resolved recipe, the weights and a fingerprint, plus optional extras (e.g. Hessian traces),
sealed with a SHA-256 that loading checks.
Loading re-creates the float model with ``pretrained=False``, runs ``prepare`` with the same
recipe and example input, checks the fingerprint and loads the weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mpqfx.errors import MpqfxError
from mpqfx.integrity import damage, seal
from mpqfx.io import atomic_open
from mpqfx.models import create_model
from mpqfx.prepare import prepare
from mpqfx.recipe import Recipe
from mpqfx.supernet import ModelSpec, Supernet
from mpqfx.train.checkpoint import CheckpointError, fingerprint, mismatch, reason

FORMAT = "mpqfx.supernet/1"
SUPERNET_NAME = "supernet.pt"


def save_supernet(net: Supernet, path: str | Path, model_spec: ModelSpec | None = None,
                  extras: dict[str, Any] | None = None) -> Path:
    """Write ``net`` to ``path`` atomically; ``model_spec`` defaults to the one ``prepare`` recorded."""
    spec = model_spec or net.model_spec
    if spec is None:
        raise MpqfxError("cannot save a supernet built from a module without knowing how to re-create it: "
                         "pass model_spec=ModelSpec('<timm name>', {...}) to prepare() or save_supernet()")
    state = net.state_dict()
    payload = {"format": FORMAT, "model": {"name": spec.name, "kwargs": dict(spec.kwargs)},
               "example_input": net.example_input, "recipe": net.recipe.to_dict(), "state_dict": state,
               "fingerprint": fingerprint(state), "extras": extras or {}}
    path = Path(path)
    with atomic_open(path, "wb") as fh:
        torch.save(seal(payload), fh)
    return path


def _damaged(path: Path, problem: str) -> CheckpointError:
    """The error for a damaged supernet file; in a run directory, resuming the run writes it again
    (from the training checkpoint, or float training's for float.pt)."""
    if (path.parent / "run.json").is_file():
        return CheckpointError(f"supernet file {str(path)!r} {problem}; delete it and run "
                               f"`mpqfx compress --out {path.parent} --resume` to write it again")
    return CheckpointError(f"supernet file {str(path)!r} {problem}; save the supernet again")


def load_supernet(path: str | Path, device: str | torch.device = "cpu") -> tuple[Supernet, dict[str, Any]]:
    """The supernet stored at ``path`` (a file, or a run directory holding supernet.pt) and its extras."""
    path = Path(path)
    if path.is_dir():
        path = path / SUPERNET_NAME
    if not path.is_file():
        raise CheckpointError(f"no supernet file at {str(path)!r} (train one with `mpqfx compress` first)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise _damaged(path, f"is corrupt or truncated ({reason(exc)})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{str(path)!r} is not an mpqfx supernet file (format {FORMAT})")
    problem = damage(payload)
    if problem:
        raise _damaged(path, problem)
    spec = ModelSpec(payload["model"]["name"], payload["model"]["kwargs"])
    model = create_model(spec.name, **spec.kwargs)
    net = prepare(model, Recipe.from_dict(payload["recipe"], str(path)), example_input=payload["example_input"],
                  inplace=True, model_spec=spec)
    problem = mismatch(fingerprint(net.state_dict()), payload["fingerprint"], "supernet layers")
    if problem:
        raise CheckpointError(f"supernet file {str(path)!r} does not match {spec.name} rebuilt with its recipe: {problem}")
    net.load_state_dict(payload["state_dict"])
    return net.to(device), payload["extras"]
