"""Names a user types: the default recipe of each entry point, and the names of a run's policies
(``uniform-4`` the uniform policy, ``mixed@uniform-4`` the one searched under its budget), old names included."""

from __future__ import annotations

import inspect
import re

import pytest

import mpqfx
from mpqfx.cli.main import cli
from mpqfx.errors import MpqfxError
from mpqfx.export.run import resolve_policy
from mpqfx.recipe import COMPRESS_RECIPE, DEFAULT_RECIPE, Recipe
from mpqfx.rundir import searched_name, searched_policy_path


def _recipe_default(command: str) -> str:
    return next(p.default for p in cli.commands[command].params if p.name == "recipe")


def test_each_entry_point_names_its_default_recipe_and_default_still_loads_oneshot(tmp_path):
    assert (DEFAULT_RECIPE, COMPRESS_RECIPE) == ("oneshot", "quickstart")
    assert inspect.signature(mpqfx.prepare).parameters["recipe"].default == "oneshot"
    assert _recipe_default("bitops") == _recipe_default("search") == "oneshot"
    assert inspect.signature(mpqfx.compress).parameters["recipe"].default == _recipe_default("compress") == "quickstart"
    assert Recipe.load("default") == Recipe.load("oneshot")  # what scripts and recipes written before say
    child = tmp_path / "child.yaml"
    child.write_text("name: child\nbase: default\ntrain: {epochs: 2}\n")
    loaded = Recipe.load(child)
    assert loaded.train.epochs == 2 and loaded.quant.w_bits == (2, 3, 4, 5, 6)  # oneshot's bits


@pytest.mark.parametrize("target, name", [
    ("uniform:4", "mixed@uniform-4"),
    ("bitops=uniform:6,size=6x", "mixed@bitops-uniform-6_size-6x"),
    ("0.2G", "mixed@0.2G"),
    ("avg=3.5", "mixed@avg-3.5"),
    ("size=2MB", "mixed@size-2MB"),
    ("bitops=uniform:4, avg=4", "mixed@bitops-uniform-4_-avg-4"),
])
def test_searched_policy_names_are_file_names_on_every_os(target, name, tmp_path):
    assert searched_name(target) == name
    assert re.fullmatch(r"[A-Za-z0-9._@-]+", name) and not name.endswith(".")  # none of Windows' <>:"/\|?*
    (tmp_path / f"{name}.yaml").write_text("{}\n")
    assert [p.name for p in tmp_path.iterdir()] == [f"{name}.yaml"]


def test_a_folder_of_the_old_names_keeps_being_read(tmp_path):
    assert searched_policy_path(tmp_path, "uniform:4") == tmp_path / "mixed@uniform-4.yaml"
    (tmp_path / "uniform-4.yaml").write_text("{}\n")  # written before the mixed@ names: the searched policy
    assert searched_policy_path(tmp_path, "uniform:4") == tmp_path / "uniform-4.yaml"
    (tmp_path / "mixed@uniform-4.yaml").write_text("{}\n")
    assert searched_policy_path(tmp_path, "uniform:4") == tmp_path / "mixed@uniform-4.yaml"


def test_export_resolves_every_kind_of_policy_name(tmp_path):
    run = tmp_path / "run"
    (run / "policies").mkdir(parents=True)
    (run / "searches" / "ilp").mkdir(parents=True)
    (run / "recipe.yaml").write_text(Recipe.load("quickstart").to_yaml())
    for path in (run / "policies" / "mixed@uniform-3.yaml", run / "policies" / "uniform-4.yaml",  # the latter: old
                 run / "searches" / "ilp" / "mixed@0.1G.yaml"):
        path.write_text("{}\n")
    assert resolve_policy(run, "uniform-4") == ("uniform-4", 4)  # the uniform policy, not the old file
    assert resolve_policy(run, "mixed@uniform-4") == ("mixed@uniform-4", run / "policies" / "uniform-4.yaml")
    assert resolve_policy(run, "uniform:4") == ("mixed@uniform-4", run / "policies" / "uniform-4.yaml")
    assert resolve_policy(run, "mixed@uniform-3.yaml") == ("mixed@uniform-3", run / "policies" / "mixed@uniform-3.yaml")
    assert resolve_policy(run, "ilp/mixed@0.1G") == ("ilp/mixed@0.1G", run / "searches" / "ilp" / "mixed@0.1G.yaml")
    given = tmp_path / "mine.yaml"
    given.write_text("{}\n")
    assert resolve_policy(run, given) == ("mine", given)
    with pytest.raises(MpqfxError, match=r"--policy 'mixed@2G': no such file or policy of .* \(the run's policies: "
                                         r"mixed@uniform-3, mixed@uniform-4, uniform-8, uniform-4, uniform-3\)"):
        resolve_policy(run, "mixed@2G")
