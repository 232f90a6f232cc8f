"""Importance indicators for the ILP's ``limpq`` objective (LIMPQ Eq. 4), from any source.

mpqfx's format (``mpqfx.indicators/1``, JSON or YAML; what the ``limpq`` strategy writes to
``indicators.json``) holds, per layer, one score per weight bit-width and one per activation
bit-width::

    format: mpqfx.indicators/1          # optional
    layers:
      layer1.0.conv1:
        w: {2: 0.0312, 3: 0.0170, 4: 0.0091}   # "weight" is read as "w"
        a: {2: 0.1205, 3: 0.0671, 4: 0.0483}   # "act" / "activation" as "a"

Bit-widths may be integers or strings of them. Layers whose bits the recipe's rules fix (the
first and last layer at 8/8) need no entry. LIMPQ's published pickle
(``{"weight": {layer: {"2": s, ...}}, "act": {...}, "layer_name": [...]}``, layer names with
DataParallel's ``module.`` prefix) is read as well, from a ``.pkl`` file or as a mapping.
"""

from __future__ import annotations

import collections
import difflib
import io
import json
import math
import pickle
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from mpqfx.config import short_repr
from mpqfx.errors import MpqfxError
from mpqfx.graph.layer_info import LayerInfo

FORMAT = "mpqfx.indicators/1"
KEYS = {"w": "w", "weight": "w", "weights": "w", "a": "a", "act": "a", "activation": "a", "activations": "a"}
EXPECTED = "{'w': {bits: score}, 'a': {bits: score}}"

Indicators = dict[str, dict[str, dict[int, float]]]  # {layer: {"w"|"a": {bits: score}}}


class IndicatorError(MpqfxError, ValueError):
    """Indicators that cannot be read or do not cover a layer; the message names the layer and key."""


class _PlainUnpickler(pickle.Unpickler):
    """Reads dicts (also OrderedDicts), lists, strings and numbers only: a pickle naming any other
    class or function is refused, so that reading someone's indicators runs none of their code."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        raise IndicatorError(f"the pickle refers to {module}.{name}; only plain dicts, lists, strings and numbers "
                             "are read (LIMPQ's layout)")


def read_indicators(source: str | Path | Mapping[str, Any]) -> Mapping[str, Any]:
    """The raw indicator mapping of a file (``.json``, ``.yaml``/``.yml``, ``.pkl``) or a mapping as given."""
    if isinstance(source, Mapping):
        return source
    path = Path(source)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise IndicatorError(f"indicators: cannot read {str(path)!r} ({exc.strerror})") from None
    try:
        if path.suffix in (".pkl", ".pickle"):
            data = _PlainUnpickler(io.BytesIO(raw)).load()
        elif path.suffix == ".json":
            data = json.loads(raw.decode("utf-8"))
        else:
            data = yaml.safe_load(raw.decode("utf-8"))
    except IndicatorError as exc:
        raise IndicatorError(f"indicators: {str(path)!r}: {exc}") from None
    except Exception as exc:  # malformed JSON/YAML/pickle, invalid UTF-8, deep nesting...
        raise IndicatorError(f"indicators: {str(path)!r} is not a readable {path.suffix or 'YAML'} file "
                             f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]})") from None
    if not isinstance(data, Mapping):
        raise IndicatorError(f"indicators: {str(path)!r} holds {type(data).__name__}, expected a mapping "
                             f"{{layer: {EXPECTED}}}")
    return data


def _layers(data: Mapping[str, Any]) -> Mapping[str, Any]:
    """The per-layer mapping of any supported layout, keyed by layer name without ``module.``."""
    if "weight" in data and "act" in data and isinstance(data["weight"], Mapping):  # LIMPQ's pickle
        names = {*data["weight"], *data.get("act", {})}
        return {_strip(n): {"w": data["weight"].get(n), "a": data["act"].get(n)} for n in names}
    if data.get("format", FORMAT) != FORMAT:
        raise IndicatorError(f"indicators: unknown format {short_repr(data.get('format'))} (expected {FORMAT})")
    layers = data.get("layers", None if "format" in data else data)
    if not isinstance(layers, Mapping):
        raise IndicatorError(f"indicators: 'layers' must be a mapping {{layer: {EXPECTED}}}")
    return {_strip(str(n)): v for n, v in layers.items()}


def _strip(name: str) -> str:
    return name[len("module."):] if name.startswith("module.") else name


def load_indicators(source: str | Path | Mapping[str, Any], layers: Sequence[LayerInfo]) -> Indicators:
    """Indicators for every layer of ``layers`` with more than one choice, checked and normalised
    ({layer: {"w": {int bits: float}, "a": {...}}}); IndicatorError names the first layer, key
    and bit-width that is missing or malformed.

    Example:
        >>> table = load_indicators("importance_indicators_resnet50.pkl", net.layers)
        >>> mpqfx.search(net, "uniform:3/4", indicators=table)
    """
    given = _layers(read_indicators(source))
    out: Indicators = {}
    for layer in layers:
        if len(layer.w_bits) * len(layer.a_bits) == 1:
            continue  # fixed by the rules: no choice, no entry needed
        entry = given.get(layer.name)
        if entry is None:
            close = difflib.get_close_matches(layer.name, list(given), n=1)
            hint = f" (closest entry: {close[0]!r})" if close else ""
            raise IndicatorError(f"indicators: no entry for layer {layer.name!r}{hint}; expected {EXPECTED} "
                                 f"with scores for weight bits {list(layer.w_bits)} and activation bits {list(layer.a_bits)}")
        if not isinstance(entry, Mapping):
            raise IndicatorError(f"indicators: layer {layer.name!r}: expected {EXPECTED}, got {short_repr(entry)}")
        kinds = {KEYS.get(str(k)): v for k, v in entry.items()}
        out[layer.name] = {which: _scores(layer.name, which, kinds.get(which), allowed)
                           for which, allowed in (("w", layer.w_bits), ("a", layer.a_bits))}
    return out


def _scores(layer: str, which: str, table: Any, allowed: Sequence[int]) -> dict[int, float]:
    where = f"indicators: layer {layer!r}, key {which!r}"
    if not isinstance(table, Mapping):
        raise IndicatorError(f"{where}: expected {{bits: score}} for bits {list(allowed)}, got {short_repr(table)}")
    scores: dict[int, float] = {}
    for bits, score in table.items():
        try:
            number = int(bits)
        except (TypeError, ValueError):
            raise IndicatorError(f"{where}: bit-width {short_repr(bits)} is not an integer") from None
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
            raise IndicatorError(f"{where}, bits {number}: expected a finite number, got {short_repr(score)}")
        scores[number] = float(score)
    missing = [b for b in allowed if b not in scores]
    if missing:
        raise IndicatorError(f"{where}: no score for bits {missing} (expected {{bits: score}} for bits {list(allowed)})")
    return {b: scores[b] for b in allowed}
