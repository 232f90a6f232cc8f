"""Error types raised for bad user input; the CLI prints their message as one line."""

from __future__ import annotations

import difflib
from typing import Iterable


class MpqfxError(Exception):
    """Base class of every error mpqfx raises on purpose for bad input."""


class RecipeError(MpqfxError, ValueError):
    """A recipe has fields of the wrong type or range; the message lists every problem."""

    def __init__(self, problems: list[str], source: str = "recipe"):
        self.problems = list(problems)
        self.source = source
        super().__init__(f"{source}: " + "; ".join(self.problems))


class PolicyError(MpqfxError, ValueError):
    """A policy names an unknown layer or a bit-width the layer does not allow."""


class UnknownModelError(MpqfxError, ValueError):
    """A timm model name that timm does not know."""


class UntraceableModelError(MpqfxError):
    """torch.fx could not trace the model; the message names the module and the recipe key that fixes it."""


class UnknownNameError(MpqfxError, KeyError):
    """A registry lookup (strategy, search backend, ...) with a name nobody registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a run; the message says what was running and how to continue."""


def closest(word: str, choices: Iterable[str]) -> str | None:
    """The choice ``word`` most likely misspells (difflib, similarity >= 0.6), or None."""
    matches = difflib.get_close_matches(word, [str(c) for c in choices], n=1)
    return matches[0] if matches else None


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """``" (did you mean 'x'?)"`` for the closest choice, or "" when none is close."""
    match = closest(word, choices)
    return f" (did you mean {match!r}?)" if match else ""
