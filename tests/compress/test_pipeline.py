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


def test_the_report_states_the_images_and_input_size_an_imagefolder_run_actually_used(tmp_path, write_imagefolder):
    """The recipe's limits (9600 / 2000 images, image_size 32) are not what a 12 / 6-image folder at
    the model's 160x160 input gives; the report says what was used."""
    write_imagefolder(tmp_path / "flowers")
    result = mpqfx.compress("test_resnet", data=str(tmp_path / "flowers"), targets=["uniform:4"], epochs=1,
                            batch_size=4, out=tmp_path / "run", export=False, progress=False)
    report = json.loads((result.run_dir / "report.json").read_text())
    assert report["images"] == {"train": 12, "held_out": 6, "bn_calibration": 12, "search": 12}
    assert report["input_size"] == [3, 160, 160]  # timm's pretrained_cfg of test_resnet
    meta = json.loads((result.run_dir / "run.json").read_text())
    assert meta["input_size"] == [3, 160, 160] and meta["data"]["image_size"] is None
    assert "12 training and 6 held-out images at input 3x160x160" in (result.run_dir / "report.md").read_text()
