"""Recipes: frozen, validated configuration of how a model is quantized, trained and searched.

A recipe is YAML on disk (``recipes/*.yaml`` ship with mpqfx) and a frozen dataclass in Python.
Loading gathers every problem into one :class:`~mpqfx.errors.RecipeError`.
"""

from __future__ import annotations

import dataclasses
import enum
import importlib.resources
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mpqfx.config import check_all, from_mapping, to_mapping
from mpqfx.errors import RecipeError

MIN_BITS, MAX_BITS = 1, 8


class BnMode(str, enum.Enum):
    """How BatchNorms after quantized convs are specialised per bit-width."""

    TRANSITIONAL = "transitional"  # one set per (previous layer bits, this layer bits), Bit-Mixer §3.2
    SWITCHABLE = "switchable"  # one set per (w_bits, a_bits) of the conv itself
    SHARED = "shared"  # the original BN, shared by every bit-width


def _bits_problems(name: str, bits: tuple[int, ...] | None, allow_none: bool = False) -> list[str]:
    if bits is None:
        return [] if allow_none else [f"{name}: must be a list of bit-widths"]
    if len(bits) == 0:
        return [f"{name}: must not be empty (allowed bit-widths: {MIN_BITS}..{MAX_BITS})"]
    bad = [b for b in bits if not MIN_BITS <= b <= MAX_BITS]
    if bad:
        return [f"{name}: bit-widths {bad} out of range (allowed: {MIN_BITS}..{MAX_BITS})"]
    if len(set(bits)) != len(bits):
        return [f"{name}: repeated bit-widths in {list(bits)}"]
    return []


@dataclass(frozen=True)
class BitOverride:
    """Bit candidates for the layers whose qualified name matches ``pattern`` (fnmatch syntax)."""

    pattern: str
    w_bits: tuple[int, ...] | None = None
    a_bits: tuple[int, ...] | None = None

    def problems(self) -> list[str]:
        found = _bits_problems("w_bits", self.w_bits, True) + _bits_problems("a_bits", self.a_bits, True)
        if not self.pattern:
            found.append("pattern: must not be empty")
        if self.w_bits is None and self.a_bits is None:
            found.append("needs w_bits or a_bits")
        return found


@dataclass(frozen=True)
class QuantConfig:
    """Bit candidates and the layer rules applied to them."""

    w_bits: tuple[int, ...] = (2, 3, 4, 5, 6)
    a_bits: tuple[int, ...] = (2, 3, 4, 5, 6)
    first_last_bits: int | None = 8  # None: first/last layers search like the others
    depthwise_exclude: tuple[int, ...] = (2,)
    overrides: tuple[BitOverride, ...] = ()
    bn: BnMode = BnMode.TRANSITIONAL

    def problems(self) -> list[str]:
        found = _bits_problems("w_bits", self.w_bits) + _bits_problems("a_bits", self.a_bits)
        if self.first_last_bits is not None and not MIN_BITS <= self.first_last_bits <= MAX_BITS:
            found.append(f"first_last_bits: {self.first_last_bits} out of range (allowed: {MIN_BITS}..{MAX_BITS} or null)")
        if set(self.w_bits) <= set(self.depthwise_exclude):
            found.append("depthwise_exclude: removes every weight bit-width of depthwise convs")
        return found


@dataclass(frozen=True)
class GraphConfig:
    """How the model is traced: extra leaf modules and the example input shape."""

    leaf_modules: tuple[str, ...] = ()  # qualified-name patterns or class names kept opaque
    input_size: tuple[int, ...] | None = None  # (C, H, W); default: the model's timm pretrained_cfg

    def problems(self) -> list[str]:
        if self.input_size is not None and (len(self.input_size) != 3 or min(self.input_size) < 1):
            return [f"input_size: expected [C, H, W] of positive ints, got {list(self.input_size)}"]
        return []


@dataclass(frozen=True)
class Recipe:
    """Everything mpqfx needs to know about how to compress a model.

    Example:
        >>> from mpqfx import Recipe
        >>> r = Recipe.load("default")
        >>> r.quant.w_bits
        (2, 3, 4, 5, 6)
    """

    name: str = "custom"
    description: str = ""
    quant: QuantConfig = field(default_factory=QuantConfig)
    graph: GraphConfig = field(default_factory=GraphConfig)

    # -- loading -----------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Any, source: str = "recipe") -> "Recipe":
        """Build and validate a recipe from plain data; raise RecipeError listing every problem."""
        problems: list[str] = []
        recipe = from_mapping(cls, data, "", problems)
        if recipe is not None:
            problems += check_all(recipe)
        if problems:
            raise RecipeError(problems, source)
        return recipe

    @classmethod
    def from_yaml(cls, text: str, source: str = "recipe") -> "Recipe":
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise RecipeError([f"not valid YAML: {' '.join(str(exc).split())}"], source) from None
        return cls.from_dict(data, source)

    @classmethod
    def load(cls, name_or_path: "str | Path | Recipe") -> "Recipe":
        """A shipped recipe by name (``mpqfx recipes`` lists them) or a YAML file by path."""
        if isinstance(name_or_path, Recipe):
            return name_or_path
        path = Path(name_or_path)
        if path.suffix in (".yaml", ".yml") or path.exists():
            try:
                text = path.read_text(encoding="utf-8")
            except OSError as exc:
                raise RecipeError([f"cannot read: {exc.strerror}"], str(path)) from None
            return cls.from_yaml(text, str(path))
        shipped = shipped_recipes()
        if str(name_or_path) not in shipped:
            raise RecipeError(
                [f"no shipped recipe named {str(name_or_path)!r} (shipped: {', '.join(sorted(shipped))}); "
                 "or pass a path to a .yaml file"], "recipe")
        return cls.from_yaml(shipped[str(name_or_path)], f"recipe {name_or_path!r}")

    def check(self) -> "Recipe":
        """Raise RecipeError if a recipe built in Python has bad values; return it otherwise."""
        problems = check_all(self)
        if problems:
            raise RecipeError(problems, f"recipe {self.name!r}")
        return self

    # -- saving ------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return to_mapping(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def replace(self, **changes: Any) -> "Recipe":
        """A copy with top-level fields replaced (``dataclasses.replace``), validated."""
        return dataclasses.replace(self, **changes).check()


def shipped_recipes() -> dict[str, str]:
    """YAML text of every recipe shipped in ``mpqfx.recipes``, keyed by name."""
    root = importlib.resources.files("mpqfx.recipes")
    return {p.name.rsplit(".", 1)[0]: p.read_text(encoding="utf-8")
            for p in root.iterdir() if p.name.endswith(".yaml")}
