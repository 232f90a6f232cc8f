"""Policies: a bit-width pair (weights, input activations) for every quantized layer."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence, Union

import torch
import yaml

from mpqfx.config import short_repr
from mpqfx.errors import PolicyError
from mpqfx.graph.layer_info import LayerInfo
from mpqfx.io import atomic_write_text
from mpqfx.quant.layers import LayerBits

FORMAT = "mpqfx.policy/1"
MAX_POLICY_BITS = 64  # no quantizer is wider; the bound also keeps absurd YAML ints (0x<5000 digits>) out

Layers = Union[Sequence[LayerInfo], Any]  # a sequence of LayerInfo or anything with `.layers`
Rng = Union[random.Random, torch.Generator, int, None]


def layer_table(layers: Layers) -> Sequence[LayerInfo]:
    """The LayerInfo sequence of a Supernet (``.layers``) or the sequence itself."""
    return getattr(layers, "layers", layers)


def nearest_bits(allowed: Sequence[int], bits: int) -> int:
    """The allowed bit-width closest to ``bits``; ties go to the higher one."""
    return min(allowed, key=lambda b: (abs(b - bits), -b))


def _choose(options: Sequence[int], rng: random.Random | torch.Generator) -> int:
    if isinstance(rng, torch.Generator):
        return options[int(torch.randint(len(options), (1,), generator=rng))]
    return rng.choice(options)


class Policy(Mapping[str, LayerBits]):
    """Immutable mapping from layer qualified name to ``LayerBits(w, a)``; ``None`` bits mean float.

    Example:
        >>> import mpqfx, timm, torch
        >>> net = mpqfx.prepare(timm.create_model("test_resnet"), example_input=torch.randn(1, 3, 32, 32))
        >>> p = mpqfx.Policy.uniform(net, 4)          # first/last stay at their fixed 8 bits
        >>> net.set_policy(p)
        >>> mpqfx.Policy.from_yaml(p.to_yaml()) == p
        True
    """

    def __init__(self, bits: Mapping[str, Any]):
        table: dict[str, LayerBits] = {}
        for name, value in bits.items():
            if isinstance(value, Mapping):
                value = (value.get("w"), value.get("a"))
            if not isinstance(value, (tuple, list)) or len(value) != 2:
                raise PolicyError(f"layer {short_repr(name)}: expected (w_bits, a_bits), got {short_repr(value)}")
            for v in value:
                if v is not None and (isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_POLICY_BITS):
                    raise PolicyError(f"layer {short_repr(name)}: bit-widths must be integers in 1..{MAX_POLICY_BITS} "
                                      f"or null, got {short_repr(value)}")
            try:
                key = str(name)  # YAML keys may be ints, bools or null
            except ValueError:  # an int over 4300 digits
                raise PolicyError(f"layer {short_repr(name)}: not a usable layer name") from None
            table[key] = LayerBits(*value)
        self._bits = table

    # -- Mapping -----------------------------------------------------------------------------
    def __getitem__(self, name: str) -> LayerBits:
        return self._bits[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._bits)

    def __len__(self) -> int:
        return len(self._bits)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Policy) and self._bits == other._bits

    def __hash__(self) -> int:
        return hash(tuple(sorted(self._bits.items(), key=lambda kv: kv[0])))

    def __repr__(self) -> str:
        if self.is_bypass:
            return f"Policy(bypass, {len(self)} layers)"
        return f"Policy(w≈{self.mean_bits('w'):.2f}, a≈{self.mean_bits('a'):.2f}, {len(self)} layers)"

    # -- helpers -----------------------------------------------------------------------------
    @classmethod
    def uniform(cls, layers: Layers, w_bits: int, a_bits: int | None = None) -> "Policy":
        """Every layer at ``w_bits``/``a_bits``, or the nearest bit-width the layer allows."""
        a_bits = w_bits if a_bits is None else a_bits
        return cls({l.name: (nearest_bits(l.w_bits, w_bits), nearest_bits(l.a_bits, a_bits)) for l in layer_table(layers)})

    @classmethod
    def max(cls, layers: Layers) -> "Policy":
        return cls({l.name: (max(l.w_bits), max(l.a_bits)) for l in layer_table(layers)})

    @classmethod
    def min(cls, layers: Layers) -> "Policy":
        return cls({l.name: (min(l.w_bits), min(l.a_bits)) for l in layer_table(layers)})

    @classmethod
    def bypass(cls, layers: Layers) -> "Policy":
        """Every layer in full precision: the supernet computes the original float model."""
        return cls({l.name: (None, None) for l in layer_table(layers)})

    @classmethod
    def sample(cls, layers: Layers, rng: Rng = None) -> "Policy":
        """Weights and activations of each layer drawn uniformly from its allowed bit-widths.

        ``rng`` may be a ``random.Random``, a ``torch.Generator`` or an int seed; the same seed
        gives the same policy.
        """
        if rng is None or isinstance(rng, int):
            rng = random.Random(rng)
        return cls({l.name: (_choose(l.w_bits, rng), _choose(l.a_bits, rng)) for l in layer_table(layers)})

    @property
    def is_bypass(self) -> bool:
        return all(b.w is None and b.a is None for b in self._bits.values())

    def mean_bits(self, which: str = "w") -> float:
        """Plain average of the weight ('w') or activation ('a') bit-widths; float counts as 32."""
        values = [32 if getattr(b, which) is None else getattr(b, which) for b in self._bits.values()]
        return sum(values) / max(len(values), 1)

    def validate(self, layers: Layers) -> "Policy":
        """Raise PolicyError naming the first layer that is unknown, missing or at a forbidden bit."""
        table = {l.name: l for l in layer_table(layers)}
        for name, bits in self._bits.items():
            info = table.get(name)
            if info is None:
                raise PolicyError(f"policy names unknown layer {name!r} (the supernet has {len(table)} layers, "
                                  f"e.g. {', '.join(list(table)[:3])})")
            if bits.w is not None and bits.w not in info.w_bits:
                raise PolicyError(f"layer {name!r}: weight bit-width {bits.w} not allowed (allowed: {list(info.w_bits)})")
            if bits.a is not None and bits.a not in info.a_bits:
                raise PolicyError(f"layer {name!r}: activation bit-width {bits.a} not allowed (allowed: {list(info.a_bits)})")
        missing = [n for n in table if n not in self._bits]
        if missing:
            raise PolicyError(f"policy has no bit-widths for layer {missing[0]!r}"
                              + (f" and {len(missing) - 1} more" if len(missing) > 1 else ""))
        return self

    def replace(self, **changes: tuple[int | None, int | None]) -> "Policy":
        """A copy with some layers changed: ``p.replace(**{"fc": (4, 4)})``."""
        return Policy({**self._bits, **changes})

    # -- serialisation -----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "layers": {n: {"w": b.w, "a": b.a} for n, b in self._bits.items()}}

    @classmethod
    def from_dict(cls, data: Any, source: str = "policy") -> "Policy":
        if not isinstance(data, Mapping) or not isinstance(data.get("layers"), Mapping):
            raise PolicyError(f"{source}: expected a mapping with a 'layers' mapping (format {FORMAT})")
        if data.get("format", FORMAT) != FORMAT:
            raise PolicyError(f"{source}: unknown format {short_repr(data.get('format'))} (expected {FORMAT})")
        try:
            return cls(data["layers"])
        except PolicyError as exc:
            raise PolicyError(f"{source}: {exc}") from None

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str, source: str = "policy") -> "Policy":
        try:
            data = yaml.safe_load(text)
        # ValueError: an int over 4300 digits or a date like 2001-02-30; RecursionError: deep nesting
        except (yaml.YAMLError, ValueError, RecursionError) as exc:
            raise PolicyError(f"{source}: not valid YAML: {' '.join(str(exc).split())}") from None
        return cls.from_dict(data, source)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_json(cls, text: str, source: str = "policy") -> "Policy":
        try:
            data = json.loads(text)
        # ValueError: JSONDecodeError or an int over 4300 digits; RecursionError: deep nesting
        except (ValueError, RecursionError) as exc:
            raise PolicyError(f"{source}: not valid JSON: {exc}") from None
        return cls.from_dict(data, source)

    def save(self, path: str | Path) -> Path:
        """Write YAML (or JSON for a ``.json`` path) atomically."""
        path = Path(path)
        atomic_write_text(path, self.to_json() if path.suffix == ".json" else self.to_yaml())
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Policy":
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise PolicyError(f"cannot read policy file {str(path)!r}: {exc.strerror}") from None
        except UnicodeDecodeError as exc:
            raise PolicyError(f"cannot read policy file {str(path)!r}: not UTF-8 text "
                              f"({exc.reason} at byte {exc.start})") from None
        return cls.from_json(text, str(path)) if path.suffix == ".json" else cls.from_yaml(text, str(path))
