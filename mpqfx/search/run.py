"""``mpqfx.search``: search a trained supernet (or a run directory) for a budget, without retraining."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

from mpqfx.config import check_all, from_mapping, to_mapping
from mpqfx.errors import RecipeError
from mpqfx.search.backend import SEARCHES, Batch, SearchContext, SearchError, SearchResult
from mpqfx.search.constraints import Constraints, constraints_from
from mpqfx.rundir import run_root, search_data
from mpqfx.store import load_supernet
from mpqfx.supernet import Supernet


def _options(cls: type, net: Supernet, name: str, options: Any) -> Any:
    """The backend's options: a dataclass as given; a mapping over the recipe's options for this
    backend (or the backend's defaults), field by field; None: the recipe's or the defaults."""
    spec = net.recipe.search
    base = spec.options if spec.backend == name and isinstance(spec.options, cls.options_cls) else cls.options_cls()
    if options is None:
        return base
    problems: list[str] = []
    if dataclasses.is_dataclass(options):
        resolved = options
    else:
        merged = {**to_mapping(base), **dict(options)}
        resolved = from_mapping(cls.options_cls, merged, "search.options", problems)
    problems += check_all(resolved, "search.options") if resolved is not None else []
    if problems:
        raise RecipeError(problems, f"search backend {name!r}")
    return resolved


def uses_data(net: Supernet, backend: str | None = None, options: Any = None) -> bool:
    """Whether searching ``net`` with ``backend`` (default: the recipe's) and ``options`` evaluates it on data."""
    name = backend or net.recipe.search.backend
    cls = SEARCHES.get(name)
    return cls.uses_data(_options(cls, net, name, options))


def search(supernet_or_run_dir: Supernet | str | Path, constraints: Constraints | str | Mapping[str, Any],
           backend: str | None = None, options: Any = None, data: Iterable[Batch] | None = None,
           calibration: Iterable[Batch] | None = None, indicators: Mapping | None = None,
           traces: Mapping[str, float] | None = None, costs: Mapping | None = None,
           cache_dir: str | Path | None = None) -> SearchResult:
    """Find a policy that meets ``constraints`` on a trained supernet; never retrains.

    Args:
        supernet_or_run_dir: a Supernet, a supernet file, or a run directory holding ``supernet.pt``.
        constraints: a :class:`Constraints`, a target string (``"4.5G"``, ``"uniform:4"``,
            ``"bitops=4.5G,size=8x"``, ``"avg=3.5"``) or a mapping of them.
        backend: a registered backend (``ilp``, ``greedy``, ``hessian``); default: the recipe's.
        options: the backend's options (dataclass or mapping); default: the recipe's or the backend's.
        data: fixed evaluation batches (greedy, hessian, and the ILP's hessian and sensitivity objectives);
            default for a run directory: the fixed search images of its training split.
        calibration: training batches for BatchNorm re-estimation when a backend asks for it.
        indicators / traces / costs: per-layer statistics for the ILP objectives (defaults:
            the supernet's learned steps, the traces stored with it).
        cache_dir: where budget-independent statistics (measured sensitivities) are kept for
            later searches; default: the run directory when one is searched.

    Example:
        >>> result = mpqfx.search("runs/efficientnet_lite0-oneshot", "uniform:4")
        >>> result.policy.save("policy-4bit.yaml")
    """
    return next(search_many(supernet_or_run_dir, [constraints], backend, options, data, calibration, indicators,
                            traces, costs, cache_dir))


def search_many(supernet_or_run_dir: Supernet | str | Path,
                targets: Sequence[Constraints | str | Mapping[str, Any]], backend: str | None = None,
                options: Any = None, data: Iterable[Batch] | None = None, calibration: Iterable[Batch] | None = None,
                indicators: Mapping | None = None, traces: Mapping[str, float] | None = None,
                costs: Mapping | None = None, cache_dir: str | Path | None = None) -> Iterator[SearchResult]:
    """:func:`search` for several budgets with one backend instance, so that what does not depend on
    the budget (measured sensitivities, Hessian statistics) is computed once. Yields one result per
    target, in order, as each search finishes; every target is checked for feasibility before the
    first search runs."""
    path = supernet_or_run_dir if isinstance(supernet_or_run_dir, (str, Path)) else None
    net, extras = load_supernet(path) if path is not None else (supernet_or_run_dir, {})
    name = backend or net.recipe.search.backend
    cls = SEARCHES.get(name)
    resolved = _options(cls, net, name, options)
    if path is not None:
        cache_dir = cache_dir or run_root(path)
        if data is None and cls.uses_data(resolved):
            data, calibration = search_data(path, net)  # a run directory knows its data
    parsed = [constraints_from(target, net) for target in targets]
    for target in parsed:
        target.check_feasible(net)
    context = SearchContext(batches=list(data or []), calibration=list(calibration or []),
                            indicators=indicators or extras.get("indicators"),
                            traces=traces or extras.get("traces"), costs=costs,
                            cache_dir=Path(cache_dir) if cache_dir else None)
    instance = cls(net, resolved, context)
    for target in parsed:
        start = time.perf_counter()
        result = instance.run(target)
        result.seconds = time.perf_counter() - start
        for policy in result.policies + [result.policy]:
            policy.validate(net.layers)
            if not target.satisfied_by(net, policy):
                raise SearchError(f"search backend {name!r} returned a policy that breaks {target.describe()}")
        yield result
