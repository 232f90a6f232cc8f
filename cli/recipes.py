"""``mpqfx recipes`` and ``mpqfx validate``: the shipped recipes, and checking a recipe file."""

from __future__ import annotations

import sys

import click


@click.command("recipes")
def recipes_command() -> None:
    """List the shipped recipes, one line each."""
    from mpqfx.recipe import COMPRESS_RECIPE, DEFAULT_RECIPE, Recipe, shipped_recipes

    uses = {COMPRESS_RECIPE: " (the default of compress)",
            DEFAULT_RECIPE: " (the default of prepare, search --model and bitops; also loads as 'default')"}
    for name in sorted(shipped_recipes()):
        recipe = Recipe.load(name)
        alias = uses.get(name, "")
        click.echo(f"{name}{alias}: {recipe.description}")


@click.command("validate")
@click.argument("recipe")
def validate_command(recipe: str) -> None:
    """Check a recipe (file or shipped name); print every problem, exit 1 if there is one."""
    from mpqfx.errors import RecipeError
    from mpqfx.recipe import Recipe

    try:
        loaded = Recipe.load(recipe)
    except RecipeError as exc:
        click.echo(f"{exc.source}: {len(exc.problems)} problem(s)", err=True)
        for problem in exc.problems:
            click.echo(f"  - {problem}", err=True)
        sys.exit(1)
    click.echo(f"{recipe}: OK (strategy {loaded.strategy.name}, search {loaded.search.backend}, "
               f"bits w{list(loaded.quant.w_bits)} a{list(loaded.quant.a_bits)})")
