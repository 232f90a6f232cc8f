"""The commands that only read recipes start without importing torch, timm or the pipeline
(docs/benchmarks.md: `mpqfx --help` start-up), and the lazy package exports still work."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("torch", "torchvision", "timm", "onnx", "onnxruntime", "pulp", "ml_dtypes", "matplotlib")

PROBE = """
import json, sys
from click.testing import CliRunner
from mpqfx.cli.main import cli
runner = CliRunner()
codes = [runner.invoke(cli, args).exit_code for args in (["--help"], ["recipes"], ["validate", "oneshot"],
                                                        ["validate", "double_rounding"], ["search", "--help"])]
heavy = sorted({m.split(".")[0] for m in sys.modules} & set(sys.argv[1:]))
print(json.dumps({"codes": codes, "heavy": heavy}))
"""


def test_help_recipes_and_validate_import_nothing_heavy():
    proc = subprocess.run([sys.executable, "-c", PROBE, *HEAVY], capture_output=True, text=True, check=True)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out == {"codes": [0, 0, 0, 0, 0], "heavy": []}


def test_checking_a_recipe_does_not_import_the_strategies_or_backends():
    code = ("import sys; from mpqfx.recipe import Recipe; r = Recipe.load('limpq'); "
            "print(type(r.strategy.options).__name__, type(r.search.options).__name__, "
            "sorted(m for m in sys.modules if m.startswith('mpqfx.')))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.startswith("LimpqOptions IlpOptions")
    loaded = eval(proc.stdout.split(" ", 2)[2])
    assert "mpqfx.train.options" in loaded and "mpqfx.search.options" in loaded
    assert not {"mpqfx.train.limpq", "mpqfx.search.ilp", "mpqfx.train.strategy", "mpqfx.search.backend"} & set(loaded)


def test_lazy_exports_resolve_and_functions_keep_their_names_after_their_modules_load():
    code = ("import mpqfx, mpqfx.search.ilp, mpqfx.compress.pipeline, mpqfx.prepare; "
            "from mpqfx.search import Constraints, SEARCHES; from mpqfx.train import STRATEGIES; "
            "print(callable(mpqfx.search), callable(mpqfx.compress), callable(mpqfx.prepare), mpqfx.Policy.__name__, "
            "SEARCHES.names(), STRATEGIES.names(), sorted(set(mpqfx.__all__) - set(dir(mpqfx))))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == ("True True True Policy ['greedy', 'hessian', 'ilp'] "
                                   "['bitmixer', 'calibrate', 'double_rounding', 'float', 'limpq', 'oneshot'] []")
