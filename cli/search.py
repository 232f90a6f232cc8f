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
@click.option("--name", default=None,
              help="Keep the policies in RUN/searches/NAME [default: the backend and the --option values, "
                   "e.g. ilp-objective=limpq].")
@click.option("--out", "out_dir", default=None, type=click.Path(path_type=Path),
              help="Write the policy files to this folder instead (not added to the run's report).")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON (for scripts) instead of a table.")
def search_command(run_dir: Path, targets: tuple[str, ...], backend: str | None, options: tuple[str, ...],
                   name: str | None, out_dir: Path | None, as_json: bool) -> None:
    """Search policies for one or more budgets on a trained supernet (no training).

    The run's own policies, report and exports stay as `mpqfx compress` wrote them; `mpqfx report`
    adds the searches kept in RUN/searches/ to the report."""
    from mpqfx.cli.tables import print_policy_summary
    from mpqfx.rundir import run_root, search_data
    from mpqfx.search.run import search_many, uses_data
    from mpqfx.search.saved import check_out_dir, save_search, search_name, searches_dir
    from mpqfx.store import load_supernet

    if not run_dir.exists():
        raise MpqfxError(f"--run: {str(run_dir)!r} does not exist")
    if name is not None and out_dir is not None:
        raise MpqfxError("--name and --out: pass one of them (--name keeps the search in RUN/searches/NAME)")
    record = out_dir is None  # RUN/searches/NAME keeps a search.json for `mpqfx report`; --out the policies only
    if out_dir is not None:
        check_out_dir(run_root(run_dir), out_dir)
    net, extras = load_supernet(run_dir)
    backend_options = parse_options(options) if options else None
    data, calibration = search_data(run_dir, net) if uses_data(net, backend, backend_options) else ([], [])
    out_dir = out_dir or searches_dir(run_root(run_dir)) / (name or search_name(backend or net.recipe.search.backend,
                                                                                backend_options))
    results = list(search_many(net, targets, backend=backend, options=backend_options, data=data,
                               calibration=calibration, indicators=extras.get("indicators"),
                               traces=extras.get("traces"), cache_dir=run_root(run_dir)))
    paths = save_search(net, out_dir, targets, results, backend_options, record=record)
    print_policy_summary(net, list(zip(targets, results, paths)), out_dir, as_json=as_json)
