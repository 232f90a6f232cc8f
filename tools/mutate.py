"""Mutation testing of mpqfx's core modules with mutmut, each module against its own test files.

Usage: ``python tools/mutate.py [MODULE ...]`` (default: every module below), from the repository
root with mutmut 2.x installed (``pip install -e '.[mutate]'``; ``make mutate`` does both).
mutmut edits each module in place while it runs (and puts it back); its results are kept in
``.mutmut-cache``, so an interrupted run resumes where it stopped. The last line printed is
``mutation: killed K of M (P%)``. A mutant counts as killed when its tests failed or timed out
(mutmut cannot tell why a test failed: docs/testing.md says how the known bugs were checked).
"""

from __future__ import annotations

import os
import shlex
import sqlite3
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".mutmut-cache"

# module -> the test files (and pytest options) that cover it
MODULES: dict[str, list[str]] = {
    "mpqfx/search/solver.py": ["tests/search/test_ilp.py"],
    "mpqfx/search/ilp.py": ["tests/search/test_ilp.py", "tests/search/test_sensitivity.py"],
    "mpqfx/search/greedy.py": ["tests/search/test_greedy.py", "tests/search/test_backends.py", "-k", "greedy"],
    "mpqfx/search/sensitivity.py": ["tests/search/test_sensitivity.py"],
    "mpqfx/cost/report.py": ["tests/cost/test_bitops.py", "tests/graph/test_float_weights.py"],
    "mpqfx/data/spec.py": ["tests/data/test_data.py"],
    "mpqfx/data/imagefolder.py": ["tests/data/test_data.py"],
    "mpqfx/evaluate.py": ["tests/test_evaluate.py"],
    "mpqfx/export/bias.py": ["tests/export/test_bias.py", "tests/export/test_deploy.py"],
    "mpqfx/export/requantize.py": ["tests/export/test_requantize.py", "tests/export/test_deploy_real_inputs.py",
                                   "tests/export/test_deploy.py"],
    "mpqfx/export/qdq.py": ["tests/export/test_deploy.py", "tests/export/test_requantize.py"],
}
KILLED = ("ok_killed", "ok_suspicious", "bad_timeout")


def run_module(module: str) -> None:
    """Let mutmut mutate ``module`` and run its own tests against every mutant (quietly)."""
    runner = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *MODULES[module]]
    command = [sys.executable, "-m", "mutmut", "run", "--paths-to-mutate", module, "--tests-dir", "tests",
               "--runner", shlex.join(runner)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    print(f"== {module}: {' '.join(MODULES[module])}", flush=True)
    subprocess.run(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, check=False)  # exit 2: survivors


def results(module: str) -> list[tuple[int, str, int, str]]:
    """(mutant id, status, line number, source line) of every mutant of ``module`` in the cache."""
    if not CACHE.is_file():
        return []
    with sqlite3.connect(CACHE) as db:
        return db.execute("SELECT m.id, m.status, l.line_number, l.line FROM Mutant m JOIN Line l ON m.line = l.id "
                          "JOIN SourceFile s ON l.sourcefile = s.id WHERE s.filename = ? ORDER BY m.id",
                          (module,)).fetchall()


def main(argv: list[str]) -> int:
    modules = argv or list(MODULES)
    unknown = [m for m in modules if m not in MODULES]
    if unknown:
        print(f"unknown module {unknown[0]!r}; choose from: {', '.join(MODULES)}", file=sys.stderr)
        return 2
    total_killed = total = 0
    for module in modules:
        run_module(module)
        rows = results(module)
        tested = [r for r in rows if r[1] not in ("untested", "skipped")]
        killed = [r for r in tested if r[1] in KILLED]
        total_killed, total = total_killed + len(killed), total + len(tested)
        print(f"{module}: killed {len(killed)} of {len(tested)} ({100 * len(killed) / max(len(tested), 1):.1f}%)")
        for mutant_id, status, line, source in tested:
            if status not in KILLED:
                print(f"  survived #{mutant_id} line {line + 1}: {source.strip()}  (mutmut show {mutant_id})")
    print(f"mutation: killed {total_killed} of {total} ({100 * total_killed / max(total, 1):.1f}%)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
