"""External importance indicators: mpqfx's JSON/YAML format, LIMPQ's pickle layout, fixed layers
without entries, one-line errors, and the CLI's ``search --model --indicators``."""

from __future__ import annotations

import json
import pickle
import random
import subprocess
import sys
from collections import OrderedDict

import pytest
import timm
import torch
import yaml

import mpqfx
from mpqfx import Policy
from mpqfx.search.ilp import limpq_coefficients
from mpqfx.search.indicators import IndicatorError, load_indicators
from mpqfx.search.solver import policy_objective


@pytest.fixture(scope="module")
def net():
    return mpqfx.prepare(timm.create_model("test_resnet", num_classes=4), example_input=torch.randn(1, 3, 32, 32))


def scores(net, seed: int = 0) -> dict:
    """Decreasing per-bit scores for every searchable layer only (first/last are fixed at 8/8)."""
    rng = random.Random(seed)
    return {l.name: {"w": {b: rng.uniform(0.5, 2) / b for b in l.w_bits}, "a": {b: rng.uniform(0.5, 2) / b for b in l.a_bits}}
            for l in net.layers if len(l.w_bits) * len(l.a_bits) > 1}


def test_fixed_layers_need_no_entries_and_the_search_is_the_ilp_optimum_of_eq_4(net):
    table = scores(net)
    fixed = [l.name for l in net.layers if l.name not in table]
    assert len(fixed) == 2  # the first and the last layer
    result = mpqfx.search(net, "uniform:4", indicators=table)
    assert result.details["objective"] == pytest.approx(
        policy_objective(limpq_coefficients(net.layers, table, 1.0), result.policy), abs=1e-12)
    assert result.details["status"] == "optimal" and result.details["floors"] == "skipped: no search images"
    assert result.details["selection"]["measured"] is False  # no search images: nothing to compare with
    for seed in range(200):  # no sampled policy within the budget scores better on Eq. 4
        other = Policy.sample(net, seed)
        if result.constraints.satisfied_by(net, other):
            assert result.details["objective"] <= policy_objective(limpq_coefficients(net.layers, table, 1.0), other)


def test_json_yaml_limpq_pickle_and_mapping_give_the_same_policy(net, tmp_path):
    table = scores(net, seed=1)
    documented = {"format": "mpqfx.indicators/1",
                  "layers": {n: {"weight": {str(b): s for b, s in k["w"].items()}, "act": k["a"]} for n, k in table.items()}}
    (tmp_path / "ind.json").write_text(json.dumps(documented))
    (tmp_path / "ind.yaml").write_text(yaml.safe_dump(documented))
    limpq = {"weight": OrderedDict((f"module.{n}", {str(b): s for b, s in k["w"].items()}) for n, k in table.items()),
             "act": {f"module.{n}": {str(b): s for b, s in k["a"].items()} for n, k in table.items()},
             "layer_name": [f"module.{n}" for n in table]}  # LIMPQ's importance_extractor.py layout
    with open(tmp_path / "ind.pkl", "wb") as fh:
        pickle.dump(limpq, fh)
    expected = mpqfx.search(net, "bitops=uniform:3,size=7x", indicators=table).policy
    for source in (tmp_path / "ind.json", tmp_path / "ind.yaml", str(tmp_path / "ind.pkl"), limpq, documented):
        assert load_indicators(source, net.layers) == load_indicators(table, net.layers)
        assert mpqfx.search(net, "bitops=uniform:3,size=7x", indicators=source).policy == expected


@pytest.mark.parametrize("edit,message", [
    (lambda t, n: t.pop(n), "no entry for layer '{n}'"),
    (lambda t, n: t[n].pop("a"), "layer '{n}', key 'a': expected {{bits: score}} for bits"),
    (lambda t, n: t[n]["w"].pop(min(t[n]["w"])), "layer '{n}', key 'w': no score for bits [2]"),
    (lambda t, n: t[n]["w"].update({3: "high"}), "layer '{n}', key 'w', bits 3: expected a finite number, got 'high'"),
    (lambda t, n: t[n]["a"].update({"four": 1.0}), "layer '{n}', key 'a': bit-width 'four' is not an integer"),
    (lambda t, n: t.update({n: [1, 2]}), "layer '{n}': expected {{'w': {{bits: score}}, 'a': {{bits: score}}}}"),
])
def test_a_missing_or_malformed_entry_names_the_layer_the_key_and_the_expected_form(net, edit, message):
    table = scores(net)
    name = next(iter(table))
    edit(table, name)
    with pytest.raises(IndicatorError) as info:
        mpqfx.search(net, "uniform:4", indicators=table)
    assert message.format(n=name) in str(info.value) and "\n" not in str(info.value)


def test_unreadable_files_and_pickles_of_objects_are_refused(net, tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(IndicatorError, match="bad.json' is not a readable .json file"):
        load_indicators(tmp_path / "bad.json", net.layers)
    (tmp_path / "obj.pkl").write_bytes(pickle.dumps({"weight": {"x": torch.tensor(1.0)}, "act": {}}))
    with pytest.raises(IndicatorError, match=r"refers to torch\..*only plain dicts"):
        load_indicators(tmp_path / "obj.pkl", net.layers)
    with pytest.raises(IndicatorError, match="cannot read"):
        load_indicators(tmp_path / "missing.yaml", net.layers)


def test_indicators_switch_the_ilp_to_limpq_and_refuse_other_objectives(net):
    table = scores(net)
    sensitivity = mpqfx.Recipe.load("quickstart")  # its search: ilp on measured sensitivities
    quick = mpqfx.prepare(timm.create_model("test_resnet", num_classes=4), sensitivity, example_input=torch.randn(1, 3, 32, 32))
    assert mpqfx.search(quick, "uniform:4", indicators=scores(quick)).details["status"] == "optimal"
    with pytest.raises(mpqfx.MpqfxError, match="objective 'limpq', not by 'ilp' with objective 'sensitivity'"):
        mpqfx.search(net, "uniform:4", indicators=table, options={"objective": "sensitivity"})
    with pytest.raises(mpqfx.MpqfxError, match="not by 'greedy'"):
        mpqfx.search(net, "uniform:4", backend="greedy", indicators=table)


def test_cli_searches_a_model_with_indicators_and_no_run_directory(net, tmp_path):
    table = scores(net, seed=2)
    path = tmp_path / "ind.json"
    path.write_text(json.dumps({"layers": {n: {k: {str(b): s for b, s in v.items()} for k, v in kinds.items()}
                                           for n, kinds in table.items()}}))
    proc = subprocess.run([sys.executable, "-m", "mpqfx.cli.main", "search", "--model", "test_resnet", "--input-size", "32",
                           "--indicators", str(path), "--target", "uniform:4", "--out", str(tmp_path / "out")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    found = Policy.load(tmp_path / "out" / "mixed@uniform-4.yaml")
    reference = mpqfx.prepare(timm.create_model("test_resnet"), example_input=torch.randn(1, 3, 32, 32))
    assert found == mpqfx.search(reference, "uniform:4", indicators=path).policy
    assert "not compared with uniform policies: no search images" in proc.stdout
    table.pop(next(iter(table)))
    path.write_text(json.dumps({"layers": table}))
    proc = subprocess.run([sys.executable, "-m", "mpqfx.cli.main", "search", "--model", "test_resnet", "--input-size", "32",
                           "--indicators", str(path), "--target", "uniform:4"], capture_output=True, text=True)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and "no entry for layer" in proc.stderr
