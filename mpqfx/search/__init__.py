"""Searching bit-width policies under budgets, without retraining.

The shipped backends are declared in ``mpqfx.registry`` and imported on first use; the names
below are imported on first access, so that ``mpqfx.search.options`` stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mpqfx.lazy import lazy_attributes

if TYPE_CHECKING:
    from mpqfx.search.backend import SEARCHES, SearchBackend, SearchContext, SearchError, SearchResult, register_search
    from mpqfx.search.constraints import Constraints, InfeasibleBudgetError, TargetError, parse_target
    from mpqfx.search.run import search, search_many

_LAZY = {**dict.fromkeys(("SEARCHES", "SearchBackend", "SearchContext", "SearchError", "SearchResult",
                          "register_search"), "mpqfx.search.backend"),
         **dict.fromkeys(("Constraints", "InfeasibleBudgetError", "TargetError", "parse_target"),
                         "mpqfx.search.constraints"),
         "search": "mpqfx.search.run", "search_many": "mpqfx.search.run"}

__all__ = ["SEARCHES", "SearchBackend", "SearchContext", "SearchError", "SearchResult", "register_search",
           "Constraints", "InfeasibleBudgetError", "TargetError", "parse_target", "search", "search_many"]

__getattr__ = lazy_attributes(__name__, _LAZY)
