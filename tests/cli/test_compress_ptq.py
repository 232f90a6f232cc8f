"""`mpqfx compress --recipe ptq` end to end on a tiny checkpoint: no training, report and exports
written, and the one-line errors of a calibrate run without float weights."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import timm
import torch
from safetensors import safe_open

from mpqfx import Policy
from mpqfx.cost.report import bitops as cost_report
from mpqfx.store import load_supernet


def mpqfx_cli(*args):
    return subprocess.run([sys.executable, "-m", "mpqfx.cli.main", *map(str, args)], capture_output=True, text=True)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ptq") / "float.pt"
    torch.save(timm.create_model("test_resnet", num_classes=10, in_chans=1).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory, fashion_dir, checkpoint):
    root = tmp_path_factory.mktemp("ptq-run") / "run"
    proc = mpqfx_cli("compress", "--model", "test_resnet", "--checkpoint", checkpoint, "--recipe", "ptq",
                     "--target", "size=8x", "--target", "uniform:4", "--data-dir", fashion_dir,
                     "--train-images", 96, "--val-images", 48, "--search-images", 32, "--out", root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root, proc


def test_ptq_run_calibrates_without_training_and_keeps_the_float_weights(run, checkpoint):
    root, proc = run
    assert not (root / "float").exists() and not (root / "checkpoint.pt").exists()  # no float or supernet training
    assert "all of them are used" in proc.stdout + proc.stderr  # 96 training images, fewer than the recipe's 1024
    net, _ = load_supernet(root / "supernet.pt")
    given = torch.load(checkpoint)
    for name, module in net.layer_modules().items():
        assert torch.equal(module.weight, given[f"{name}.weight"]), name  # calibration changes no weight
        assert bool(module.act_quant.initialized.all()) and module.weight_quant.per_channel
    meta = json.loads((root / "run.json").read_text())
    assert meta["warm_start"]["float_epochs"] == 0 and meta["recipe"] == "ptq"


def test_ptq_run_reports_and_exports_every_target_within_its_budget(run):
    root, _ = run
    report = (root / "report.md").read_text()
    assert "strategy `calibrate`" in report
    assert "| mixed (`mixed@size-8x`) | size=8x |" in report and "| mixed (`mixed@uniform-4`) | uniform:4 |" in report
    net, _ = load_supernet(root / "supernet.pt")
    full = cost_report(net, Policy.bypass(net.layers)).size_bits
    policy = Policy.load(root / "policies" / "mixed@size-8x.yaml")
    assert cost_report(net, policy).size_bits <= full / 8
    uniform4 = cost_report(net, Policy.uniform(net, 4)).total
    assert cost_report(net, Policy.load(root / "policies" / "mixed@uniform-4.yaml")).total <= uniform4
    for stem in ("mixed@size-8x", "mixed@uniform-4"):
        assert (root / "export" / f"{stem}.onnx").stat().st_size > 0
        with safe_open(str(root / "export" / f"{stem}.safetensors"), "pt") as f:
            assert len(list(f.keys())) > 0


def test_ptq_without_float_weights_is_a_one_line_error_naming_the_field(tmp_path, fashion_dir):
    proc = mpqfx_cli("compress", "--model", "test_resnet", "--recipe", "ptq", "--data-dir", fashion_dir,
                     "--train-images", 96, "--val-images", 48, "--out", tmp_path / "run")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "warm_start.epochs" in lines[0] and "--checkpoint" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "run").exists()
