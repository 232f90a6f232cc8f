"""What the CLI prints: rich tables that fit 80 columns (cells wrap, names do not), or JSON for scripts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from mpqfx.compress.evaluation import policy_label, policy_name
from mpqfx.cost.report import bitops
from mpqfx.quant.policy import Policy


def _bits(value: int | None) -> str:
    return "fp32" if value is None else str(value)


def _table(title: str | None, columns: list[tuple[str, str]]) -> Table:
    """A table whose columns are ``(header, kind)``: "name" never wraps, "cell" wraps (folds at
    need), "number" keeps its width and is right-aligned."""
    table = Table(title=title, title_justify="left")
    for header, kind in columns:
        if kind == "number":
            table.add_column(header, justify="right", no_wrap=True)
        elif kind == "name":
            table.add_column(header, no_wrap=True)
        else:
            table.add_column(header, overflow="fold", ratio=1)
    return table


def _budget(target: str | None) -> str:
    return (target or "").replace(",", ", ")  # wraps between the terms of a joint budget


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=1))


def print_cost_report(net, policy: Policy, title: str, per_layer: bool = True, console: Console | None = None,
                      as_json: bool = False) -> None:
    """Per-layer BitOPs table (optional) and the totals of ``policy`` on ``net``."""
    report = bitops(net, policy)
    if as_json:
        layers = [{"name": r.name, "kind": r.kind, "macs": r.macs, "w_bits": r.bits.w, "a_bits": r.bits.a,
                   "bitops": r.bitops} for r in report.layers] if per_layer else None
        print_json({"title": title, "macs": report.macs, "bitops": report.total, "size_bytes": report.size_bits / 8,
                    "compression": report.compression, **({"layers": layers} if per_layer else {})})
        return
    console = console or Console()
    if per_layer:
        table = _table(title, [("layer", "name"), ("kind", "name"), ("MMACs", "number"), ("W", "number"),
                               ("A", "number"), ("GBitOPs", "number")])
        for row in report.layers:
            table.add_row(row.name, row.kind, f"{row.macs / 1e6:.2f}", _bits(row.bits.w), _bits(row.bits.a),
                          f"{row.bitops / 1e9:.3f}")
        console.print(table)
    else:
        console.print(title)
    console.print(f"total: {report.macs / 1e9:.3f} GMACs, {report.total / 1e9:.2f} GBitOPs, "
                  f"size {report.size_bits / 8 / 1e6:.2f} MB ({report.compression:.1f}x smaller than float32)")


def print_policy_summary(net, rows: list, folder: Path, console: Console | None = None, as_json: bool = False) -> None:
    """One row per searched policy: budget and policy file (in ``folder``), BitOPs, size, mean bits, search time."""
    out = []
    for target, result, path in rows:
        report = bitops(net, result.policy)
        out.append({"target": target, "bitops": report.total, "size_bytes": report.size_bits / 8,
                    "compression": report.compression, "mean_bits": {w: result.policy.mean_bits(w) for w in "wa"},
                    "seconds": result.seconds, "policy_file": str(path)})
    if as_json:
        print_json(out)
        return
    console = console or Console()
    table = _table(f"searched policies, in {folder}", [
        ("budget\n[dim]policy file[/dim]", "cell"), ("GBitOPs", "number"), ("size (MB)", "number"),
        ("mean W/A", "number"), ("time (s)", "number")])
    for row in out:
        table.add_row(f"{_budget(row['target'])}\n[dim]{Path(row['policy_file']).name}[/dim]",
                      f"{row['bitops'] / 1e9:.4g}", f"{row['size_bytes'] / 1e6:.3f}",
                      f"{row['mean_bits']['w']:.2f}/{row['mean_bits']['a']:.2f}", f"{row['seconds']:.1f}")
    console.print(table)


def _policy_rows(title: str, rows: list[dict[str, Any]], label: bool = True) -> Table:
    """Measured models: (policy,) budget, top-1, BitOPs, size, compression."""
    first = [("policy", "name")] if label else []
    table = _table(title, first + [("budget", "cell"), ("top-1 (%)", "number"), ("GBitOPs", "number"),
                                   ("size (MB)", "number"), ("vs fp32", "number")])
    for r in rows:
        accuracy = "-" if r["accuracy"] is None else f"{100 * r['accuracy']:.2f}"
        table.add_row(*([policy_label(r["kind"], r["name"])] if label else []), _budget(r["target"]), accuracy,
                      f"{r['bitops'] / 1e9:.4g}", f"{r['size_bytes'] / 1e6:.3f}", f"{r['compression']:.2f}x")
    return table


def print_report_summary(report: dict[str, Any], run_dir: Path, console: Console | None = None,
                         as_json: bool = False) -> None:
    """Every model a run's report measured (accuracy, BitOPs, size), then the later searches, and
    where the report is."""
    later = report.get("searches", [])
    if as_json:
        keys = ("name", "kind", "target", "search", "accuracy", "bitops", "size_bytes", "compression", "policy_file",
                "export_error")
        print_json({"run_dir": str(run_dir), "report": str(run_dir / "report.md"),
                    "float_accuracy": report["float_accuracy"], "images": report["images"],
                    "input_size": report["input_size"],
                    "policies": [{**{key: row.get(key) for key in keys}, "policy_name": policy_name(row)}
                                 for row in report["policies"] + later],
                    "seconds": report["seconds"], "cpu_seconds": report["cpu_seconds"]})
        return
    console = console or Console()
    console.print(_policy_rows(f"run {run_dir}", report["policies"]))
    for name in dict.fromkeys(row["search"] for row in later):
        rows = [row for row in later if row["search"] == name]
        console.print(_policy_rows(f"later search {name} (mixed precision), in {run_dir / 'searches' / name}", rows,
                                   label=False))
    console.print(f"report: {run_dir / 'report.md'}")
