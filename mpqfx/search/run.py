"""``mpqfx.search``: search a trained supernet (or a run directory) for a budget, without retraining."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import torch

from mpqfx.config import check_all, from_mapping, to_mapping
from mpqfx.errors import RecipeError
from mpqfx.search.backend import SEARCHES, Batch, SearchContext, SearchError, SearchResult
from mpqfx.search.candidates import Report, keep_best
from mpqfx.search.constraints import Constraints, constraints_from
from mpqfx.rundir import run_root, search_data
from mpqfx.store import load_supernet
from mpqfx.supernet import Supernet
from mpqfx.train.distributed import resolve_device


def _options(cls: type, net: Supernet, name: str, options: Any, indicators: bool = False) -> Any:
    """The backend's options: a dataclass as given; a mapping over the recipe's options for this
    backend (or the backend's defaults), field by field; None: the recipe's or the defaults.
    With ``indicators`` the ILP's objective becomes ``limpq`` (Eq. 4 reads them) unless another is asked for."""
    spec = net.recipe.search
    base = spec.options if spec.backend == name and isinstance(spec.options, cls.options_cls) else cls.options_cls()
    asked = getattr(options, "objective", None) if dataclasses.is_dataclass(options) else dict(options or {}).get("objective")
    if indicators:
        if name != "ilp" or asked not in (None, "limpq"):
            raise SearchError(f"indicators are read by the ilp backend's objective 'limpq', not by {name!r}"
                              + (f" with objective {asked!r}" if name == "ilp" else ""))
        if asked is None:
            options = {**dict(options or {}), "objective": "limpq"}
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
           calibration: Iterable[Batch] | None = None, indicators: str | Path | Mapping | None = None,
           traces: Mapping[str, float] | None = None, costs: Mapping | None = None,
           cache_dir: str | Path | None = None, search_images: int | None = None,
           report: Report | None = None, device: str | torch.device | None = "cpu") -> SearchResult:
    """Find a policy that meets ``constraints`` on a trained supernet; never retrains.

    Whenever there are search images, the backend's policy is measured against the uniform
    policies that meet the budget, and the best of them is returned (never worse than uniform on
    the search images; ``result.details["selection"]`` says which won and by how much).

    Args:
        supernet_or_run_dir: a Supernet, a supernet file, or a run directory holding ``supernet.pt``.
        constraints: a :class:`Constraints`, a target string (``"4.5G"``, ``"uniform:4"``,
            ``"bitops=4.5G,size=8x"``, ``"avg=3.5"``) or a mapping of them.
        backend: a registered backend (``ilp``, ``greedy``, ``hessian``); default: the recipe's.
        options: the backend's options (dataclass or mapping); default: the recipe's or the backend's.
        data: fixed evaluation batches (greedy, hessian, and the ILP's hessian and sensitivity objectives);
            default for a run directory: the fixed search images of its training split.
        calibration: training batches for BatchNorm re-estimation before a policy is measured.
        indicators: importance indicators for the ILP's ``limpq`` objective, a file (mpqfx's JSON/YAML
            format or LIMPQ's pickle, mpqfx/search/indicators.py) or a mapping; they switch the ILP to
            that objective. Default: the supernet's learned steps.
        traces / costs: per-layer statistics for the ``hessian`` / ``costs`` objectives (default
            traces: the ones stored with the supernet).
        cache_dir: where budget-independent statistics (measured sensitivities) are kept for
            later searches; default: the run directory when one is searched.
        search_images: how many training images a run directory's search measures policies on
            (default: the recipe's ``evaluate.search_images``).
        report: called as ``report(what, done, total)`` while policies are measured (a progress bar).
        device: where a supernet loaded from a file or run directory measures policies (None: CUDA
            when available); a given Supernet runs where it is.

    Example:
        >>> result = mpqfx.search("runs/efficientnet_lite0-oneshot", "uniform:4")
        >>> result.policy.save("policy-4bit.yaml")
    """
    return next(search_many(supernet_or_run_dir, [constraints], backend, options, data, calibration, indicators,
                            traces, costs, cache_dir, search_images, report, device))


def search_many(supernet_or_run_dir: Supernet | str | Path,
                targets: Sequence[Constraints | str | Mapping[str, Any]], backend: str | None = None,
                options: Any = None, data: Iterable[Batch] | None = None, calibration: Iterable[Batch] | None = None,
                indicators: str | Path | Mapping | None = None, traces: Mapping[str, float] | None = None,
                costs: Mapping | None = None, cache_dir: str | Path | None = None, search_images: int | None = None,
                report: Report | None = None, device: str | torch.device | None = "cpu") -> Iterator[SearchResult]:
    """:func:`search` for several budgets with one backend instance, so that what does not depend on
    the budget (measured sensitivities, Hessian statistics) is computed once. Yields one result per
    target, in order, as each search finishes; every target is checked for feasibility before the
    first search runs."""
    path = supernet_or_run_dir if isinstance(supernet_or_run_dir, (str, Path)) else None
    net, extras = load_supernet(path, device=resolve_device(device)) if path is not None else (supernet_or_run_dir, {})
    name = backend or net.recipe.search.backend
    cls = SEARCHES.get(name)
    resolved = _options(cls, net, name, options, indicators is not None)
    if path is not None:
        cache_dir = cache_dir or run_root(path)
        if data is None:  # a run directory knows its data: the backend's and the uniform comparison's
            data, calibration = search_data(path, net, search_images)
    parsed = [constraints_from(target, net) for target in targets]
    for target in parsed:
        target.check_feasible(net)
    context = SearchContext(batches=list(data or []), calibration=list(calibration or []),
                            indicators=indicators if indicators is not None else extras.get("indicators"),
                            traces=traces or extras.get("traces"), costs=costs,
                            cache_dir=Path(cache_dir) if cache_dir else None, report=report)
    instance = cls(net, resolved, context)
    for target in parsed:
        start = time.perf_counter()
        result = instance.run(target)
        for policy in result.policies + [result.policy]:
            policy.validate(net.layers)
            broken = target.violations(net, policy)
            if broken:
                raise SearchError(f"search backend {name!r} returned a policy that breaks {'; '.join(broken)}")
        result = keep_best(result, instance.meter, net)
        result.seconds = time.perf_counter() - start
        yield result
