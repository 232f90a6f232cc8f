"""``mpqfx search``: policies for one or more budgets from a trained run, or from a model and
external importance indicators, without training."""

from __future__ import annotations

from pathlib import Path

import click

from mpqfx.cli.options import parse_options
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
@click.option("--recipe", default="default", show_default=True,
              help="With --model: shipped recipe name or YAML path whose layer rules (bit candidates) apply.")
@click.option("--input-size", default=None, help="With --model: H or C,H,W (default: the model's timm pretrained_cfg).")
@click.option("--out", "out_dir", default=None, type=click.Path(path_type=Path),
              help="Where to write the policies (default: RUN/policies, or ./policies with --model).")
def search_command(run_dir: Path | None, model_name: str | None, indicators: Path | None, targets: tuple[str, ...],
                   backend: str | None, options: tuple[str, ...], search_images: int | None, recipe: str,
                   input_size: str | None, out_dir: Path | None) -> None:
    """Search policies for one or more budgets on a trained supernet (no training)."""
    from mpqfx.cli.tables import print_policy_summary
    from mpqfx.rundir import policy_filename, run_root, search_data
    from mpqfx.search.candidates import describe_selection
    from mpqfx.search.progress import SearchProgress
    from mpqfx.search.run import search_many

    if (run_dir is None) == (model_name is None):
        raise MpqfxError("pass either --run RUN (a trained run) or --model NAME (with --indicators)")
    if model_name is not None and indicators is None:
        raise MpqfxError("--model: needs --indicators FILE (a model without a trained supernet has no indicators)")
    data, calibration, extras = [], [], {}
    if run_dir is not None:
        from mpqfx.store import load_supernet

        if not run_dir.exists():
            raise MpqfxError(f"--run: {str(run_dir)!r} does not exist")
        net, extras = load_supernet(run_dir)
        data, calibration = search_data(run_dir, net, search_images)
        out_dir = out_dir or run_root(run_dir) / "policies"
    else:
        net = _model_layers(model_name, recipe, input_size)
        out_dir = out_dir or Path("policies")
    rows = []
    with SearchProgress() as bar:
        results = search_many(net, targets, backend=backend, options=parse_options(options) if options else None,
                              data=data, calibration=calibration,
                              indicators=indicators, traces=extras.get("traces"), cache_dir=run_root(run_dir) if run_dir else None, report=bar)
        for target in targets:
            bar.target = target
            result = next(results)
            rows.append((target, result, result.policy.save(out_dir / policy_filename(target))))
    print_policy_summary(net, rows)
    for target, result, _ in rows:
        note = "; ".join(filter(None, [describe_selection(result.details), result.details.get("status", "")]))
        click.echo(f"{target}: {note}")


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
