"""Mutation testing of mpqfx's core modules with mutmut 3 (``make mutate``; docs/testing.md).

Usage: ``python tools/mutate.py [--retest] [MODULE ...]`` from the repository root (default: every
module in ``[tool.mutmut] only_mutate`` of pyproject.toml). mutmut copies ``mpqfx/`` to ``mutants/``,
turns each function of these modules into a trampoline over its one-token mutants, runs the test
files of ``pytest_add_cli_args_test_selection`` once to learn which tests call which function, then
forks a worker per mutant (torch, timm and pytest imported once) that runs those tests, cut to the
module's own files (``SCOPE``) and fastest first, ``pytest -x``. Results are kept per function hash
in ``mutants/``: a second run tests only the functions that changed (``rm -r mutants`` starts over);
after adding tests, ``--retest`` runs the mutants that survived (or had no test) again. Naming
modules re-tests all their mutants. The last line printed is ``mutation: killed K of M (P%)``.

mutmut 3 leaves decorated functions alone; here functions whose decorators are all in
``TRANSPARENT`` are mutated too: the decorators stay on the trampoline, the mutants run bare
inside it (``torch.no_grad()``, ``property`` and the like wrap the call, not the body).
"""

from __future__ import annotations

import json
import os
import sys
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KILLED = ("killed", "timeout", "segfault")
# module -> its own test files: a mutant runs the tests of these files that call its function
# (learnt by mutmut's stats run over [tool.mutmut] pytest_add_cli_args_test_selection), fastest first
SCOPE: dict[str, tuple[str, ...]] = {
    "mpqfx/search/solver.py": ("tests/search/test_ilp.py",),
    "mpqfx/search/ilp.py": ("tests/search/test_ilp.py", "tests/search/test_sensitivity.py"),
    "mpqfx/search/greedy.py": ("tests/search/test_greedy.py",),
    "mpqfx/search/sensitivity.py": ("tests/search/test_sensitivity.py",),
    "mpqfx/cost/report.py": ("tests/cost/test_bitops.py", "tests/graph/test_float_weights.py"),
    "mpqfx/data/spec.py": ("tests/data/test_data.py", "tests/data/test_sampling.py", "tests/data/test_imagefolder.py"),
    "mpqfx/data/imagefolder.py": ("tests/data/test_data.py", "tests/data/test_imagefolder.py"),
    "mpqfx/evaluate.py": ("tests/test_evaluate.py",),
    "mpqfx/export/bias.py": ("tests/export/test_bias.py", "tests/export/test_deploy.py"),
    "mpqfx/export/requantize.py": ("tests/export/test_requantize.py", "tests/export/test_deploy_real_inputs.py",
                                   "tests/export/test_deploy.py"),
    "mpqfx/export/qdq.py": ("tests/export/test_deploy.py", "tests/export/test_requantize.py"),
}
TRANSPARENT = frozenset({"property", "functools.cached_property", "torch.no_grad()", "contextmanager",
                         "lru_cache(maxsize=None)"})


