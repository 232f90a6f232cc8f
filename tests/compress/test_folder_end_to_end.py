"""`mpqfx compress` as a user runs it: an RGB ImageFolder of 10 classes whose images are not the
model's input size, and an ImageNet-style checkpoint (1000-class head) that timm fits to the data."""

from __future__ import annotations

import colorsys
import json

import numpy as np
import pytest
import timm
import torch
from click.testing import CliRunner
from PIL import Image

from mpqfx.cli.main import cli
from mpqfx.data import imagefolder

CLASSES = 10
# a recipe that extends the shipped quickstart (warm_start.epochs 2) with only what makes this test fast
TINY = """\
name: tiny-folder
base: quickstart
train: {batch_size: 25, checkpoint_every: 0, log_every: 4}
search: {options: {floors: false}}
evaluate: {bn_images: 50, search_images: 50, batch_size: 50, uniform_bits: []}
"""


def write_colour_folder(root, train: int = 35, val: int = 12, size=(44, 52)):
    """train/val PNGs of 10 classes, one hue per class with pixel noise (separable by colour alone)."""
    rng = np.random.default_rng(0)
    for split, count in (("train", train), ("val", val)):
        for c in range(CLASSES):
            colour = np.array(colorsys.hsv_to_rgb(c / CLASSES, 0.9, 0.9)) * 255
            folder = root / split / f"class{c:02d}"
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = np.clip(colour + rng.normal(0, 12, (*size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("folder")
    data = write_colour_folder(root / "colours")
    torch.manual_seed(0)
    torch.save(timm.create_model("test_resnet").state_dict(), root / "imagenet-style.pt")  # 1000-class head
    (root / "tiny.yaml").write_text(TINY)
    transforms = []
    real = imagefolder.create_transform

    def spy(**config):  # what the run's ImageFolder transforms were built from
        transforms.append(config)
        return real(**config)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(imagefolder, "create_transform", spy)
        result = CliRunner().invoke(cli, [
            "compress", "--model", "test_resnet", "--data", str(data), "--checkpoint", str(root / "imagenet-style.pt"),
            "--recipe", str(root / "tiny.yaml"), "--train-images", "300", "--val-images", "100", "--epochs", "1",
            "--float-epochs", "1",
            "--target", "uniform:4", "--out", str(root / "run")])
    assert result.exit_code == 0, result.output[-3000:]
    return root / "run", result.output, transforms


def test_the_classifier_is_re_initialised_for_the_10_classes_and_fine_tuned(folder_run):
    run, output, _ = folder_run
    report = json.loads((run / "report.json").read_text())
    note = "weights from {}; classifier re-initialised: 1000 -> 10 classes; fine-tuned 1 float epoch"
    assert report["warm_start"]["classes"] == [1000, 10] and report["warm_start"]["float_epochs"] == 1  # --float-epochs
    assert report["warm_start"]["note"] == note.format(run.parent / "imagenet-style.pt")
    assert "classifier re-initialised: 1000 -> 10 classes" in " ".join(output.split())
    assert f"Float weights: {report['warm_start']['note']}." in (run / "report.md").read_text()
    assert (run / "float" / "checkpoint.pt").is_file()  # the fine-tune ran as a float phase, resumable
    assert json.loads((run / "run.json").read_text())["model"]["kwargs"] == {"num_classes": 10}


def test_the_fine_tuned_float_model_learns_the_colours(folder_run):
    run, _, _ = folder_run
    report = json.loads((run / "report.json").read_text())
    assert report["float_accuracy"] >= 0.5  # chance is 0.1


def test_search_evaluation_and_export_complete(folder_run):
    run, _, _ = folder_run
    report = json.loads((run / "report.json").read_text())
    rows = {p["name"]: p for p in report["policies"]}
    assert set(rows) == {"float", "searched uniform:4"}
    assert all(p["accuracy"] is not None for p in rows.values())
    exports = rows["searched uniform:4"]["exports"]
    assert (run / "export" / "mixed@uniform-4.onnx").is_file() and (run / "export" / "mixed@uniform-4.safetensors").is_file()
    assert exports["onnx_images"] == report["images"]["held_out"] == 100


def test_the_models_own_input_size_and_normalisation_are_used(folder_run):
    run, _, transforms = folder_run
    report = json.loads((run / "report.json").read_text())
    assert report["input_size"] == [3, 160, 160]  # test_resnet's pretrained_cfg; the images are 44x52
    assert transforms and all(t["input_size"] == (3, 160, 160) and t["mean"] == (0.5, 0.5, 0.5)
                              and t["std"] == (0.5, 0.5, 0.5) and t["crop_pct"] == 0.95 for t in transforms)
    assert (run / "recipe.yaml").read_text().startswith("name: tiny-folder\n")
    assert "base:" not in (run / "recipe.yaml").read_text()  # the run keeps the resolved recipe


def test_a_resumed_run_reads_float_pt_not_the_checkpoint_file(folder_run):
    run, _, _ = folder_run
    before = json.loads((run / "report.json").read_text())
    (run.parent / "imagenet-style.pt").rename(run.parent / "moved.pt")  # the file the run started from is gone
    try:
        result = CliRunner().invoke(cli, ["compress", "--out", str(run), "--resume", "--no-export"])
    finally:
        (run.parent / "moved.pt").rename(run.parent / "imagenet-style.pt")
    assert result.exit_code == 0, result.output[-3000:]
    after = json.loads((run / "report.json").read_text())
    assert after["float_accuracy"] == before["float_accuracy"] and after["warm_start"] == before["warm_start"]
