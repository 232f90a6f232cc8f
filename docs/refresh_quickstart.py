"""Refresh the quick start of docs/cookbook.md from a real run of the current code.

Runs ``mpqfx compress --model efficientnet_lite0 --out runs/quickstart`` (what ``make demo`` runs,
at 80 columns) in a scratch folder, or reads a run made that way (``--run DIR --log FILE``), then
writes what the cookbook shows between its ``quickstart:begin`` / ``quickstart:end`` markers (the
printed output, the comparison of the mixed and uniform rows, the figures) and the figures and
report.json it was drawn from into docs/img/. tests/docs/test_cookbook.py checks that the table
and the figures there are what the current code makes of that report.json.

    python docs/refresh_quickstart.py                      # ~6-15 min on 2 CPU cores
    python docs/refresh_quickstart.py --run runs/quickstart --log demo.log
    python docs/refresh_quickstart.py --figures-only         # redraw docs/img/ from its report.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

DOCS = Path(__file__).resolve().parent
COOKBOOK = DOCS / "cookbook.md"
IMG = DOCS / "img"
REPORT = IMG / "quickstart-report.json"
FIGURES = {"pareto": IMG / "quickstart-pareto.png", "bits": IMG / "quickstart-bits.png"}
REGION = re.compile(r"(<!-- quickstart:begin -->\n).*?(<!-- quickstart:end -->)", re.S)
COMMAND = ["compress", "--model", "efficientnet_lite0", "--out", "runs/quickstart"]


def run_quickstart(scratch: Path) -> tuple[Path, str, float, float]:
    """(run directory, what the command printed, wall seconds, 5-minute load average at its end) of
    the quick start in ``scratch``."""
    import time

    env = {**os.environ, "COLUMNS": "80", "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "mpqfx.cli.main", *COMMAND], cwd=scratch, env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"the quick start failed:\n{proc.stderr[-3000:]}")
    return scratch / "runs" / "quickstart", proc.stdout, time.perf_counter() - start, os.getloadavg()[1]


def comparison(report: dict) -> str:
    """One sentence per searched policy: its top-1 against the uniform policy of its budget."""
    uniform = {p["name"].split()[-1].split("/")[0]: p for p in report["policies"] if p["kind"] == "uniform"}
    parts = []
    for p in report["policies"]:
        if p["kind"] == "searched" and p["target"].startswith("uniform:"):
            base = uniform.get(p["target"].split(":")[1])
            if base:
                parts.append(f"{100 * p['accuracy']:.2f}% for the mixed policy at the BitOPs of {base['name']} "
                             f"against {100 * base['accuracy']:.2f}% for {base['name']} itself "
                             f"({p['bitops'] / 1e9:.4g} vs {base['bitops'] / 1e9:.4g} GBitOPs, "
                             f"{p['size_bytes'] / 1e6:.2f} vs {base['size_bytes'] / 1e6:.2f} MB)")
    return "; ".join(parts)


def region(report: dict, printed: str, seconds: float, load: float | None) -> str:
    images = report["images"]
    busy = f" at a load average of {load:.1f}" if load is not None else ""
    took = f"{seconds / 60:.0f} min on {os.cpu_count()} CPU cores{busy}; " if seconds else ""
    lines = [f"What the quick start printed at commit {_commit()} ({date.today():%Y-%m-%d}, {took}"
             "`--out runs/quickstart` here, a timestamped folder by default):", "", "```text", printed.rstrip(), "```",
             "",
             f"Measured on {images['held_out']} held-out images after training on {images['train']}: "
             f"{comparison(report)}.", "",
             "![BitOPs against top-1 of the quick start](img/quickstart-pareto.png)", "",
             "![bits per layer of the quick start's mixed policies](img/quickstart-bits.png)", ""]
    return "\n".join(lines)


def _commit() -> str:
    proc = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=DOCS, capture_output=True, text=True)
    return proc.stdout.strip() or "unknown"


DRAWN_KEY = "mpqfx:drawn"  # the PNG text chunk holding what the figure shows (see ``drawn``)


def drawn(fig) -> dict:
    """What ``fig`` shows, whatever matplotlib renders it: per axes its texts (title, axis, tick and
    legend labels, annotations; not where the label placer put them, nor its leader lines, which
    follow the labels) and its data (line points, scatter points, bars), rounded to 6 significant digits."""
    fig.canvas.draw()  # tick labels exist once drawn
    num = lambda values: [float(f"{float(v):.6g}") for v in values]  # noqa: E731
    axes = []
    for ax in fig.axes:
        legend = ax.get_legend()
        axes.append({
            "title": ax.get_title(), "xlabel": ax.get_xlabel(), "ylabel": ax.get_ylabel(),
            "xticklabels": [t.get_text() for t in ax.get_xticklabels()],
            "yticklabels": [t.get_text() for t in ax.get_yticklabels()],
            "legend": [t.get_text() for t in legend.get_texts()] if legend else [],
            "texts": sorted(t.get_text() for t in ax.texts),
            "lines": [[num(line.get_xdata()), num(line.get_ydata())] for line in ax.lines if line.get_gid() != "leader"],
            "points": [sorted(num(xy) for xy in c.get_offsets()) for c in ax.collections],
            "bars": sorted(num((p.get_x(), p.get_y(), p.get_width(), p.get_height())) for p in ax.patches
                           if type(p).__name__ == "Rectangle"),
        })
    return {"texts": sorted(t.get_text() for t in fig.texts), "axes": axes}


def render_figures(report: dict) -> None:
    """The figures of ``report`` (as ``mpqfx compress`` draws them) into docs/img/, each with what it
    shows (``drawn``) in a PNG text chunk, which tests/docs/test_cookbook.py compares."""
    import matplotlib.pyplot as plt

    from mpqfx.compress.plots import bits_figure, pareto_figure
    from mpqfx.io import atomic_open

    title = f"{report['model']['name']} ({report['recipe']})"
    for name, draw in (("pareto", pareto_figure), ("bits", bits_figure)):
        fig = draw(report, title)
        with atomic_open(FIGURES[name], "wb") as fh:
            fig.savefig(fh, format="png", dpi=120, metadata={DRAWN_KEY: json.dumps(drawn(fig), sort_keys=True)})
        plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, help="a quick-start run directory already made (with --log)")
    parser.add_argument("--log", type=Path, help="what that run printed (stdout, at 80 columns)")
    parser.add_argument("--seconds", type=float, default=0.0, help="how long that run took")
    parser.add_argument("--figures-only", action="store_true",
                        help="only redraw the figures from docs/img/quickstart-report.json (after a change to the plots)")
    args = parser.parse_args()
    if args.figures_only:
        render_figures(json.loads(REPORT.read_text(encoding="utf-8")))
        print(f"updated {', '.join(str(p) for p in FIGURES.values())}")
        return
    with tempfile.TemporaryDirectory() as scratch:
        if args.run:
            run, printed, seconds, load = args.run, args.log.read_text(encoding="utf-8"), args.seconds, None
        else:
            run, printed, seconds, load = run_quickstart(Path(scratch))
        report = json.loads((run / "report.json").read_text(encoding="utf-8"))
        IMG.mkdir(exist_ok=True)
        shutil.copyfile(run / "report.json", REPORT)
        render_figures(report)
        text = COOKBOOK.read_text(encoding="utf-8")
        new, count = REGION.subn(lambda m: m.group(1) + region(report, printed, seconds, load) + m.group(2), text)
        if count != 1:
            sys.exit(f"{COOKBOOK}: expected one quickstart:begin/end region, found {count}")
        COOKBOOK.write_text(new, encoding="utf-8")
    print(f"updated {COOKBOOK} and {', '.join(str(p) for p in [REPORT, *FIGURES.values()])}")


if __name__ == "__main__":
    main()
