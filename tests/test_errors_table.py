"""Every row of the user-facing error table in docs/design.md: the example raises the error type
named, its message contains the quoted fragments, and from the CLI it is one line on stderr
with a non-zero exit code and no traceback."""

from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path

import pytest
import timm
import torch
import yaml
from click.testing import CliRunner
from PIL import Image
from torch import nn

import mpqfx
from mpqfx.cli.main import cli
from mpqfx.store import load_supernet

DESIGN = Path(__file__).resolve().parents[1] / "docs" / "design.md"


def error_rows() -> list[tuple[str, str, str, list[str]]]:
    """(error, type name, example, message fragments) of each row of the table."""
    text = DESIGN.read_text().split("## User-facing errors", 1)[1]
    rows = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("| ") else []
        if len(cells) == 4 and cells[1].startswith("`"):
            example = re.findall(r"`([^`]+)`", cells[2])[0]
            rows.append((cells[0], cells[1].strip("`"), example, re.findall(r"`([^`]+)`", cells[3])))
    return rows


class Gate(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        return self.conv(x) if x.mean() > 0 else self.conv(-x)


class GatedNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.gate, self.head = nn.Conv2d(3, 4, 3, padding=1), Gate(), nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.gate(self.stem(x)).mean((2, 3)))


@pytest.fixture(scope="module")
def scratch(tmp_path_factory, fashion_dir):
    """A finished tiny run ``RUN`` and every file the examples name."""
    root = tmp_path_factory.mktemp("errors")
    run = root / "RUN"
    mpqfx.compress("test_resnet", data_dir=str(fashion_dir), targets=["uniform:4"], out=run, epochs=1, batch_size=32,
                   train_images=96, val_images=64, progress=False)
    (root / "bad-recipe.yaml").write_text("train: {lr: -1, epochs: 0}\nstrategy: {name: magic}\n")
    (root / "garbage-policy.yaml").write_text("layers: [1, 2\n")
    policy = yaml.safe_load((run / "policies" / "mixed@uniform-4.yaml").read_text())
    (root / "unknown-layer-policy.yaml").write_text(yaml.safe_dump(
        {**policy, "layers": {**policy["layers"], "fc2": {"w": 4, "a": 4}}}))
    (root / "forbidden-bits-policy.yaml").write_text(yaml.safe_dump(
        {**policy, "layers": {**policy["layers"], "conv1.0": {"w": 4, "a": 8}}}))
    edited = shutil.copytree(run, root / "edited-run")
    for name in ("supernet.pt", "report.json", "report.md"):
        (edited / name).unlink()
    recipe = yaml.safe_load((edited / "recipe.yaml").read_text())
    recipe["train"]["lr"] *= 2
    (edited / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    torch.save(timm.create_model("test_efficientnet").state_dict(), root / "other-weights.pt")
    cut = shutil.copytree(edited, root / "cut-run")  # training was under way: no supernet.pt yet
    (cut / "recipe.yaml").write_text((run / "recipe.yaml").read_text())
    data = (cut / "checkpoint.pt").read_bytes()
    (cut / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    (cut / "checkpoint.prev.pt").unlink(missing_ok=True)
    net, _ = load_supernet(run)
    mpqfx.Policy.max(net).save(run / "searches" / "mine" / "mixed@uniform-4.yaml")  # left by an earlier search
    truncated = shutil.copytree(run, root / "truncated-run")
    data = (truncated / "supernet.pt").read_bytes()
    (truncated / "supernet.pt").write_bytes(data[: len(data) // 2])
    data = bytearray((run / "export" / "mixed@uniform-4.safetensors").read_bytes())
    data[-100] ^= 0xFF
    (root / "flipped.safetensors").write_bytes(bytes(data))
    layers = mpqfx.prepare(timm.create_model("test_resnet"), example_input=torch.randn(1, 3, 32, 32)).layers
    scores = {l.name: {"w": {b: 1.0 / b for b in l.w_bits}, "a": {b: 1.0 / b for b in l.a_bits}} for l in layers}
    (root / "partial-indicators.json").write_text(json.dumps({"layers": dict(list(scores.items())[2:])}))
    scores[layers[1].name]["w"][3] = "high"
    (root / "bad-score-indicators.yaml").write_text(yaml.safe_dump({"format": "mpqfx.indicators/1", "layers": scores}))
    (root / "empty-dir").mkdir()
    (root / "a-file").write_text("a file, not a folder")
    (root / "classless" / "train").mkdir(parents=True)
    (root / "classless" / "val").mkdir()
    folders = [(tree, s, c) for tree in ("unmatched", "broken") for s in ("train", "val") for c in ("ant", "bee")]
    for tree, split, name in folders + [("unmatched", "val", "cow")]:
        (root / tree / split / name).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(root / tree / split / name / "0.png")
    (root / "broken" / "train" / "ant" / "0.png").write_bytes(b"\x89PNG\r\n\x1a\n cut short")
    return root


def test_the_table_covers_the_promised_errors():
    names = " | ".join(row[0] for row in error_rows())
    for promised in ("bad recipe fields", "unknown timm model", "unknown strategy", "unknown search backend",
                     "untraceable model", "infeasible budget", "Fashion-MNIST missing", "malformed policy file",
                     "checkpoint of another recipe", "corrupt or truncated supernet"):
        assert promised in names


@pytest.mark.parametrize("error,kind,example,fragments", error_rows(), ids=[row[0] for row in error_rows()])
def test_error_row(error, kind, example, fragments, scratch, fashion_dir, monkeypatch):
    monkeypatch.chdir(scratch)
    monkeypatch.setenv("MPQFX_DATA_DIR", str(fashion_dir))
    if example.startswith("mpqfx "):
        result = CliRunner().invoke(cli, shlex.split(example)[1:])
        assert isinstance(result.exception, SystemExit), result.exception
        assert "Traceback" not in result.output
        if example.startswith("mpqfx validate"):
            assert result.exit_code == 1 and result.stderr.startswith("bad-recipe.yaml: ")
            message = result.stderr
        else:
            lines = result.stderr.strip().splitlines()
            assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("mpqfx: error: "), result.stderr
            message = lines[0]
    else:
        namespace = {"mpqfx": mpqfx, "torch": torch, "GatedNet": GatedNet}
        with pytest.raises(mpqfx.MpqfxError) as info:
            exec(example, namespace)
        assert kind in [cls.__name__ for cls in type(info.value).__mro__]
        message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{error}: {fragment!r} not in {message!r}"
