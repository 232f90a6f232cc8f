"""Every block of docs/cookbook.md, then of docs/advanced.md, runs: bash blocks in a shell, each
python block in a fresh namespace (a block that misses an import fails), blocks with a file name
written to that file; all in order, in one scratch folder (advanced.md searches the cookbook's
run). The quick start's table and figures are what the current code makes of the report they
came from (docs/img/quickstart-report.json, see docs/refresh_quickstart.py).

Tiny settings keep it fast: ``mpqfx compress`` (from the shell through a wrapper first on PATH,
from Python by wrapping ``mpqfx.compress``) gets ``--train-images 96 --val-images 64 --epochs 1``
unless the block sets them. The default suite runs the blocks once with fewer settings still
(``FAST``: one float epoch, one target unless the block names its own, no export inside
``compress``; the blocks' own ``mpqfx export`` commands still export), leaving out the few in
``COVERED``, whose commands default tests of their own run; ``-m slow`` runs every block at ``TINY``. The data are the Fashion-MNIST-format files of the ``fashion_dir``
fixture (``MPQFX_DATA_DIR``) and a small ImageFolder tree ``flowers/``.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image
from rich.console import Console

from mpqfx.cli.tables import print_report_summary
from mpqfx.compress.plots import bits_figure, pareto_figure
from mpqfx.search.backend import SEARCHES
from mpqfx.train.strategy import STRATEGIES

DOCS = Path(__file__).resolve().parents[2] / "docs"
COOKBOOK = DOCS / "cookbook.md"
ADVANCED = DOCS / "advanced.md"
PAGES = (COOKBOOK, ADVANCED)  # their blocks run in this order, in one scratch folder
FENCE = re.compile(r"^```(\w+)([^\n]*)\n(.*?)^```", re.S | re.M)
TINY = {"--train-images": "96", "--val-images": "64", "--epochs": "1"}
FAST = {**TINY, "--float-epochs": "1", "--target": "uniform:4", "--no-export": None}  # None: a flag
# Blocks the default run leaves to `-m slow` (text in the block -> the default test that runs the same path); a
# text that is in no block fails the test, so a block is never dropped silently.
COVERED = {
    "--data flowers --checkpoint": "tests/compress/test_folder_end_to_end.py (compress on an ImageFolder)",
    "torchrun --standalone": "tests/compress/test_torchrun.py, tests/train/test_ddp.py (two processes)",
    "--format openvino --out model-4bit.xml": "tests/cli/test_compress.py::test_export_to_openvino_writes_the_ir...",
    'compiled_model("model-4bit.xml")': "tests/export/test_openvino.py (OpenVINO runs the IR)",
}

WRAPPER = f"""#!{sys.executable}
import json, os, sys
args = sys.argv[1:]
if args[:1] == ["compress"] and "--resume" not in args:
    for flag, value in json.loads(os.environ["COOKBOOK_SETTINGS"]).items():
        if flag not in args:
            args += [flag] if value is None else [flag, value]
sys.argv = ["mpqfx", *args]
from mpqfx.cli.main import main
main()
"""


def blocks(text: str) -> list[tuple[str, str, str]]:
    """(language, file name or "", body) of every fenced block, in order."""
    return [(lang, info.strip(), body) for lang, info, body in FENCE.findall(text)]


@pytest.fixture
def scratch(tmp_path, fashion_dir, monkeypatch, write_imagefolder):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "mpqfx").write_text(WRAPPER)
    (bin_dir / "mpqfx").chmod(0o755)
    # torchrun as its console script is, on this interpreter (a venv over a system torch has none of its own)
    (bin_dir / "torchrun").write_text(f"#!{sys.executable}\nfrom torch.distributed.run import main\nmain()\n")
    (bin_dir / "torchrun").chmod(0o755)
    work = tmp_path / "work"
    work.mkdir()
    write_imagefolder(work / "flowers")
    env = {**os.environ, "PATH": f"{bin_dir}:{Path(sys.executable).parent}:{os.environ['PATH']}",
           "MPQFX_DATA_DIR": str(fashion_dir), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    monkeypatch.setenv("MPQFX_DATA_DIR", str(fashion_dir))
    monkeypatch.chdir(work)
    monkeypatch.syspath_prepend(str(work))  # python blocks import the files earlier blocks wrote
    return work, env


def tiny_compress(monkeypatch, settings=TINY):
    import mpqfx

    real = mpqfx.compress
    keywords = {"--target": ("targets", [settings.get("--target")]), "--no-export": ("export", False)}

    def compress(*args, **kwargs):
        for flag, value in settings.items():
            key, given = keywords.get(flag, (flag.lstrip("-").replace("-", "_"), value))
            kwargs.setdefault(key, int(given) if isinstance(given, str) else given)
        kwargs.setdefault("progress", False)
        return real(*args, **kwargs)

    monkeypatch.setattr(mpqfx, "compress", compress)


@pytest.mark.parametrize("page,at_least", [(COOKBOOK, 9), (ADVANCED, 2)])
def test_the_recipes_are_numbered_in_order(page, at_least):
    titles = re.findall(r"^## (\d+)\. ", page.read_text(), re.M)
    assert len(titles) >= at_least
    assert titles == [str(i) for i in range(1, len(titles) + 1)]


def test_every_block_of_the_cookbook_runs(scratch, monkeypatch, settings=FAST, covered=COVERED):
    """Every block in order but the ``covered`` ones; its output (``-rP``) lists the blocks' times, slowest first."""
    work, env = scratch
    env = {**env, "COOKBOOK_SETTINGS": json.dumps(settings)}
    tiny_compress(monkeypatch, settings)
    seconds = {}
    everything = [block for page in PAGES for block in blocks(page.read_text())]
    assert [text for text in covered if not any(text in body for _, _, body in everything)] == []
    for registry in (STRATEGIES, SEARCHES):  # names the cookbook registers are gone after the test
        monkeypatch.setattr(registry, "_entries", dict(registry._entries))
    for page, number, (lang, target, body) in [(page, number, block) for page in PAGES
                                               for number, block in enumerate(blocks(page.read_text()))]:
        where = f"{page.name} block {number} ({lang} {target})".strip()
        if any(text in body for text in covered):
            continue
        start = time.perf_counter()
        if target:
            (work / target).write_text(body)
        elif lang == "bash":
            proc = subprocess.run(["bash", "-euo", "pipefail", "-c", body], cwd=work, env=env, capture_output=True,
                                  text=True, timeout=600)
            assert proc.returncode == 0, f"{where} failed:\n{body}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        elif lang == "python":
            try:
                exec(compile(body, where, "exec"), {"__name__": "cookbook"})
            except Exception as exc:
                raise AssertionError(f"{where} failed:\n{body}") from exc
        else:
            assert lang == "text", f"{where}: unknown block language {lang!r}"
        seconds[where] = time.perf_counter() - start
    print("blocks, slowest first:", ", ".join(f"{where} {s:.1f} s" for where, s in sorted(seconds.items(), key=lambda i: -i[1])))


