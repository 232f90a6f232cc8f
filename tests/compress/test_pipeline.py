"""``mpqfx.compress`` from Python: float weights from a module, the float model's accuracy, resume,
the Double Rounding 8-bit file, and what it refuses."""

from __future__ import annotations

import dataclasses
import json

import pytest
import timm
import torch
from torch import nn

import mpqfx
from mpqfx import MpqfxError, Policy
from mpqfx.compress import pipeline
from mpqfx.export.double_rounding_file import load_double_rounding
from mpqfx.recipe import Recipe
from mpqfx.store import load_supernet

TINY = dict(epochs=1, batch_size=32, train_images=96, val_images=64, progress=False)


def fashion_resnet() -> nn.Module:
    torch.manual_seed(3)
    return timm.create_model("test_resnet", in_chans=1, num_classes=10).eval()


@pytest.fixture(scope="module")
def module_run(tmp_path_factory, fashion_dir):
    module = fashion_resnet()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    out = tmp_path_factory.mktemp("module") / "run"
    result = mpqfx.compress(module, "double_rounding", data_dir=str(fashion_dir), targets=["uniform:6"], out=out, **TINY)
    return module, before, result


def test_a_module_gives_the_float_weights_and_is_left_untouched(module_run):
    module, before, result = module_run
    assert all(torch.equal(v, before[k]) for k, v in module.state_dict().items())
    assert not (result.run_dir / "float").exists()  # no float training phase
    meta = json.loads((result.run_dir / "run.json").read_text())
    assert meta["weights"] == "module" and meta["model"] == {"name": "test_resnet", "kwargs": {"in_chans": 1, "num_classes": 10}}
    start, _ = load_supernet(result.run_dir / "float.pt")
    x = torch.randn(4, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(start.eval()(x), module(x))  # bypass of the saved starting point = the module


def test_the_float_accuracy_is_measured_before_supernet_training(module_run):
    _, _, result = module_run
    stored = json.loads((result.run_dir / "float.json").read_text())
    assert result.results[0].kind == "float" and result.float_accuracy == stored["accuracy"]
    report = json.loads((result.run_dir / "report.json").read_text())
    assert report["float_accuracy"] == stored["accuracy"]


def test_a_double_rounding_run_exports_one_8_bit_file_for_every_policy(module_run):
    _, _, result = module_run
    net, _ = load_supernet(result.run_dir)
    loaded = load_double_rounding(result.run_dir / "export" / "supernet.dr8.safetensors").eval()
    x = torch.randn(4, 1, 32, 32)
    for policy in (Policy.uniform(net, 6), Policy.min(net), Policy.sample(net, 1)):
        with torch.no_grad(), net.eval().use_policy(policy), loaded.use_policy(policy):
            assert torch.equal(loaded(x), net(x))


def test_resume_of_a_finished_run_reports_the_same(module_run):
    _, _, result = module_run
    again = mpqfx.compress("test_resnet", out=result.run_dir, resume=True, progress=False)
    assert [(r.name, r.accuracy, r.bitops) for r in again.results] == [(r.name, r.accuracy, r.bitops) for r in result.results]


@pytest.mark.parametrize("make,message", [
    (lambda: timm.create_model("test_resnet"), r"needs timm.create_model\('test_resnet', in_chans=1, num_classes=10\)"),
    (lambda: nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.LazyLinear(10)), "is not a timm model"),
])
def test_modules_that_cannot_be_rebuilt_are_refused_before_anything_is_written(make, message, fashion_dir, tmp_path):
    with pytest.raises(MpqfxError, match=message):
        mpqfx.compress(make(), data_dir=str(fashion_dir), out=tmp_path / "run", **TINY)
    assert not (tmp_path / "run").exists()


def test_module_and_checkpoint_together_are_refused(fashion_dir, tmp_path):
    with pytest.raises(MpqfxError, match="a module and --checkpoint both give the float weights"):
        mpqfx.compress(fashion_resnet(), data_dir=str(fashion_dir), checkpoint=tmp_path / "w.pt", out=tmp_path / "r", **TINY)


