"""Recipes: shipped ones validate, bad fields are all reported at once."""

from __future__ import annotations

import pytest

from mpqfx import Recipe, RecipeError
from mpqfx.recipe import BnMode, shipped_recipes


@pytest.mark.parametrize("name", sorted(shipped_recipes()))
def test_every_shipped_recipe_validates_and_round_trips(name):
    recipe = Recipe.load(name)
    assert recipe.name == name
    assert Recipe.from_yaml(recipe.to_yaml()) == recipe


def test_defaults():
    r = Recipe.load("default")
    assert r == Recipe.load("oneshot") and r.strategy.name == "oneshot"
    assert r.quant.w_bits == r.quant.a_bits == (2, 3, 4, 5, 6)
    assert r.quant.first_last_bits == 8 and r.quant.depthwise_exclude == (2,)
    assert r.quant.bn is BnMode.TRANSITIONAL


def test_every_problem_is_reported_in_one_error():
    text = """
quant:
  w_bits: []
  a_bits: [2, 9]
  first_last_bits: 0
  bn: magic
  wbits: [4]
graph:
  input_size: [3, 32]
"""
    with pytest.raises(RecipeError) as info:
        Recipe.from_yaml(text, "bad.yaml")
    problems = info.value.problems
    joined = " | ".join(problems)
    assert "quant.w_bits: must not be empty" in joined
    assert "quant.a_bits: bit-widths [9] out of range (allowed: 1..8)" in joined
    assert "quant.first_last_bits: 0 out of range" in joined
    assert "quant.bn: 'magic' is not allowed; expected one of 'transitional', 'switchable', 'shared'" in joined
    assert "quant.wbits: unknown field" in joined
    assert "graph.input_size: expected [C, H, W]" in joined
    assert str(info.value).startswith("bad.yaml: ")


@pytest.mark.parametrize("text,match", [
    ("quant: {w_bits: 4}", r"quant.w_bits: expected a list of int, got 4"),
    ("quant: {overrides: [{pattern: 'a*'}]}", r"quant.overrides\[0\].needs w_bits or a_bits"),
    ("quant: {overrides: [{pattern: 'a*', w_bits: [0]}]}", r"overrides\[0\].w_bits: bit-widths \[0\] out of range"),
    ("name: [1]", "name: expected str"),
    ("- 1", "expected a mapping"),
    ("quant: {w_bits: [4, 4]}", "repeated bit-widths"),
    ("quant: {w_bits: [2], depthwise_exclude: [2]}", "removes every weight bit-width"),
])
def test_bad_fields(text, match):
    with pytest.raises(RecipeError, match=match):
        Recipe.from_yaml(text)


def test_unknown_recipe_name_lists_shipped(tmp_path):
    with pytest.raises(RecipeError, match=r"no shipped recipe named 'nope' \(shipped: bitmixer, double_rounding, imagenet, limpq, oneshot, ptq, quickstart; 'default' is oneshot\)"):
        Recipe.load("nope")
    with pytest.raises(RecipeError, match="cannot read"):
        Recipe.load(tmp_path / "missing.yaml")


@pytest.mark.parametrize("name,message", [
    ("quickstrat", "no shipped recipe named 'quickstrat', did you mean 'quickstart'? (shipped: bitmixer"),
    ("defualt", "did you mean 'default'?"),
    ("oneshot.yaml", "oneshot.yaml: cannot read: No such file or directory (a shipped recipe is named 'oneshot': "
                     "pass the name without .yaml)"),
])
def test_a_misspelt_recipe_name_gets_the_closest_shipped_one(name, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RecipeError) as info:
        Recipe.load(name)
    assert message in str(info.value)


def test_misspelt_recipe_keys_and_values_get_the_closest_allowed_one():
    text = ("train: {lrr: 1, optimizer: adamm, sched: cosin}\nquant: {bn: transitonal, w_bit: [4]}\n"
            "strategy: {name: oneshoot}\nsearch: {backend: ilp, options: {objectiv: limpq}}\nevaluat: {}\n")
    with pytest.raises(RecipeError) as info:
        Recipe.from_yaml(text)
    problems = info.value.problems
    for expected in ("train.lrr: unknown field, did you mean 'lr'? (allowed: epochs,",
                     "quant.w_bit: unknown field, did you mean 'w_bits'? (allowed:",
                     "evaluat: unknown field, did you mean 'evaluate'? (allowed:",
                     "search.options.objectiv: unknown field, did you mean 'objective'? (allowed:",
                     "train.optimizer: 'adamm' is not allowed (did you mean 'adam'?); expected one of sgd",
                     "train.sched: 'cosin' is not allowed (did you mean 'cosine'?)",
                     "quant.bn: 'transitonal' is not allowed (did you mean 'transitional'?); expected one of",
                     "strategy.name: unknown strategy 'oneshoot' (did you mean 'oneshot'?); registered: bitmixer"):
        assert sum(p.startswith(expected) for p in problems) == 1, (expected, problems)


