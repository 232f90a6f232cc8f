"""Every block of docs/cookbook.md runs: bash blocks in a shell, python blocks in one shared
namespace, blocks with a file name written to that file; all in order, in a scratch folder.

Tiny settings keep it fast: ``mpqfx compress`` (from the shell through a wrapper first on PATH,
from Python by wrapping ``mpqfx.compress``) gets ``--train-images 96 --val-images 64 --epochs 1``
unless the block sets them. The data are the Fashion-MNIST-format files of the ``fashion_dir``
fixture (``MPQFX_DATA_DIR``) and a small ImageFolder tree ``flowers/``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mpqfx.search.backend import SEARCHES
from mpqfx.train.strategy import STRATEGIES

COOKBOOK = Path(__file__).resolve().parents[2] / "docs" / "cookbook.md"
FENCE = re.compile(r"^```(\w+)([^\n]*)\n(.*?)^```", re.S | re.M)
TINY = {"--train-images": "96", "--val-images": "64", "--epochs": "1"}

WRAPPER = f"""#!{sys.executable}
import sys
args = sys.argv[1:]
if args[:1] == ["compress"] and "--resume" not in args:
    for flag, value in {TINY!r}.items():
        if flag not in args:
            args += [flag, value]
sys.argv = ["mpqfx", *args]
from mpqfx.cli.main import main
main()
"""


def blocks(text: str) -> list[tuple[str, str, str]]:
    """(language, file name or "", body) of every fenced block, in order."""
    return [(lang, info.strip(), body) for lang, info, body in FENCE.findall(text)]


def write_flowers(root: Path) -> None:
    rng = np.random.default_rng(0)
    for split, count in (("train", 4), ("val", 2)):
        for index, name in enumerate(("daisy", "rose", "tulip")):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = np.clip(rng.normal(80 * index + 40, 30, (40, 48, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")


@pytest.fixture
def scratch(tmp_path, fashion_dir, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "mpqfx").write_text(WRAPPER)
    (bin_dir / "mpqfx").chmod(0o755)
    work = tmp_path / "work"
    work.mkdir()
    write_flowers(work / "flowers")
    env = {**os.environ, "PATH": f"{bin_dir}:{Path(sys.executable).parent}:{os.environ['PATH']}",
           "MPQFX_DATA_DIR": str(fashion_dir), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    monkeypatch.setenv("MPQFX_DATA_DIR", str(fashion_dir))
    monkeypatch.chdir(work)
    return work, env


def tiny_compress(monkeypatch):
    import mpqfx

    real = mpqfx.compress

    def compress(*args, **kwargs):
        for flag, value in TINY.items():
            kwargs.setdefault(flag.lstrip("-").replace("-", "_"), int(value))
        kwargs.setdefault("progress", False)
        return real(*args, **kwargs)

    monkeypatch.setattr(mpqfx, "compress", compress)


def test_the_cookbook_has_the_eleven_recipes():
    titles = re.findall(r"^## (\d+)\. ", COOKBOOK.read_text(), re.M)
    assert titles == [str(i) for i in range(1, 12)]


def test_every_block_of_the_cookbook_runs(scratch, monkeypatch):
    work, env = scratch
    tiny_compress(monkeypatch)
    for registry in (STRATEGIES, SEARCHES):  # names the cookbook registers are gone after the test
        monkeypatch.setattr(registry, "_entries", dict(registry._entries))
    namespace: dict = {"__name__": "cookbook"}
    for number, (lang, target, body) in enumerate(blocks(COOKBOOK.read_text())):
        where = f"block {number} ({lang} {target})".strip()
        if target:
            (work / target).write_text(body)
        elif lang == "bash":
            proc = subprocess.run(["bash", "-euo", "pipefail", "-c", body], cwd=work, env=env, capture_output=True,
                                  text=True, timeout=600)
            assert proc.returncode == 0, f"{where} failed:\n{body}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        elif lang == "python":
            try:
                exec(compile(body, f"cookbook {where}", "exec"), namespace)
            except Exception as exc:
                raise AssertionError(f"{where} failed:\n{body}") from exc
        else:
            assert lang == "text", f"{where}: unknown block language {lang!r}"
