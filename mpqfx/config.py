"""Typed conversion between plain mappings (YAML/JSON) and frozen config dataclasses.

Every problem is gathered with its dotted field path instead of stopping at the first one,
so a recipe with five bad fields is reported once with five lines.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import reprlib
import types
import typing
from typing import Any, Iterable

from mpqfx.errors import closest

_MISSING = object()
INT_RANGE = (-(2**63), 2**64 - 1)  # what torch accepts as a seed; every int setting must fit


class _ShortRepr(reprlib.Repr):
    def __init__(self) -> None:
        super().__init__()
        self.maxlevel, self.maxdict, self.maxlist, self.maxtuple = 3, 8, 8, 8
        self.maxstring = self.maxother = 80
        self.maxlong = 40

    def repr_int(self, x: int, level: int) -> str:
        if x.bit_length() > 128:  # str() of an int over 4300 digits raises; never print one whole
            return f"<int of {x.bit_length()} bits>"
        return super().repr_int(x, level)


_SHORT = _ShortRepr()


def short_repr(value: Any) -> str:
    """repr() of user data for an error message: bounded in length and depth (a YAML file can
    hold a self-referencing alias, an int of 10 000 digits or a billion-laughs tree) and never raising."""
    try:
        return _SHORT.repr(value)
    except Exception:  # an object whose __repr__ fails: name its type instead
        return f"<{type(value).__name__}>"


def _float(value: Any, path: str, problems: list[str]) -> Any:
    try:
        number = float(value)
    except OverflowError:
        problems.append(f"{path}: {short_repr(value)} is out of range for a float")
        return _MISSING
    if math.isnan(number):  # nan passes every range check (nan < 0 is False) and is unequal to itself
        problems.append(f"{path}: expected a number, got nan")
        return _MISSING
    return number


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
            problems.append(f"{path}: expected {_type_name(tp)}, got {short_repr(value)}")
            return _MISSING
        items = [_convert(item_tp, v, f"{path}[{i}]", problems) for i, v in enumerate(value)]
        return _MISSING if any(i is _MISSING for i in items) else tuple(items)
    if dataclasses.is_dataclass(tp):
        built = from_mapping(tp, value, path, problems)
        return _MISSING if built is None else built
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError:
            match = closest(value, [m.value for m in tp]) if isinstance(value, str) else None
            hint = f" (did you mean {match!r}?)" if match else ""
            problems.append(f"{path}: {short_repr(value)} is not allowed{hint}; expected {_type_name(tp)}")
            return _MISSING
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return _float(value, path, problems)
    if tp is float and isinstance(value, str):
        try:  # YAML 1.1 reads "1e-5" as a string
            float(value)
        except ValueError:
            pass
        else:
            return _float(value, path, problems)
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        if not INT_RANGE[0] <= value <= INT_RANGE[1]:  # YAML reads 0x<5000 hex digits> as one int
            problems.append(f"{path}: {short_repr(value)} is out of range (integers must fit in 64 bits)")
            return _MISSING
        return value
    if tp is Any or (isinstance(value, tp) and not (tp is int and isinstance(value, bool))):
        return value
    problems.append(f"{path}: expected {_type_name(tp)}, got {short_repr(value)}")
    return _MISSING


def from_mapping(cls: type, data: Any, path: str, problems: list[str]) -> Any:
    """Build dataclass ``cls`` from ``data``; append one message per bad field to ``problems``.

    Bad fields fall back to their defaults so that later checks still run.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        problems.append(f"{path or 'recipe'}: expected a mapping, got {short_repr(data)}")
        try:
            return cls()
        except TypeError:  # ``cls`` has required fields (a BitOverride's pattern): nothing to fall back to
            return None
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            allowed = ", ".join(fields)
            name = key if isinstance(key, str) else short_repr(key)
            match = closest(name, fields) if isinstance(key, str) else None
            hint = f", did you mean {match!r}?" if match else ""
            problems.append(f"{_join(path, name)}: unknown field{hint} (allowed: {allowed})")
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
