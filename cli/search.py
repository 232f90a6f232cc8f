"""``mpqfx search``: policies for one or more budgets from a trained run, or from a model and
external importance indicators, without training."""

from __future__ import annotations

from pathlib import Path

import click

from mpqfx.cli.options import device_option, parse_options
from mpqfx.errors import MpqfxError


@click.command("search")
@click.option("--run", "run_dir", default=None, type=click.Path(path_type=Path),
              help="Run directory (or supernet file) written by `mpqfx compress`.")
@click.option("--model", "model_name", default=None,
              help="A timm model name instead of --run: searches its layers with --indicators, no weights needed.")
@click.option("--indicators", default=None, type=click.Path(path_type=Path),
              help="Importance indicators for the ILP (JSON/YAML in mpqfx's format, or LIMPQ's .pkl); "
                   "sets the objective to limpq.")
@click.option("--target", "targets", multiple=True, required=True,
              help="Budget: 4.5G, uniform:4, size=8x, avg=3.5, or key=value terms joined by commas (repeatable).")
@click.option("--backend", default=None, help="ilp, greedy or hessian (default: the run's recipe).")
@click.option("--option", "options", multiple=True, metavar="KEY=VALUE",
              help="A backend option (repeatable), e.g. objective=limpq for ilp; the others stay the recipe's.")
@click.option("--search-images", type=click.IntRange(0), default=None,
              help="Training images of the run that candidate policies are measured on (default: the recipe's).")
@click.option("--recipe", default="oneshot", show_default=True,
              help="With --model: shipped recipe name or YAML path whose layer rules (bit candidates) apply.")
@click.option("--input-size", default=None, help="With --model: H or C,H,W (default: the model's timm pretrained_cfg).")
@click.option("--name", default=None,
              help="Keep the policies in RUN/searches/NAME [default: the backend and the --option values, "
                   "e.g. ilp-objective=limpq].")
@click.option("--out", "out_dir", default=None, type=click.Path(path_type=Path),
              help="Write the policy files to this folder instead (not added to the run's report; "
                   "default with --model: ./policies).")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON (for scripts) instead of a table.")
@device_option("of --run measures candidate policies on")
def search_command(run_dir: Path | None, model_name: str | None, indicators: Path | None, targets: tuple[str, ...],
                   backend: str | None, options: tuple[str, ...], search_images: int | None, recipe: str,
                   input_size: str | None, name: str | None, out_dir: Path | None, as_json: bool,
                   device: str | None) -> None:
    """Search policies for one or more budgets on a trained supernet (no training).

    The run's own policies, report and exports stay as `mpqfx compress` wrote them; `mpqfx report`
    adds the searches kept in RUN/searches/ to the report."""
    from rich.console import Console

    from mpqfx.cli.tables import print_policy_summary
    from mpqfx.rundir import run_root, search_data
    from mpqfx.search.candidates import describe_selection
    from mpqfx.search.progress import SearchProgress
    from mpqfx.search.run import search_many
    from mpqfx.search.saved import check_out_dir, save_search, search_name, searches_dir
    from mpqfx.train.distributed import resolve_device

    device = resolve_device(device)
    if (run_dir is None) == (model_name is None):
        raise MpqfxError("pass either --run RUN (a trained run) or --model NAME (with --indicators)")
    if model_name is not None and indicators is None:
        raise MpqfxError("--model: needs --indicators FILE (a model without a trained supernet has no indicators)")
    if name is not None and out_dir is not None:
        raise MpqfxError("--name and --out: pass one of them (--name keeps the search in RUN/searches/NAME)")
    backend_options = parse_options(options) if options else None
    data, calibration, extras = [], [], {}
    if run_dir is not None:
        from mpqfx.store import load_supernet

        if not run_dir.exists():
            raise MpqfxError(f"--run: {str(run_dir)!r} does not exist")
        if out_dir is not None:
            check_out_dir(run_root(run_dir), out_dir)
        net, extras = load_supernet(run_dir, device=device)
        data, calibration = search_data(run_dir, net, search_images)
    else:
        if name is not None:
            raise MpqfxError("--name: only with --run (a search kept in the run); with --model pass --out")
        net = _model_layers(model_name, recipe, input_size)
    record = run_dir is not None and out_dir is None  # RUN/searches/NAME keeps a search.json for `mpqfx report`
    if out_dir is None:
        out_dir = (searches_dir(run_root(run_dir)) / (name or search_name(backend or net.recipe.search.backend,
                                                                           backend_options))
                   if run_dir is not None else Path("policies"))
    progress_console = Console(stderr=True) if as_json else None  # --json: stdout holds the JSON only
    with SearchProgress(console=progress_console) as bar:
        found = search_many(net, targets, backend=backend, options=backend_options, data=data,
                            calibration=calibration, indicators=indicators if indicators is not None
                            else extras.get("indicators"), traces=extras.get("traces"),
                            cache_dir=run_root(run_dir) if run_dir else None, report=bar)
        results = []
        for target in targets:
            bar.target = target
            results.append(next(found))
    paths = save_search(net, out_dir, targets, results, backend_options, record=record)
    print_policy_summary(net, list(zip(targets, results, paths)), out_dir, as_json=as_json)
    if not as_json:
        console = Console()  # wraps the verdicts at the terminal's width
        for target, result in zip(targets, results):
            note = "; ".join(filter(None, [describe_selection(result.details), result.details.get("status", "")]))
            if note:
                console.print(f"{target}: {note}", markup=False, highlight=False)


def _model_layers(model_name: str, recipe: str, input_size: str | None):
    """The supernet of a timm model at its initial weights: its layer table is all an ILP on external
    indicators needs."""
    from mpqfx.cli.options import parse_input_size
    from mpqfx.models import create_model
    from mpqfx.prepare import default_example_input, prepare
    from mpqfx.recipe import Recipe

    recipe_obj = Recipe.load(recipe)
    model = create_model(model_name)
    example = parse_input_size(input_size, default_example_input(model, recipe_obj))
    return prepare(model, recipe_obj, example_input=example, inplace=True)
