"""``mpqfx`` console script. Bad input ends with one line on stderr and exit code 2 (a run whose
export failed in part: exit code 1)."""

from __future__ import annotations

import sys

import click

from mpqfx.cli.options import parse_input_size
from mpqfx.cli.compress import compress_command
from mpqfx.cli.export import export_command
from mpqfx.cli.finetune import finetune_command
from mpqfx.cli.recipes import recipes_command, validate_command
from mpqfx.cli.report import report_command
from mpqfx.cli.search import search_command
from mpqfx.errors import MpqfxError


class _Group(click.Group):
    """Turns mpqfx's own errors into one line on stderr instead of a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except MpqfxError as exc:
            click.echo(f"mpqfx: error: {exc}", err=True)
            sys.exit(getattr(exc, "exit_code", 2))
        except KeyboardInterrupt as exc:  # an Interrupted says what ran and how to continue
            click.echo(f"mpqfx: {exc}" if str(exc) else "mpqfx: interrupted", err=True)
            sys.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mpqfx")
def cli() -> None:
    """Mixed-precision quantization for timm models: train a supernet once, search any budget."""


@cli.command()
@click.option("--model", "model_name", required=True, help="timm model name, e.g. efficientnet_lite0.")
@click.option("--bits", type=click.IntRange(1, 8), default=None, help="Uniform bit-width for weights and activations.")
@click.option("--wbits", type=click.IntRange(1, 8), default=None, help="Weight bit-width (overrides --bits).")
@click.option("--abits", type=click.IntRange(1, 8), default=None, help="Activation bit-width (overrides --bits).")
@click.option("--input-size", default=None, help="H (square) or C,H,W; default: the model's timm pretrained_cfg.")
@click.option("--recipe", default="oneshot", show_default=True,
              help="Shipped recipe name or YAML path (layer rules; the same as prepare()'s default).")
@click.option("--per-layer/--total-only", default=True, show_default=True, help="Print the per-layer table.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (for scripts) instead of a table.")
def bitops(model_name: str, bits: int | None, wbits: int | None, abits: int | None, input_size: str | None,
           recipe: str, per_layer: bool, as_json: bool) -> None:
    """Print BitOPs and size of a timm model at uniform bit-widths (first/last at the recipe's bits)."""
    from mpqfx.cli.tables import print_cost_report
    from mpqfx.models import create_model
    from mpqfx.prepare import default_example_input, prepare
    from mpqfx.quant.policy import Policy
    from mpqfx.recipe import Recipe

    w, a = wbits or bits or 4, abits or bits or 4
    recipe_obj = Recipe.load(recipe)
    model = create_model(model_name)
    example = parse_input_size(input_size, default_example_input(model, recipe_obj))
    net = prepare(model, recipe_obj, example_input=example, inplace=True)
    print_cost_report(net, Policy.uniform(net, w, a), title=f"{model_name} at W{w}/A{a}, input {list(example.shape[1:])}",
                      per_layer=per_layer, as_json=as_json)


for command in (compress_command, search_command, export_command, finetune_command, report_command, recipes_command,
                validate_command):
    cli.add_command(command)


NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())  # click >= 8.2


def main() -> None:
    """The console script: click's own usage errors become one line as well."""
    try:
        code = cli.main(prog_name="mpqfx", standalone_mode=False)
    except NO_ARGS_IS_HELP as exc:  # bare `mpqfx`: the help
        click.echo(exc.format_message())
        sys.exit(0)
    except click.ClickException as exc:
        where = exc.ctx.command_path if isinstance(exc, click.UsageError) and exc.ctx else "mpqfx"
        click.echo(f"mpqfx: error: {exc.format_message()} (see `{where} --help`)", err=True)
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo("mpqfx: interrupted", err=True)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