def _patch_mutmut() -> None:
    """Let mutmut mutate functions whose decorators only wrap the call (``TRANSPARENT``)."""
    import libcst as cst
    from mutmut.mutation import file_mutation as fm

    def transparent(node: object) -> bool:
        return (isinstance(node, cst.FunctionDef) and bool(node.decorators)
                and all(cst.Module([]).code_for_node(d.decorator) in TRANSPARENT for d in node.decorators))

    skip = fm.MutationVisitor._skip_node_and_children

    def skip_node_and_children(self: fm.MutationVisitor, node: cst.CSTNode) -> bool:
        if not transparent(node):
            return skip(self, node)
        position = self.get_metadata(fm.PositionProvider, node, None)  # mutmut's checks but the decorator one
        if position and position.start.line in self._ignored_node_lines:
            self.ignored_functions.add(node.name.value)
            return True
        return node.name.value in fm.NEVER_MUTATE_FUNCTION_NAMES

    arrange = fm.function_trampoline_arrangement

    def function_trampoline_arrangement(function, mutants, class_name):  # type: ignore[no-untyped-def]
        if not transparent(function):
            return arrange(function, mutants, class_name)
        declarations, nodes, assignments, names = arrange(function.with_changes(decorators=[]), mutants, class_name)
        trampoline = nodes[0].with_changes(decorators=[*function.decorators, *nodes[0].decorators])
        return declarations, [trampoline, *nodes[1:]], assignments, names

    fm.MutationVisitor._skip_node_and_children = skip_node_and_children
    fm.function_trampoline_arrangement = function_trampoline_arrangement

    import mutmut.__main__ as main
    from mutmut import state

    collect = main.collect_or_load_stats

    def collect_or_load_stats(*args, **kwargs):  # type: ignore[no-untyped-def]
        """mutmut's stats, then each function's tests cut to its module's SCOPE, fastest first."""
        collect(*args, **kwargs)
        tests, seconds = state().tests_by_mangled_function_name, state().duration_by_test
        for function, names in tests.items():
            own = SCOPE.get(function.split(".x", 1)[0].replace(".", "/") + ".py", ())
            tests[function] = sorted((t for t in names if t.split("::")[0] in own), key=lambda t: seconds.get(t, 0))

    main.collect_or_load_stats = collect_or_load_stats


def modules() -> list[str]:
    """The core modules: ``[tool.mutmut] only_mutate`` of pyproject.toml (the keys of SCOPE)."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mutmut"]
    missing = {t for files in SCOPE.values() for t in files} - set(config["pytest_add_cli_args_test_selection"])
    if set(config["only_mutate"]) != set(SCOPE) or missing:
        raise SystemExit(f"pyproject.toml [tool.mutmut] and SCOPE in {__file__} disagree: {sorted(missing)}")
    return config["only_mutate"]


def statuses(module: str) -> dict[str, str]:
    """mutant name -> mutmut's status for every mutant of ``module`` (after a run)."""
    from mutmut.stats import status_by_exit_code

    meta = ROOT / "mutants" / f"{module}.meta"
    if not meta.is_file():
        return {}
    codes = json.loads(meta.read_text())["exit_code_by_key"]
    return {name: status_by_exit_code[code] for name, code in codes.items()}


def main(argv: list[str]) -> int:
    retest = "--retest" in argv  # after new tests: run the surviving mutants again, not only changed functions
    argv = [a for a in argv if a != "--retest"]
    chosen = argv or modules()
    unknown = [m for m in chosen if m not in modules()]
    if unknown:
        print(f"unknown module {unknown[0]!r}; choose from: {', '.join(modules())}", file=sys.stderr)
        return 2
    os.chdir(ROOT)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ["HF_HUB_OFFLINE"] = "1"
    _patch_mutmut()
    from mutmut.__main__ import cli

    if retest:
        names = [n for m in chosen for n, s in statuses(m).items() if s not in KILLED]
        if not names:
            print("no surviving mutant to retest")
    else:
        names = [] if not argv else [m.removesuffix(".py").replace("/", ".") + ".*" for m in chosen]
    start = time.monotonic()
    try:
        if names or not retest:
            cli(["run", *names], standalone_mode=False)
    except SystemExit as stop:  # mutmut exits 1 when the clean test run fails
        if stop.code:
            return int(stop.code)
    print(f"mutmut run: {(time.monotonic() - start) / 60:.1f} min")
    total_killed = total = 0
    for module in chosen:
        status = statuses(module)
        tested = {n: s for n, s in status.items() if s not in ("not checked", "skipped")}
        killed = [n for n, s in tested.items() if s in KILLED]
        total_killed, total = total_killed + len(killed), total + len(tested)
        print(f"{module}: killed {len(killed)} of {len(tested)} ({100 * len(killed) / max(len(tested), 1):.1f}%)")
        for name, s in sorted(tested.items()):
            if s not in KILLED:
                print(f"  {s}: {name}  (mutmut show {name})")
    print(f"mutation: killed {total_killed} of {total} ({100 * total_killed / max(total, 1):.1f}%)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
