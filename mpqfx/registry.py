"""Name -> class registries (training strategies, search backends) with helpful lookup errors.

The shipped strategies and backends are *declared* here by import path and imported on first
use, so that reading and checking a recipe (which needs their names and option types only)
imports neither torch nor the training and search code. Classes registered with
``@registry.register(name)`` (the shipped ones when their module loads, and any of yours)
are found the same way.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Generic, Iterator, TypeVar

from mpqfx.errors import UnknownNameError, did_you_mean

T = TypeVar("T")


def _resolve(path: str) -> Any:
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


class Registry(Generic[T]):
    """A registry of named entries: ``@registry.register("name")`` on a class, ``registry.get(name)``."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._declared: dict[str, tuple[str, str]] = {}  # name -> ("module:Class", "module:OptionsClass")

    def declare(self, name: str, entry: str, options: str) -> None:
        """Declare a shipped entry by import path ("package.module:Class") and the path of its
        options dataclass; the entry's module is imported by the first ``get(name)``."""
        self._declared[name] = (entry, options)

    def register(self, name: str) -> Callable[[T], T]:
        def decorate(entry: T) -> T:
            declared = self._declared.get(name, (None,))[0]
            path = f"{getattr(entry, '__module__', '')}:{getattr(entry, '__qualname__', '')}"
            taken = name in self._entries and self._entries[name] is not entry
            if taken or (declared is not None and declared != path):
                raise ValueError(f"{self.kind} {name!r} is already registered ({self._entries.get(name, declared)!r})")
            self._entries[name] = entry
            setattr(entry, "registered_name", name)
            return entry
        return decorate

    def get(self, name: str) -> T:
        if name not in self._entries and name in self._declared:
            entry = _resolve(self._declared[name][0])  # importing the module registers the entry
            self._entries.setdefault(name, entry)  # its module imported before: into a registry since restored
        try:
            return self._entries[name]
        except KeyError:
            hint = did_you_mean(name, self.names())
            raise UnknownNameError(f"unknown {self.kind} {name!r}{hint}; registered: {', '.join(self.names())}") from None

    def options_cls(self, name: str) -> type:
        """The options dataclass of ``name``, without importing a declared entry's own module."""
        if name in self._entries:
            return getattr(self._entries[name], "options_cls")
        if name in self._declared:
            return _resolve(self._declared[name][1])
        return getattr(self.get(name), "options_cls")  # raises the helpful error

    def names(self) -> list[str]:
        return sorted({*self._entries, *self._declared})

    def __contains__(self, name: object) -> bool:
        return name in self._entries or name in self._declared

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


STRATEGIES: Registry[Any] = Registry("strategy")
for _name, _module, _cls, _options in (
        ("oneshot", "oneshot", "OneShot", "OneShotOptions"), ("limpq", "limpq", "Limpq", "LimpqOptions"),
        ("bitmixer", "bitmixer", "BitMixer", "BitMixerOptions"),
        ("double_rounding", "double_rounding", "DoubleRounding", "DoubleRoundingOptions"),
        ("float", "float_model", "FloatTraining", "NoOptions"),
        ("calibrate", "calibrate", "Calibrate", "CalibrateOptions")):
    STRATEGIES.declare(_name, f"mpqfx.train.{_module}:{_cls}", f"mpqfx.train.options:{_options}")

SEARCHES: Registry[Any] = Registry("search backend")
for _name, _module, _cls, _options in (("ilp", "ilp", "IlpSearch", "IlpOptions"),
                                       ("greedy", "greedy", "GreedySearch", "GreedyOptions"),
                                       ("hessian", "hessian_rank", "HessianSearch", "HessianOptions")):
    SEARCHES.declare(_name, f"mpqfx.search.{_module}:{_cls}", f"mpqfx.search.options:{_options}")
del _name, _module, _cls, _options
