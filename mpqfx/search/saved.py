"""Searches kept next to a run: ``RUN/searches/<name>/`` holds one policy file per target and
``search.json`` (backend, options, and each policy's cost; top-1 once ``mpqfx report`` measured it).

A later search never touches what ``mpqfx compress`` wrote and reported (``policies/``,
``report.*``, ``export/``), and never replaces a policy file with a different policy: every
conflict is found before anything is written.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

from mpqfx.cost.report import bitops
from mpqfx.errors import MpqfxError
from mpqfx.io import atomic_write_text
from mpqfx.quant.policy import Policy
from mpqfx.rundir import RunDir, searched_policy_path
from mpqfx.search.backend import SearchResult
from mpqfx.supernet import Supernet

SEARCH_FORMAT = "mpqfx.search/1"
RECORD_NAME = "search.json"


def search_name(backend: str, options: Mapping[str, Any] | None) -> str:
    """The default folder name of a search: its backend and the options given, ``ilp-objective=limpq``."""
    parts = [backend] + [f"{key}={value}" for key, value in sorted((options or {}).items())]
    return re.sub(r"[^A-Za-z0-9._=-]+", "-", "-".join(parts)).strip("-") or "search"


def searches_dir(run_dir: str | Path) -> Path:
    return RunDir(run_dir).root / "searches"


def check_out_dir(run_dir: str | Path, out: Path) -> None:
    """Refuse a folder that holds what ``mpqfx compress`` reported."""
    run = RunDir(run_dir)
    if out.resolve() == run.policies.resolve():
        raise MpqfxError(f"--out: {str(out)!r} holds the policies `mpqfx compress` evaluated, reported and exported; "
                         "a later search keeps its own in RUN/searches/NAME (--name) or in another --out")


def read_record(folder: Path) -> dict[str, Any]:
    """The ``search.json`` of a search folder (a fresh record when there is none)."""
    path = folder / RECORD_NAME
    if not path.is_file():
        return {"format": SEARCH_FORMAT, "name": folder.name, "entries": []}
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise MpqfxError(f"{str(path)!r} is corrupt: {exc}") from None
    if not isinstance(record, dict) or record.get("format") != SEARCH_FORMAT:
        raise MpqfxError(f"{str(path)!r}: not a search record (format {SEARCH_FORMAT})")
    return record


def write_record(folder: Path, record: dict[str, Any]) -> None:
    atomic_write_text(folder / RECORD_NAME, json.dumps(record, indent=1))


def save_search(net: Supernet, folder: Path, targets: Sequence[str], results: Sequence[SearchResult],
                options: Mapping[str, Any] | None, record: bool = True) -> list[Path]:
    """Write each result's policy to ``folder/mixed@<target>.yaml`` and (``record``) add it to
    ``search.json``; the policy files, in order. A file that already holds a different policy is an
    error, raised before anything is written; the same policy found again is left as it is."""
    paths = [searched_policy_path(folder, target) for target in targets]
    for path, result in zip(paths, results):
        if path.is_file() and Policy.load(path) != result.policy:
            raise MpqfxError(f"{str(path)!r} already holds a different policy for this target (an earlier search "
                             "with other settings); pass --name NAME to keep this search beside it")
    for path, result in zip(paths, results):
        if not path.is_file():
            result.policy.save(path)
    if not record:
        return paths
    kept = read_record(folder)
    entries = {e["target"]: e for e in kept["entries"]}
    for path, target, result in zip(paths, targets, results):
        if target not in entries:
            cost = bitops(net, result.policy)
            entries[target] = {"target": target, "policy_file": path.name, "backend": result.backend,
                               "options": dict(options or {}), "bitops": cost.total, "size_bits": cost.size_bits,
                               "compression": cost.compression, "seconds": result.seconds,
                               "accuracy": None, "loss": None}
    kept["entries"] = list(entries.values())
    write_record(folder, kept)
    return paths


def saved_searches(run_dir: str | Path) -> list[tuple[Path, dict[str, Any]]]:
    """(folder, record) of every search kept in the run directory, by folder name."""
    root = searches_dir(run_dir)
    folders = sorted(p for p in root.iterdir() if (p / RECORD_NAME).is_file()) if root.is_dir() else []
    return [(folder, read_record(folder)) for folder in folders]
