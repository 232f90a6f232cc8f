"""Adding the searches made after a run (``RUN/searches/<name>/``) to its report (``mpqfx report``).

The rows ``mpqfx compress`` measured stay as they are; each later policy is measured once, like
them (held-out top-1 after BatchNorm re-estimation on the same training images), its result kept
in its ``search.json``, and the report and figures are written again with a "later searches" part
and the fine-tunes finished in ``RUN/finetuned/`` (``mpqfx finetune``, three rows each).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import torch

from mpqfx.compress.evaluation import PolicyEvaluator, policy_name
from mpqfx.compress.report import render_report
from mpqfx.data.spec import DataSpec
from mpqfx.errors import MpqfxError
from mpqfx.finetune.run import finished_results
from mpqfx.models import create_model
from mpqfx.quant.policy import Policy
from mpqfx.rundir import RunDir
from mpqfx.search.saved import saved_searches, write_record
from mpqfx.store import load_supernet
from mpqfx.train.distributed import resolve_device

NEEDED = ("images", "input_size", "versions")  # report fields older versions of mpqfx did not write


def read_report(run: RunDir) -> dict[str, Any]:
    """The run's report.json; an error that says how to get one when it is missing or too old."""
    if not run.report_json.is_file():
        raise MpqfxError(f"{str(run.root)!r} holds no report.json: the run has not finished; "
                         f"`mpqfx compress --out {run.root} --resume` finishes it")
    try:
        report = json.loads(run.report_json.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise MpqfxError(f"{str(run.report_json)!r} is corrupt: {exc}") from None
    missing = [key for key in NEEDED if key not in report]
    if missing:
        raise MpqfxError(f"{str(run.report_json)!r} was written by an older mpqfx (no {', '.join(missing)}); "
                         "run `mpqfx compress` again to report with this version")
    return report


def update_report(run_dir: str | Path, log: Callable[[str], None] | None = None,
                  device: str | torch.device | None = "cpu") -> dict[str, Any]:
    """Measure the run's later searches not measured yet (on ``device``; None: CUDA when available),
    then write report.json, report.md and the figures again with them and the run's finished
    fine-tunes; the report, as written.

    Example:
        >>> report = update_report("runs/quickstart")
        >>> [(row["search"], row["target"], row["accuracy"]) for row in report["searches"]]
    """
    log = log or (lambda message: None)
    device = resolve_device(device)
    run = RunDir(run_dir)
    report = read_report(run)
    searches = saved_searches(run.root)
    pending = [(folder, record, entry) for folder, record in searches for entry in record["entries"]
               if entry["accuracy"] is None]
    net = evaluator = None
    if searches:
        net, _ = load_supernet(run.root, device=device)
        net.eval()
    if pending:
        spec = DataSpec.from_dict(run.meta()["data"])
        evaluator = PolicyEvaluator(spec, create_model(net.model_spec.name, **net.model_spec.kwargs), net.recipe)
    for folder, record, entry in pending:
        policy = Policy.load(folder / entry["policy_file"]).validate(net.layers)
        result = evaluator.measure(net, f"searched {entry['target']}", "searched", policy)
        entry["accuracy"], entry["loss"] = result.accuracy, result.loss
        write_record(folder, record)  # at once: an interrupted report keeps what it measured
        log(f"search {folder.name}, {entry['target']}: top-1 {result.accuracy:.2%} on {evaluator.val_images} "
            "held-out images")
    report["searches"] = [_row(folder, entry, net) for folder, record in searches for entry in record["entries"]]
    named = [policy_name(row) for row in report["policies"] + report["searches"]]
    report["finetuned"] = finished_results(run.root, [name for name in named if name])
    render_report(run, report)
    return report


def _row(folder: Path, entry: dict[str, Any], net) -> dict[str, Any]:
    policy = Policy.load(folder / entry["policy_file"]).validate(net.layers)
    row = {"name": f"searched {entry['target']}", "kind": "searched", "search": folder.name,
           "target": entry["target"], "accuracy": entry["accuracy"], "loss": entry["loss"],
           "bitops": entry["bitops"], "size_bits": entry["size_bits"], "size_bytes": entry["size_bits"] / 8,
           "compression": entry["compression"], "policy_file": str(folder / entry["policy_file"]), "exports": {},
           "bits": {k: [b.w, b.a] for k, b in policy.items()}}
    return {**row, "policy_name": policy_name(row)}
