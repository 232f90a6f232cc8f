"""Rich tables printed by the CLI."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from mpqfx.cost.report import bitops
from mpqfx.quant.policy import Policy


def _bits(value: int | None) -> str:
    return "fp32" if value is None else str(value)


def print_cost_report(net, policy: Policy, title: str, per_layer: bool = True, console: Console | None = None) -> None:
    """Per-layer BitOPs table (optional) and the totals of ``policy`` on ``net``."""
    console = console or Console()
    report = bitops(net, policy)
    if per_layer:
        table = Table(title=title, show_lines=False)
        for col, justify in (("layer", "left"), ("kind", "left"), ("MACs (M)", "right"), ("W", "right"),
                             ("A", "right"), ("BitOPs (G)", "right")):
            table.add_column(col, justify=justify)
        for row in report.layers:
            table.add_row(row.name, row.kind, f"{row.macs / 1e6:.2f}", _bits(row.bits.w), _bits(row.bits.a),
                          f"{row.bitops / 1e9:.3f}")
        console.print(table)
    else:
        console.print(title)
    console.print(f"total: {report.macs / 1e9:.3f} GMACs, {report.total / 1e9:.2f} GBitOPs, "
                  f"size {report.size_bits / 8 / 1e6:.2f} MB ({report.compression:.1f}x smaller than float32)")


def print_policy_summary(net, rows, console: Console | None = None) -> None:
    """One line per searched policy: target, BitOPs, size, mean bits, backend time, file."""
    console = console or Console()
    table = Table(title="searched policies")
    for col in ("target", "BitOPs (G)", "size (MB)", "mean W/A bits", "search (s)", "policy file"):
        table.add_column(col)
    for target, result, path in rows:
        report = bitops(net, result.policy)
        table.add_row(target, f"{report.total / 1e9:.3f}", f"{report.size_bits / 8e6:.3f}",
                      f"{result.policy.mean_bits('w'):.2f}/{result.policy.mean_bits('a'):.2f}",
                      f"{result.seconds:.2f}", str(path))
    console.print(table)


def print_compress_summary(result, console: Console | None = None) -> None:
    """The policies of a compress run (BitOPs, size, accuracy) and where the run directory is."""
    console = console or Console()
    table = Table(title=f"mpqfx compress: {result.run_dir}")
    for col in ("model", "target", "top-1 (%)", "GBitOPs", "size (MB)", "compression"):
        table.add_column(col, justify="left" if col in ("model", "target") else "right")
    for r in result.results:
        table.add_row(r.name, r.target or "", f"{100 * r.accuracy:.2f}", f"{r.bitops / 1e9:.4g}",
                      f"{r.size_bits / 8e6:.3f}", f"{r.compression:.2f}x")
    console.print(table)
    console.print(f"report: {result.run_dir / 'report.md'}")