@pytest.mark.slow
def test_every_block_of_the_cookbook_runs_at_the_tiny_settings(scratch, monkeypatch):
    """Every block, at ``TINY``: each ``compress`` also searches the default targets and exports."""
    test_every_block_of_the_cookbook_runs(scratch, monkeypatch, TINY, {})


def test_a_python_block_that_misses_an_import_fails(scratch, monkeypatch):
    """What the cookbook test does with a block that relies on an earlier block's names."""
    text = "```python\nimport json\nvalue = json.dumps(1)\n```\n\n```python\nprint(json.loads(value))\n```\n"
    monkeypatch.setattr(sys.modules[__name__], "PAGES", (scratch[0] / "two-blocks.md",))
    (scratch[0] / "two-blocks.md").write_text(text)
    with pytest.raises(AssertionError, match="block 1 .* failed"):
        test_every_block_of_the_cookbook_runs(scratch, monkeypatch, covered={})


def quickstart_report() -> dict:
    return json.loads((DOCS / "img" / "quickstart-report.json").read_text())


def test_the_quick_start_table_is_what_the_code_prints_for_its_report():
    report = quickstart_report()
    out = io.StringIO()
    print_report_summary(report, Path("runs/quickstart"), Console(file=out, width=80, color_system=None))
    region = COOKBOOK.read_text().split("<!-- quickstart:begin -->")[1]
    printed = [line.rstrip() for line in region.split("```text\n")[1].split("\n```")[0].splitlines()]
    expected = [line.rstrip() for line in out.getvalue().splitlines()]
    start = printed.index(expected[0])
    assert printed[start:start + len(expected)] == expected
    assert max(len(line) for line in printed) <= 80


def _refresh_script():
    """docs/refresh_quickstart.py, which draws the committed figures and says what they show."""
    spec = importlib.util.spec_from_file_location("refresh_quickstart", DOCS / "refresh_quickstart.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name,draw", [("pareto", pareto_figure), ("bits", bits_figure)])
def test_the_quick_start_figures_are_what_the_code_draws_for_its_report(name, draw):
    """Data drawn and labels, not pixels: any matplotlib version draws the same content."""
    refresh = _refresh_script()
    committed = DOCS / "img" / f"quickstart-{name}.png"
    report = quickstart_report()
    fig = draw(report, f"{report['model']['name']} ({report['recipe']})")
    shown = json.loads(Image.open(committed).text[refresh.DRAWN_KEY])
    assert refresh.drawn(fig) == shown, (
        f"{committed} is not what the code draws now: run python docs/refresh_quickstart.py --figures-only")


def test_the_figure_comparison_sees_data_and_labels():
    report = quickstart_report()
    refresh = _refresh_script()
    shown = refresh.drawn(pareto_figure(report, "t"))
    assert any(axes["points"] or axes["lines"] for axes in shown["axes"]) and shown["axes"][0]["xlabel"]
    moved = json.loads(json.dumps(report))
    moved["policies"][-1]["accuracy"] += 0.01
    assert refresh.drawn(pareto_figure(moved, "t")) != shown  # one point moved by a percent is seen
    assert refresh.drawn(pareto_figure(report, "other title")) != shown  # so is another label
