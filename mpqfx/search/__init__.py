"""Searching bit-width policies under budgets, without retraining (backends registered on import)."""

from mpqfx.search.backend import SEARCHES, SearchBackend, SearchContext, SearchError, SearchResult, register_search
from mpqfx.search.constraints import Constraints, InfeasibleBudgetError, TargetError, parse_target
from mpqfx.search import greedy, hessian_rank, ilp  # noqa: F401  (register the backends)
from mpqfx.search.run import search, search_many

__all__ = ["SEARCHES", "SearchBackend", "SearchContext", "SearchError", "SearchResult", "register_search",
           "Constraints", "InfeasibleBudgetError", "TargetError", "parse_target", "search", "search_many"]
