"""`compress`, `search`, `report` and `export` on a CUDA GPU: run them with `pytest -m cuda` on a GPU
machine; without one they are skipped. (Two GPUs under torchrun with NCCL: tests/compress/test_torchrun.py.)"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest
import torch

import mpqfx
from mpqfx.compress import pipeline
from mpqfx.compress.evaluation import PolicyEvaluator
from mpqfx.data.spec import DataSpec
from mpqfx.models import create_model
from mpqfx.recipe import Recipe
from mpqfx.store import load_supernet

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

TINY = dict(epochs=1, batch_size=32, train_images=256, val_images=128, progress=False)


def spy_trainer(monkeypatch) -> list[dict]:
    """What each Trainer of the run did on its first training forward: device, autocast dtype, layout."""
    seen: list[dict] = []

    class SpyTrainer(pipeline.Trainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            record: dict = {"device": self.device.type, "autocast": self.autocast}
            seen.append(record)
            first = self.net.layer_modules()[self.net.layers[0].name]

            def hook(module, args, output):
                if module.training and "dtype" not in record:
                    record.update(dtype=output.dtype, channels_last=args[0].is_contiguous(memory_format=torch.channels_last),
                                  input_device=args[0].device.type)

            first.register_forward_hook(hook)

    monkeypatch.setattr(pipeline, "Trainer", SpyTrainer)
    return seen


@pytest.mark.parametrize("amp", [True, False], ids=["bf16", "fp32"])
def test_compress_runs_on_the_gpu_with_bf16_autocast_and_channels_last(amp, fashion_dir, tmp_path, monkeypatch):
    recipe = Recipe.load("quickstart")
    recipe = dataclasses.replace(recipe, train=dataclasses.replace(recipe.train, amp=amp, channels_last=True)).check()
    seen = spy_trainer(monkeypatch)
    result = mpqfx.compress("test_resnet", recipe, data_dir=str(fashion_dir), targets=["uniform:4"], device="cuda",
                            out=tmp_path / "run", **TINY)
    bf16 = amp and torch.cuda.is_bf16_supported()
    assert [(r["device"], r["autocast"], r["dtype"], r["channels_last"], r["input_device"]) for r in seen] == [
        ("cuda", bf16, torch.bfloat16 if bf16 else torch.float32, True, "cuda")] * 2  # float phase, supernet
    report = json.loads((result.run_dir / "report.json").read_text())
    assert [p["name"] for p in report["policies"]] == ["float", "uniform 8/8", "uniform 4/4", "uniform 3/3",
                                                       "searched uniform:4"]
    exports = report["policies"][-1]["exports"]
    assert exports["onnx_integer_kernels"] == exports["onnx_layers"] > 0 and exports["onnx_images"] == 128
    for line in (result.run_dir / "metrics.jsonl").read_text().splitlines():
        assert json.loads(line)["images_per_s"] > 0
    # the float row, measured on the GPU, against the same weights measured on the CPU (TF32 convs may move an image)
    net, _ = load_supernet(result.run_dir / "float.pt")
    spec = DataSpec.from_dict(json.loads((result.run_dir / "run.json").read_text())["data"])
    evaluator = PolicyEvaluator(spec, create_model(net.model_spec.name, **net.model_spec.kwargs), net.recipe)
    cpu = evaluator.measure(net, "float", "float", None)
    assert next(net.parameters()).device.type == "cpu" and evaluator.val_images == 128
    assert abs(cpu.accuracy - result.float_accuracy) <= 2 / 128


def test_search_report_and_export_run_on_the_gpu(fashion_dir, tmp_path):
    result = mpqfx.compress("test_resnet", data_dir=str(fashion_dir), targets=["uniform:4"], device="cuda",
                            out=tmp_path / "run", export=False, **TINY)
    root = result.run_dir

    def cli(*args):
        proc = subprocess.run([sys.executable, "-m", "mpqfx", *map(str, args), "--device", "cuda"], capture_output=True,
                              text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc

    found = json.loads(cli("search", "--run", root, "--target", "uniform:3", "--json").stdout)
    assert [r["target"] for r in found] == ["uniform:3"]
    cli("report", "--run", root)
    later = json.loads((root / "report.json").read_text())["searches"]
    assert [r["target"] for r in later] == ["uniform:3"] and 0 <= later[0]["accuracy"] <= 1
    layers = len(load_supernet(root)[0].layers)
    proc = cli("export", "--run", root, "--policy", "mixed@uniform-4", "--out", tmp_path / "u4.onnx")
    assert f"{layers}/{layers} layers run as integer kernels" in proc.stdout and (tmp_path / "u4.onnx").is_file()
