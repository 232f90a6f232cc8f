"""Train once, search many: a saved supernet reloads exactly; `mpqfx search` writes policies."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import timm
import torch

import mpqfx
from mpqfx import Policy
from mpqfx.data.spec import DataSpec
from mpqfx.rundir import RunDir
from mpqfx.search import search
from mpqfx.store import load_supernet, save_supernet
from mpqfx.supernet import ModelSpec


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, fashion_dir):
    """A run directory holding a (briefly perturbed) test_resnet supernet on Fashion-MNIST-format data."""
    root = tmp_path_factory.mktemp("run")
    spec = ModelSpec("test_resnet", {"in_chans": 1, "num_classes": 10})
    torch.manual_seed(0)
    net = mpqfx.prepare(timm.create_model(spec.name, **spec.kwargs), example_input=torch.randn(1, 1, 32, 32),
                        model_spec=spec)
    with torch.no_grad():
        for module in net.layer_modules().values():
            module.weight_quant.step(min(module.weight_quant.bits)).mul_(1.5)  # differs from a fresh build
    save_supernet(net, RunDir(root).supernet, extras={"traces": {l.name: 1.0 + i for i, l in enumerate(net.layers)}})
    data = DataSpec("fashion-mnist", str(fashion_dir), train_limit=200, val_limit=50)
    RunDir(root).write_meta({"model": {"name": spec.name, "kwargs": spec.kwargs}, "data": data.to_dict()})
    return root, net


def test_saved_supernet_reloads_with_identical_outputs(run_dir):
    root, net = run_dir
    loaded, extras = load_supernet(root)
    x = torch.randn(3, 1, 32, 32)
    policy = Policy.sample(net, 5)
    net.eval(), loaded.eval()
    with torch.no_grad(), net.use_policy(policy), loaded.use_policy(policy):
        torch.testing.assert_close(loaded(x), net(x), rtol=0, atol=0)
    assert extras["traces"][net.layers[1].name] == 2.0 and loaded.model_spec == net.model_spec


def test_search_from_a_run_directory_without_training(run_dir):
    root, net = run_dir
    result = search(root, "uniform:4", options={"objective": "hessian"})
    assert mpqfx.bitops(net, result.policy).total <= mpqfx.bitops(net, Policy.uniform(net, 4)).total


def test_cli_search_writes_one_policy_per_target(run_dir, tmp_path):
    root, net = run_dir
    out = tmp_path / "policies"
    proc = subprocess.run([sys.executable, "-m", "mpqfx.cli.main", "search", "--run", str(root),
                           "--target", "uniform:4", "--target", "bitops=uniform:3,size=6x", "--out", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    files = sorted(p.name for p in out.iterdir())
    assert files == ["mixed@bitops-uniform-3_size-6x.yaml", "mixed@uniform-4.yaml"]
    policy = Policy.load(out / "mixed@uniform-4.yaml").validate(net.layers)
    assert mpqfx.bitops(net, policy).total <= mpqfx.bitops(net, Policy.uniform(net, 4)).total
    assert "searched policies" in proc.stdout


def test_cli_greedy_search_rebuilds_its_data_from_run_json(run_dir, tmp_path):
    root, net = run_dir
    target = mpqfx.bitops(net, Policy.max(net)).total * 0.95
    proc = subprocess.run([sys.executable, "-m", "mpqfx.cli.main", "search", "--run", str(root), "--backend", "greedy",
                           "--target", f"bitops={target:.0f}", "--out", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    (policy_file,) = tmp_path.iterdir()
    assert mpqfx.bitops(net, Policy.load(policy_file)).total <= target


def test_cli_search_measures_on_the_given_number_of_search_images_with_progress(run_dir, tmp_path):
    root, _ = run_dir
    proc = subprocess.run([sys.executable, "-m", "mpqfx.cli.main", "search", "--run", str(root), "--target", "uniform:4",
                           "--option", "floors=true", "--search-images", "40", "--out", str(tmp_path)],
                          capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr
    assert "search uniform:4: candidates" in proc.stdout  # the progress row: measured / total, time left
    verdict = proc.stdout.strip().splitlines()[-1]
    assert verdict.startswith("uniform:4: ") and " chosen: loss " in verdict and "on 40 search images" in verdict


@pytest.mark.parametrize("args,message", [
    (["--run", "/nonexistent", "--target", "4G"], "--run: '/nonexistent' does not exist"),
    (["--target", "0.000001G"], "below the minimum"),
    (["--target", "fast"], "cannot read bitops value 'fast'"),
    (["--target", "uniform:9"], "target 'uniform:9': 9 is not a candidate weight bit-width (candidates: 2, 3, 4, 5, 6)"),
    (["--target", "uniform:4", "--search-images", "-1"], "Invalid value for '--search-images'"),
])
def test_cli_search_errors_are_one_line(run_dir, args, message):
    root, _ = run_dir
    full = ["search"] + (["--run", str(root)] if "--run" not in args else []) + args
    proc = subprocess.run([sys.executable, "-m", "mpqfx.cli.main", *full], capture_output=True, text=True)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and message in proc.stderr and "Traceback" not in proc.stderr
