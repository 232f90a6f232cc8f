"""The search-backend interface, its registry, and what a search returns."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence

import torch

from mpqfx.errors import MpqfxError
from mpqfx.quant.policy import Policy
from mpqfx.registry import SEARCHES
from mpqfx.search.candidates import Meter, Report
from mpqfx.search.options import NoSearchOptions
from mpqfx.search.constraints import Constraints
from mpqfx.supernet import Supernet

register_search = SEARCHES.register

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass
class SearchContext:
    """What a backend may use besides the supernet: evaluation data and per-layer statistics."""

    batches: Sequence[Batch] = ()  # fixed evaluation set (greedy, hessian)
    calibration: Sequence[Batch] = ()  # training batches for BatchNorm re-estimation
    indicators: str | Path | Mapping[str, Any] | None = None  # a file or mapping (mpqfx/search/indicators.py)
    traces: Mapping[str, float] | None = None  # Hessian traces per layer (Double Rounding)
    costs: Mapping[str, Any] | None = None  # user-given per-layer costs
    cache_dir: Path | None = None  # where budget-independent statistics may be kept (a run directory)
    report: Report | None = None  # progress of measurements: report(what, done, total)


@dataclass
class SearchResult:
    """The chosen policy (``policy``), every returned policy (a Pareto set sorted by BitOPs, or just
    the one), and how the search went (solver status, time, forward passes...)."""

    policy: Policy
    policies: list[Policy]
    constraints: Constraints
    backend: str
    seconds: float
    details: dict[str, Any] = field(default_factory=dict)


class SearchError(MpqfxError):
    """A backend could not produce a policy (missing data or statistics, no convergence)."""


class SearchBackend:
    """Base class of search backends; register subclasses with ``@register_search(name)``.

    Example:
        >>> @register_search("uniform")
        ... class Uniform(SearchBackend):
        ...     def run(self, constraints):
        ...         for b in sorted({b for l in self.net.layers for b in l.w_bits}, reverse=True):
        ...             p = Policy.uniform(self.net, b)
        ...             if constraints.satisfied_by(self.net, p):
        ...                 return self.result(p, constraints)
    """

    options_cls: ClassVar[type] = NoSearchOptions

    def __init__(self, net: Supernet, options: Any, context: SearchContext):
        self.net = net
        self.options = options
        self.context = context

    @classmethod
    def uses_data(cls, options: Any) -> bool:
        """Whether the backend evaluates the supernet on data with these options."""
        return False

    def run(self, constraints: Constraints) -> SearchResult:
        raise NotImplementedError

    @functools.cached_property
    def meter(self) -> Meter:
        """Measures candidate policies on the search images, once each (shared by every budget searched)."""
        return Meter(self.net, self.context.batches, self.context.calibration, self.context.report)

    def report(self, what: str, done: int, total: int) -> None:
        """Progress of a measurement loop (``what``: e.g. "sensitivities"), shown by the caller's bar."""
        if self.context.report is not None:
            self.context.report(what, done, total)

    def result(self, policy: Policy, constraints: Constraints, policies: Sequence[Policy] | None = None,
               **details: Any) -> SearchResult:
        return SearchResult(policy, list(policies) if policies is not None else [policy], constraints,
                            getattr(type(self), "registered_name", type(self).__name__), 0.0, dict(details))

    def require_batches(self, needed_by: str = "") -> Sequence[Batch]:
        """The evaluation batches; ``needed_by`` names the option that needs them, for the error."""
        if not self.context.batches:
            name = getattr(type(self), "registered_name", type(self).__name__)
            why = f" ({needed_by})" if needed_by else ""
            raise SearchError(f"search backend {name!r}{why} evaluates policies on data: pass evaluation batches "
                              "(mpqfx.search(..., data=...)) or search a run directory that records its data")
        return self.context.batches
