"""CLI start-up: wall time of `mpqfx --help`, `mpqfx recipes` and `mpqfx validate oneshot` for two
commits of this repository, measured in one run, interleaved (goal: <= 1 s on 2 cores).

Each commit is exported with `git archive` into a temporary directory laid out as the installed
package is (``cli`` as ``mpqfx/cli``, ``recipes`` as ``mpqfx/recipes``) and run with this
interpreter in a fresh process; the runs alternate between the commits so that a busy machine
slows both alike. Reported: the median and the fastest of the repeats, and the modules imported.

Usage: python benchmarks/bench_startup.py [--refs main HEAD] [--repeats 7]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _machine import header  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
COMMANDS = (["--help"], ["recipes"], ["validate", "oneshot"])
HEAVY = ("torch", "torchvision", "timm", "onnx", "onnxruntime", "pulp", "matplotlib")
RUN = "import sys; sys.path.insert(0, sys.argv.pop(1)); from mpqfx.cli.main import main; sys.argv[0] = 'mpqfx'; main()"
MODULES = ("import sys, json; sys.path.insert(0, sys.argv[1]); from click.testing import CliRunner; "
           "from mpqfx.cli.main import cli; CliRunner().invoke(cli, sys.argv[2:]); "
           "print(json.dumps([len(sys.modules), sorted({m.split('.')[0] for m in sys.modules} & set(%r))]))" % (HEAVY,))


def checkout(ref: str, into: Path) -> Path:
    """The tree of ``ref`` under ``into``, with the CLI and recipes where the installed package has them."""
    into.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", ref], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    (into / "mpqfx" / "cli").symlink_to(into / "cli")
    (into / "mpqfx" / "recipes").symlink_to(into / "recipes")
    return into


def wall(tree: Path, args: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", RUN, str(tree), *args], check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--refs", nargs="+", default=["main", "HEAD"])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        trees = {ref: checkout(ref, Path(tmp) / f"tree{i}") for i, ref in enumerate(args.refs)}
        commits = {ref: subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", ref], check=True,
                                       capture_output=True, text=True).stdout.strip() for ref in args.refs}
        for tree in trees.values():  # byte-compile once, as an installed package is
            wall(tree, ["--help"])
        times: dict[tuple[str, int], list[float]] = {}
        for _ in range(args.repeats):
            for i, command in enumerate(COMMANDS):
                for ref, tree in trees.items():
                    times.setdefault((ref, i), []).append(wall(tree, command))
        modules = {}
        for ref, tree in trees.items():
            out = subprocess.run([sys.executable, "-c", MODULES, str(tree), "--help"], check=True,
                                 capture_output=True, text=True).stdout
            modules[ref] = json.loads(out.strip().splitlines()[-1])
    print(header(f"CLI start-up, fresh process each, {args.repeats} repeats interleaved"))
    print("| commit | command | wall, median (s) | wall, fastest (s) |")
    print("|---|---|---:|---:|")
    for i, command in enumerate(COMMANDS):
        for ref in args.refs:
            t = times[ref, i]
            print(f"| {ref} ({commits[ref]}) | `mpqfx {' '.join(command)}` | {statistics.median(t):.2f} | {min(t):.2f} |")
    print()
    for ref in args.refs:
        count, heavy = modules[ref]
        print(f"{ref} ({commits[ref]}): `mpqfx --help` loads {count} modules; heavy ones: {', '.join(heavy) or 'none'}")


if __name__ == "__main__":
    main()
