"""`mpqfx compress --finetune-epochs` end to end through the CLI with tiny settings, beside the same
run without it: three rows per searched policy in report.md, each number measured again here from
the files the run wrote, and nothing else the run reported changed. Then `mpqfx finetune` and
`mpqfx report` on the run without: the report lists the fine-tune with the same three rows."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner

from mpqfx import Policy
from mpqfx.cli.main import cli
from mpqfx.data.spec import DataSpec
from mpqfx.finetune.model import folded_model
from mpqfx.models import create_model
from mpqfx.store import load_supernet

pytestmark = pytest.mark.slow  # two compress runs and a fine-tune: about 3 CPU-minutes

TINY = ["--model", "test_resnet", "--train-images", "96", "--val-images", "64", "--batch-size", "32", "--float-epochs",
        "1", "--target", "uniform:4", "--target", "uniform:3", "--device", "cpu"]
POLICIES = ["mixed@uniform-4", "mixed@uniform-3"]
TIMED = {"checkpoint.pt", "metrics.jsonl", "float/checkpoint.pt", "float/metrics.jsonl", "run.json", "report.json",
         "report.md"}  # files that hold times or the start date


def mpqfx_cli(*args) -> str:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, (result.output[-3000:], result.exception)
    return result.output


@pytest.fixture(scope="module")
def runs(tmp_path_factory, fashion_dir) -> tuple[Path, Path]:
    """(run without fine-tuning, the same run with --finetune-epochs 1)."""
    base = tmp_path_factory.mktemp("compress-finetune")
    mpqfx_cli("compress", *TINY, "--data-dir", fashion_dir, "--out", base / "plain")
    mpqfx_cli("compress", *TINY, "--data-dir", fashion_dir, "--out", base / "finetuned", "--finetune-epochs", 1)
    return base / "plain", base / "finetuned"


def digests(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
            if p.is_file()}


def without_root(value, root: Path):
    """``value`` (JSON) with the run directory's path written RUN, to compare two runs."""
    return json.loads(json.dumps(value).replace(str(root), "RUN"))


def sections(markdown: str) -> dict[str, str]:
    """report.md's sections by their heading ("" for the text before the first)."""
    parts = ("\n" + markdown).split("\n## ")
    return {"": parts[0], **{part.split("\n", 1)[0]: part for part in parts[1:]}}


def finetuned_rows(markdown: str) -> list[list[str]]:
    """The cells of the "Fine-tuned policies" table of report.md."""
    section = markdown.split("## Fine-tuned policies", 1)[1].split("\n## ", 1)[0]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in section.splitlines()
            if line.startswith("| mixed@")]


def held_out(root: Path) -> tuple[torch.Tensor, np.ndarray, list]:
    """The run's held-out images and labels (as run.json records them), and 64 of its training images."""
    meta = json.loads((root / "run.json").read_text())
    spec, model = DataSpec.from_dict(meta["data"]), create_model(meta["model"]["name"], **meta["model"]["kwargs"])
    val = spec.split("val", model, train=False)
    train = spec.split("train", model, train=False)
    images = torch.stack([val[i][0] for i in range(len(val))])
    labels = np.array([int(val[i][1]) for i in range(len(val))])
    some = [(torch.stack([train[i][0] for i in range(64)]), torch.tensor([int(train[i][1]) for i in range(64)]))]
    return images, labels, some


def measured(root: Path, name: str) -> dict[str, float]:
    """Top-1 of RUN/finetuned/NAME's fine-tuned weights in torch and of its ONNX file in onnxruntime
    (all optimizations), and their top-1 agreement, counted here."""
    images, labels, calibration = held_out(root)
    net, _ = load_supernet(root / "supernet.pt")
    folder = root / "finetuned" / name
    model = folded_model(net.eval(), Policy.load(folder / "policy.yaml"), calibration)
    model.load_state_dict(torch.load(folder / "finetuned.pt", weights_only=False)["model"])
    with torch.no_grad():
        ours = model.cpu().eval()(images).argmax(-1).numpy()
    session = ort.InferenceSession(str(folder / f"{name}.onnx"), providers=["CPUExecutionProvider"])
    theirs = session.run(None, {session.get_inputs()[0].name: images.numpy()})[0].argmax(-1)
    return {"finetuned": float((ours == labels).mean()), "exported": float((theirs == labels).mean()),
            "agreement": float((ours == theirs).mean())}


