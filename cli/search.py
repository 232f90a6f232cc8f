"""``mpqfx search``: policies for one or more budgets from a trained run, without training."""

from __future__ import annotations

from pathlib import Path

import click

from mpqfx.cli.options import parse_options
from mpqfx.errors import MpqfxError


@click.command("search")
@click.option("--run", "run_dir", required=True, type=click.Path(path_type=Path),
              help="Run directory (or supernet file) written by `mpqfx compress`.")
@click.option("--target", "targets", multiple=True, required=True,
              help="Budget: 4.5G, uniform:4, size=8x, avg=3.5, or key=value terms joined by commas (repeatable).")
@click.option("--backend", default=None, help="ilp, greedy or hessian (default: the run's recipe).")
@click.option("--option", "options", multiple=True, metavar="KEY=VALUE",
              help="A backend option (repeatable), e.g. objective=limpq for ilp; the others stay the recipe's.")
@click.option("--out", "out_dir", default=None, type=click.Path(path_type=Path),
              help="Where to write the policies (default: RUN/policies).")
def search_command(run_dir: Path, targets: tuple[str, ...], backend: str | None, options: tuple[str, ...],
                   out_dir: Path | None) -> None:
    """Search policies for one or more budgets on a trained supernet (no training)."""
    from mpqfx.cli.tables import print_policy_summary
    from mpqfx.rundir import policy_filename, run_root, search_data
    from mpqfx.search.run import search_many, uses_data
    from mpqfx.store import load_supernet

    if not run_dir.exists():
        raise MpqfxError(f"--run: {str(run_dir)!r} does not exist")
    net, extras = load_supernet(run_dir)
    backend_options = parse_options(options) if options else None
    data, calibration = search_data(run_dir, net) if uses_data(net, backend, backend_options) else ([], [])
    out_dir = out_dir or run_root(run_dir) / "policies"
    rows = []
    results = search_many(net, targets, backend=backend, options=backend_options, data=data, calibration=calibration,
                          indicators=extras.get("indicators"), traces=extras.get("traces"),
                          cache_dir=run_root(run_dir))
    for target, result in zip(targets, results):
        rows.append((target, result, result.policy.save(out_dir / policy_filename(target))))
    print_policy_summary(net, rows)