def test_no_suggestion_is_made_up_when_nothing_is_close():
    with pytest.raises(RecipeError) as info:
        Recipe.from_yaml("train: {zzz: 1, optimizer: qqq}\nquant: {bn: xyz}\n")
    assert len(info.value.problems) == 3
    assert not any("did you mean" in p for p in info.value.problems)


def test_recipe_from_file(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("name: mine\nquant: {w_bits: [4, 8], a_bits: [8], bn: shared}\n")
    r = Recipe.load(path)
    assert r.quant.w_bits == (4, 8) and r.quant.bn is BnMode.SHARED


def test_a_recipe_extends_a_shipped_one_with_only_the_keys_it_changes(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("name: mine\nbase: oneshot\ntrain: {epochs: 3, distill: {teacher: true}}\nquant: {w_bits: [2, 4]}\n")
    mine, oneshot = Recipe.load(path), Recipe.load("oneshot")
    assert mine.train.epochs == 3 and mine.train.distill.teacher is True and mine.quant.w_bits == (2, 4)
    # everything else deep-merges from oneshot: the rest of train and train.distill, quant, strategy options
    assert mine.train.lr == oneshot.train.lr == 0.04 and mine.train.warmup_epochs == 1
    assert mine.train.distill.kl_weight == 0.5 and mine.quant.a_bits == (2, 3, 4, 5, 6)
    assert mine.strategy == oneshot.strategy and mine.search == oneshot.search
    assert mine.name == "mine" and mine.description == ""  # name and description are never inherited
    assert "base" not in mine.to_dict() and Recipe.from_yaml(mine.to_yaml()) == mine  # saved whole


def test_a_base_may_be_a_path_next_to_the_file_and_another_strategy_starts_its_options_afresh(tmp_path):
    (tmp_path / "parent.yaml").write_text("base: limpq\ntrain: {epochs: 4}\n")
    (tmp_path / "child.yaml").write_text("base: parent.yaml\nstrategy: {name: oneshot, options: {samples: 2}}\n")
    child = Recipe.load(tmp_path / "child.yaml")
    assert child.train.epochs == 4 and child.train.lr == Recipe.load("limpq").train.lr == 0.01
    assert child.strategy.name == "oneshot" and child.strategy.options.samples == 2
    assert child.strategy.options.idm_weight == 0.01  # oneshot's default, not limpq's random_policies


@pytest.mark.parametrize("text,message", [
    ("base: oneshoot\n", "base: no shipped recipe named 'oneshoot' (did you mean 'oneshot'?) (shipped: bitmixer,"),
    ("base: missing.yaml\n", "base: cannot read 'missing.yaml' (No such file or directory)"),
    ("base: self.yaml\n", "self.yaml goes round in a circle"),
    ("base: [oneshot]\n", "base: expected a shipped recipe name or a YAML path, got ['oneshot']"),
    ("base: oneshot\ntrain: {lrr: 1}\n", "train.lrr: unknown field"),
])
def test_bad_bases_are_named(text, message, tmp_path):
    (tmp_path / "self.yaml").write_text(text)
    with pytest.raises(RecipeError) as info:
        Recipe.load(tmp_path / "self.yaml")
    assert message in str(info.value)


def test_the_imagenet_recipe_scales_rfq_s_learning_rate_to_its_batch():
    imagenet, oneshot = Recipe.load("imagenet"), Recipe.load("oneshot")
    assert imagenet.train.lr == pytest.approx(0.04 * imagenet.train.batch_size / 512)  # RFQ: 0.04 at 4 x 128
    assert (imagenet.train.epochs, imagenet.train.warmup_epochs, imagenet.train.weight_decay) == (150, 5, 2.5e-5)
    assert imagenet.train.distill.teacher and imagenet.train.quant_lr == 1e-5
    assert imagenet.strategy == oneshot.strategy and imagenet.strategy.options.samples == 3
    assert "supplementary sec. A" in imagenet.description
