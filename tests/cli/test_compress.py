"""`mpqfx compress` end to end through the CLI with tiny settings, and the commands around it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

import mpqfx
from mpqfx import Policy
from mpqfx.export import load_integer_model
from mpqfx.search import parse_target
from mpqfx.store import load_supernet

TARGETS = ["uniform:4", "bitops=uniform:5,size=6x"]


def mpqfx_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "mpqfx.cli.main", *map(str, args)], capture_output=True, text=True,
                          env=env)


def one_line_error(proc, message):
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in proc.stderr, proc.stderr


@pytest.fixture(scope="module")
def run(tmp_path_factory, fashion_dir):
    root = tmp_path_factory.mktemp("compress") / "run"
    targets = [a for t in TARGETS for a in ("--target", t)]
    proc = mpqfx_cli("compress", "--model", "test_resnet", "--data-dir", fashion_dir, "--train-images", 128,
                     "--val-images", 64, "--batch-size", 32, "--out", root, *targets)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root, proc


def test_run_directory_holds_every_promised_file(run):
    root, proc = run
    for name in ("run.json", "recipe.yaml", "float.pt", "supernet.pt", "checkpoint.pt", "metrics.jsonl",
                 "report.json", "report.md", "pareto.png", "bits.png", "float/checkpoint.pt"):
        assert (root / name).is_file(), name
    for png in ("pareto.png", "bits.png"):
        assert (root / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (root / "policies").iterdir()) == ["bitops-uniform-5_size-6x.yaml", "uniform-4.yaml"]
    exports = sorted(p.name for p in (root / "export").iterdir())
    assert exports == sorted(f"{s}.{e}" for s in ("bitops-uniform-5_size-6x", "uniform-4") for e in ("onnx", "safetensors"))
    assert str(root) in proc.stdout and "uniform 4/4" in proc.stdout and "report.md" in proc.stdout
    for line in (root / "metrics.jsonl").read_text().splitlines():
        assert "loss" in json.loads(line)


def test_report_lists_float_uniform_and_searched_with_exact_bitops(run):
    root, _ = run
    report = json.loads((root / "report.json").read_text())
    net, _ = load_supernet(root)
    kinds = [p["kind"] for p in report["policies"]]
    assert kinds == ["float", "uniform", "uniform", "uniform", "searched", "searched"]
    assert [p["name"] for p in report["policies"]][1:4] == ["uniform 8/8", "uniform 4/4", "uniform 3/3"]
    for entry in report["policies"]:
        policy = Policy.bypass(net.layers) if entry["bits"] is None else Policy({k: tuple(v) for k, v in entry["bits"].items()})
        cost = mpqfx.bitops(net, policy)
        assert entry["bitops"] == cost.total and entry["size_bits"] == cost.size_bits
        assert 0 <= entry["accuracy"] <= 1
    assert report["float_accuracy"] == report["policies"][0]["accuracy"]
    assert set(report["seconds"]) == {"warm start", "supernet training", "search", "evaluation", "export"}
    markdown = (root / "report.md").read_text()
    assert "Float accuracy" in markdown and "Per-layer bits" in markdown and "pareto.png" in markdown


def test_searched_policies_meet_their_targets(run):
    root, _ = run
    net, _ = load_supernet(root)
    report = json.loads((root / "report.json").read_text())
    searched = [p for p in report["policies"] if p["kind"] == "searched"]
    assert [p["target"] for p in searched] == TARGETS
    for entry in searched:
        policy = Policy.load(entry["policy_file"])
        assert parse_target(entry["target"], net).satisfied_by(net, policy)


def test_exported_onnx_runs_integer_kernels_computes_the_integer_file_and_is_measured_in_the_report(run):
    root, _ = run
    report = json.loads((root / "report.json").read_text())
    net, _ = load_supernet(root)
    x = torch.randn(4, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    for entry in [p for p in report["policies"] if p["kind"] == "searched"]:
        exports = entry["exports"]
        module = load_integer_model(exports["safetensors"])
        expected = module(x).detach().numpy()
        got = ort.InferenceSession(exports["onnx"], providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
        assert np.abs(got - expected).max() <= 1e-4 * (expected.max() - expected.min())
        assert exports["onnx_images"] == 64  # the whole held-out split
        assert exports["onnx_integer_kernels"] == exports["onnx_layers"] == len(net.layers)
        assert exports["onnx_supernet_accuracy"] == pytest.approx(entry["accuracy"])  # the row the report shows
        assert 0 <= exports["onnx_accuracy"] <= 1 and 0 <= exports["onnx_top1_agreement"] <= 1
        assert exports["onnx_bytes"] == (root / "export" / f"{Path(entry['policy_file']).stem}.onnx").stat().st_size
    markdown = (root / "report.md").read_text()
    assert "ONNX top-1" in markdown and f"{len(net.layers)}/{len(net.layers)}" in markdown


def test_export_command_writes_a_policy_again(run, tmp_path):
    root, _ = run
    out = tmp_path / "again.safetensors"
    proc = mpqfx_cli("export", "--run", root, "--policy", root / "policies" / "uniform-4.yaml", "--format",
                     "safetensors", "--out", out)
    assert proc.returncode == 0, proc.stderr
    x = torch.randn(2, 1, 32, 32)
    assert torch.equal(load_integer_model(out)(x), load_integer_model(root / "export" / "uniform-4.safetensors")(x))
    proc = mpqfx_cli("export", "--run", root, "--format", "double-rounding")  # needs no --policy
    one_line_error(proc, "weight_quantizer: double_rounding")


def _snapshot(root):
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_export_takes_a_policy_name_and_measures_the_onnx_file(run, tmp_path):
    root, _ = run
    out = tmp_path / "by-name.onnx"
    proc = mpqfx_cli("export", "--run", root, "--policy", "uniform:4", "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert out.is_file() and "top-1 agreement" in proc.stdout and "64 held-out images" in proc.stdout
    assert f"{len(load_supernet(root)[0].layers)}/" in proc.stdout


@pytest.mark.parametrize("args, message", [
    (["--policy", "uniform-9"], "the run's policies: bitops-uniform-5_size-6x, uniform-4"),
    (["--policy", "uniform-4", "--opset", "11"], "--opset 11: the QDQ form needs opset 13 to 20"),
    (["--format", "onnx"], "--format onnx needs --policy"),
])
def test_bad_export_requests_are_one_line_and_change_nothing(run, args, message):
    root, _ = run
    before = _snapshot(root)
    one_line_error(mpqfx_cli("export", "--run", root, *args), message)
    assert _snapshot(root) == before


def test_export_needs_a_trained_supernet_and_onnxruntime(run, tmp_path):
    root, _ = run
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    for name in ("run.json", "recipe.yaml"):
        (unfinished / name).write_bytes((root / name).read_bytes())
    (unfinished / "policies").mkdir()
    (unfinished / "policies" / "uniform-4.yaml").write_bytes((root / "policies" / "uniform-4.yaml").read_bytes())
    one_line_error(mpqfx_cli("export", "--run", unfinished, "--policy", "uniform-4"), "has no trained supernet")
    blocker = tmp_path / "no-ort"
    (blocker / "onnxruntime").mkdir(parents=True)
    (blocker / "onnxruntime" / "__init__.py").write_text("raise ImportError('blocked for the test')\n")
    before = _snapshot(root)
    proc = mpqfx_cli("export", "--run", root, "--policy", "uniform-4", env={**os.environ, "PYTHONPATH": str(blocker)})
    one_line_error(proc, "needs the onnxruntime package, which is not installed: pip install onnxruntime")
    assert _snapshot(root) == before


def test_a_finished_run_is_not_overwritten(run, fashion_dir):
    root, _ = run
    before = (root / "report.json").read_bytes()
    proc = mpqfx_cli("compress", "--model", "test_resnet", "--data-dir", fashion_dir, "--out", root)
    one_line_error(proc, "already holds a run; pass --resume")
    assert (root / "report.json").read_bytes() == before


@pytest.mark.parametrize("args,message", [
    (["--pretrained"], "cannot fetch timm's pretrained weights for 'test_resnet'"),
    (["--checkpoint", "/nonexistent.pt"], "--checkpoint: no file at '/nonexistent.pt'"),
    (["--target", "0.0000001G"], "below the minimum"),
    (["--recipe", "nope"], "no shipped recipe named 'nope'"),
    (["--data", "/nonexistent"], "data directory '/nonexistent' does not exist"),
    (["--data", "{tmp}/classless"], "has no class folders"),
    (["--model", "resnet181"], "unknown timm model 'resnet181'; close matches: resnet18"),
    (["--data-dir", "/nonexistent"], "Fashion-MNIST IDX files not found (looked in /nonexistent)"),
    (["--resume"], "holds no run to continue"),
    (["--out", "{tmp}/a-file/run"], "--out: cannot write to"),
])
def test_compress_errors_are_one_line(args, message, fashion_dir, tmp_path):
    (tmp_path / "classless" / "train").mkdir(parents=True)
    (tmp_path / "classless" / "val").mkdir()
    (tmp_path / "a-file").write_text("not a folder")
    args = [a.format(tmp=tmp_path) for a in args]
    proc = mpqfx_cli("compress", "--model", "test_resnet", "--data-dir", fashion_dir, "--out", tmp_path / "r", *args,
                     env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    one_line_error(proc, message)
    assert not (tmp_path / "r").exists()


def test_recipes_lists_every_shipped_recipe():
    proc = mpqfx_cli("recipes")
    assert proc.returncode == 0
    names = [line.split(":")[0].split(" ")[0] for line in proc.stdout.strip().splitlines()]
    assert names == ["bitmixer", "double_rounding", "limpq", "oneshot", "quickstart"]
    assert "oneshot (= default)" in proc.stdout


def test_validate_prints_every_problem(tmp_path):
    assert mpqfx_cli("validate", "quickstart").returncode == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {epochs: 0, lr: -1}\nstrategy: {name: magic}\n")
    proc = mpqfx_cli("validate", bad)
    assert proc.returncode == 1
    assert "3 problem(s)" in proc.stderr
    assert "train.epochs: must be >= 1" in proc.stderr and "train.lr: must be > 0" in proc.stderr
    assert "strategy.name: unknown strategy 'magic'" in proc.stderr