def test_float_teacher_distillation_is_taught_by_the_float_model(fashion_dir, tmp_path, monkeypatch):
    recipe = Recipe.load("oneshot")
    recipe = dataclasses.replace(recipe, train=dataclasses.replace(
        recipe.train, warmup_epochs=0, distill=dataclasses.replace(recipe.train.distill, teacher=True))).check()
    teachers = []

    class SpyTrainer(pipeline.Trainer):
        def __init__(self, *args, teacher=None, **kwargs):
            teachers.append(teacher)
            super().__init__(*args, teacher=teacher, **kwargs)

    monkeypatch.setattr(pipeline, "Trainer", SpyTrainer)
    module = fashion_resnet()
    mpqfx.compress(module, recipe, data_dir=str(fashion_dir), targets=["uniform:6"], out=tmp_path / "run",
                   export=False, **{**TINY, "train_images": 64})
    [teacher] = teachers  # the supernet's trainer; a given module needs no float training phase
    x = torch.randn(4, 1, 32, 32)
    teacher.to(memory_format=torch.contiguous_format)  # the trainer ran it channels_last
    with torch.no_grad():
        assert torch.equal(teacher(x), module(x))
    assert not any(p.requires_grad for p in teacher.parameters())


def test_the_report_counts_the_images_of_every_class_in_every_use(tmp_path):
    """An unbalanced folder (train ant 10 + 1 truncated file, bee 6, cat 3; val 4 each) with
    --val-images 6, 6 BatchNorm and 5 search images, skipping unreadable files. The recipe's own
    limits (9600 / 2000 images, image_size 32) are not what this folder at the model's 160x160
    input gives; the report says what was used."""
    from PIL import Image

    for split, counts in (("train", {"ant": 10, "bee": 6, "cat": 3}), ("val", {"ant": 4, "bee": 4, "cat": 4})):
        for index, (name, n) in enumerate(counts.items()):
            (tmp_path / "data" / split / name).mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (12, 12), (80 * index, 20 * i, 100)).save(
                    tmp_path / "data" / split / name / f"{i}.png")
    (tmp_path / "data" / "train" / "ant" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    recipe = Recipe.load("quickstart")
    recipe = dataclasses.replace(recipe, evaluate=dataclasses.replace(recipe.evaluate, bn_images=6, search_images=5))
    lines = []
    result = mpqfx.compress("test_resnet", recipe, data=str(tmp_path / "data"), targets=["uniform:4"], epochs=1,
                            batch_size=4, val_images=6, skip_bad_images=True, out=tmp_path / "run", export=False,
                            progress=False, log=lines.append)
    report = json.loads((result.run_dir / "report.json").read_text())
    data = report["data"]
    assert data["classes"] == ["ant", "bee", "cat"] and data["skip_bad_images"] is True
    # BN: 6 of (10, 6, 3): shares 3.16, 1.89, 0.95 -> 3, 1, 1 (cat's one first) + bee's remainder -> 3, 2, 1.
    # search: 5 of the other 13 (7, 4, 2): shares 2.69, 1.54, 0.77 -> 2, 1, 1 + ant's remainder -> 3, 1, 1
    assert data["images_per_class"] == {"train": {"ant": 10, "bee": 6, "cat": 3},
                                        "held_out": {"ant": 2, "bee": 2, "cat": 2},
                                        "search": {"ant": 3, "bee": 1, "cat": 1},
                                        "bn_calibration": {"ant": 3, "bee": 2, "cat": 1}}
    assert report["images"] == {"train": 19, "held_out": 6, "search": 5, "bn_calibration": 6}
    assert report["input_size"] == [3, 160, 160]  # timm's pretrained_cfg of test_resnet
    assert data["skipped_images"] == {"train": ["train/ant/bad.png"], "held_out": []}
    warnings = ["class 'cat' has 3 training images (fewer than 5)", "class 'ant' has 2 held-out images (fewer than 5)",
                "class 'bee' has 2 held-out images (fewer than 5)", "class 'cat' has 2 held-out images (fewer than 5)",
                "training: 1 unreadable image file left out (--skip-bad-images): train/ant/bad.png"]
    assert [line for line in lines if line.startswith("warning: ")] == [f"warning: {w}" for w in warnings]
    markdown = (result.run_dir / "report.md").read_text()
    assert "19 training and 6 held-out images at input 3x160x160" in markdown
    assert "| class | training | held-out | search | BN calibration |" in markdown
    assert "| cat | **3** | **2** | 1 | 1 |" in markdown and "| bee | 6 | **2** | 1 | 2 |" in markdown
    assert all(f"- {w}" in markdown for w in warnings)
    meta = json.loads((result.run_dir / "run.json").read_text())
    assert meta["input_size"] == [3, 160, 160] and meta["data"]["image_size"] is None
    assert meta["data"]["skip_bad_images"] is True and meta["data"]["sampling"] == "stratified"