def test_the_report_has_supernet_finetuned_and_exported_rows_measured_from_the_files(runs):
    _, root = runs
    report = json.loads((root / "report.json").read_text())
    supernet = {p["policy_name"]: p["accuracy"] for p in report["policies"] if p["kind"] == "searched"}
    rows = finetuned_rows((root / "report.md").read_text())
    assert [(r[0], r[1].split(" (")[0]) for r in rows] == [(name, model) for name in POLICIES for model in
                                                           ("supernet", "fine-tuned", "exported ONNX")]
    for name, (first, second, third) in zip(POLICIES, zip(rows[0::3], rows[1::3], rows[2::3])):
        got = measured(root, name)
        assert first[2] == f"{100 * supernet[name]:.2f}"  # the run's own evaluation of the policy
        assert second[1] == "fine-tuned (1 epoch, torch)" and second[2] == f"{100 * got['finetuned']:.2f}"
        assert third[2] == f"{100 * got['exported']:.2f}"
        assert third[3].startswith(f"top-1 agreement with the fine-tuned model {100 * got['agreement']:.2f}%;")


def test_nothing_else_the_run_reported_changes(runs):
    plain, finetuned = runs
    before, after = digests(plain), digests(finetuned)
    assert {k for k in after if k.startswith("finetuned/")} == {f"finetuned/{name}/{file}" for name in POLICIES for file in (
        "policy.yaml", "checkpoint.pt", "metrics.jsonl", "finetuned.pt", f"{name}.onnx", f"{name}.safetensors",
        "result.json", "report.md")}
    assert {k: v for k, v in after.items() if not k.startswith("finetuned/") and k not in TIMED} == {
        k: v for k, v in before.items() if k not in TIMED}  # supernet, policies, exports, figures: byte-identical
    old, new = (json.loads((root / "report.json").read_text()) for root in runs)
    assert [p["policy_name"] for p in new["policies"] if p["kind"] == "searched"] == POLICIES
    assert [r["policy"] for r in new["finetuned"]] == POLICIES and old["finetuned"] == []
    changed = {"finetuned", "seconds", "cpu_seconds"}
    assert without_root({k: v for k, v in new.items() if k not in changed}, finetuned) == \
        without_root({k: v for k, v in old.items() if k not in changed}, plain)
    old_md, new_md = (sections((root / "report.md").read_text().replace(str(root), "RUN")) for root in runs)
    order = list(old_md)
    order.insert(order.index("Exports") + 1, "Fine-tuned policies")  # the one section added, after the exports
    assert list(new_md) == order
    timed = {"Fine-tuned policies", "Time per phase"}
    assert {k: v for k, v in new_md.items() if k not in timed} == {k: v for k, v in old_md.items() if k not in timed}


def test_a_finetune_after_the_run_is_listed_by_report_as_compress_lists_it(runs, tmp_path):
    plain, finetuned = runs
    root = shutil.copytree(plain, tmp_path / "run")
    before = digests(root)
    mpqfx_cli("finetune", "--run", root, "--policy", "mixed@uniform-3", "--epochs", 1, "--device", "cpu")
    assert {k: v for k, v in digests(root).items() if not k.startswith("finetuned/")} == before
    markdown = (root / "report.md").read_text()
    mpqfx_cli("report", "--run", root, "--device", "cpu")
    assert "## Fine-tuned policies" not in markdown  # until `mpqfx report` writes it again
    report = json.loads((root / "report.json").read_text())
    ours = json.loads((root / "finetuned" / "mixed@uniform-3" / "result.json").read_text())
    assert report["finetuned"] == [ours]
    assert report["policies"] == json.loads((plain / "report.json").read_text())["policies"]
    theirs = next(r for r in json.loads((finetuned / "report.json").read_text())["finetuned"]
                  if r["policy"] == "mixed@uniform-3")
    same = lambda result: {k: result[k] for k in ("supernet", "finetuned", "settings", "images")}
    assert same(ours) == same(theirs)  # the same supernet and settings: the same fine-tune as compress's
    expected = [r for r in finetuned_rows((finetuned / "report.md").read_text()) if r[0] == "mixed@uniform-3"]
    assert finetuned_rows((root / "report.md").read_text()) == expected
    got = measured(root, "mixed@uniform-3")
    assert ours["finetuned"]["accuracy"] == got["finetuned"] and ours["exported"]["accuracy"] == got["exported"]


def test_report_keeps_the_runs_order_and_writes_a_finetuned_run_again_byte_for_byte(runs, tmp_path):
    _, finetuned = runs
    root = shutil.copytree(finetuned, tmp_path / "run")
    before = (root / "report.md").read_text(), json.loads((root / "report.json").read_text())
    mpqfx_cli("report", "--run", root, "--device", "cpu")
    assert (root / "report.md").read_text() == before[0]
    assert json.loads((root / "report.json").read_text()) == before[1]
