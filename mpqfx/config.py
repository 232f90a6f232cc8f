"""Typed conversion between plain mappings (YAML/JSON) and frozen config dataclasses.

Every problem is gathered with its dotted field path instead of stopping at the first one,
so a recipe with five bad fields is reported once with five lines.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from typing import Any, Iterable

_MISSING = object()


def _type_name(tp: Any) -> str:
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return "one of " + ", ".join(repr(m.value) for m in tp)
    if typing.get_origin(tp) is tuple:
        return "a list of " + _type_name(typing.get_args(tp)[0])
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


def _convert(tp: Any, value: Any, path: str, problems: list[str]) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(inner, value, path, problems)
    if origin is tuple:
        item_tp = typing.get_args(tp)[0]
        if not isinstance(value, (list, tuple)):
            problems.append(f"{path}: expected {_type_name(tp)}, got {value!r}")
            return _MISSING
        items = [_convert(item_tp, v, f"{path}[{i}]", problems) for i, v in enumerate(value)]
        return _MISSING if any(i is _MISSING for i in items) else tuple(items)
    if dataclasses.is_dataclass(tp):
        return from_mapping(tp, value, path, problems)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError:
            problems.append(f"{path}: {value!r} is not allowed; expected {_type_name(tp)}")
            return _MISSING
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:  # YAML 1.1 reads "1e-5" as a string
            return float(value)
        except ValueError:
            pass
    if tp is Any or (isinstance(value, tp) and not (tp is int and isinstance(value, bool))):
        return value
    problems.append(f"{path}: expected {_type_name(tp)}, got {value!r}")
    return _MISSING


def from_mapping(cls: type, data: Any, path: str, problems: list[str]) -> Any:
    """Build dataclass ``cls`` from ``data``; append one message per bad field to ``problems``.

    Bad fields fall back to their defaults so that later checks still run.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        problems.append(f"{path or 'recipe'}: expected a mapping, got {data!r}")
        return cls()
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            allowed = ", ".join(fields)
            problems.append(f"{_join(path, str(key))}: unknown field (allowed: {allowed})")
    kwargs = {}
    for name, f in fields.items():
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                problems.append(f"{_join(path, name)}: missing required field")
            continue
        value = _convert(hints[name], data[name], _join(path, name), problems)
        if value is not _MISSING:
            kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required field was missing or bad
        problems.append(f"{path or cls.__name__}: {exc}")
        return None


def to_mapping(obj: Any) -> Any:
    """Plain-data view of a config dataclass (enums as values, tuples as lists)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_mapping(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, (tuple, list)):
        return [to_mapping(v) for v in obj]
    return obj


def check_all(obj: Any, path: str = "") -> list[str]:
    """Range/consistency problems of ``obj`` and its nested configs (each may define ``problems()``)."""
    found: list[str] = []
    if not dataclasses.is_dataclass(obj):
        return found
    own = getattr(obj, "problems", None)
    if own is not None:
        found += [_join(path, p) for p in own()]
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        values: Iterable[Any] = value if isinstance(value, tuple) else (value,)
        for i, v in enumerate(values):
            sub = _join(path, f.name) + (f"[{i}]" if isinstance(value, tuple) else "")
            found += check_all(v, sub)
    return found


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name
