"""The installed layout: mpqfx.cli and mpqfx.recipes inside the package, no top-level cli/recipes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_cli_and_recipes_live_inside_the_package(tmp_path):
    names = ["mpqfx.cli", "mpqfx.recipes", "cli", "recipes"]
    code = f"import importlib.util; print([importlib.util.find_spec(n) is not None for n in {names!r}])"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[True, True, False, False]"


def test_console_script_runs(tmp_path):
    exe = Path(sys.executable).with_name("mpqfx")
    proc = subprocess.run([exe, "--help"], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0 and "bitops" in proc.stdout


def test_public_api():
    import mpqfx

    for name in ("prepare", "bitops", "model_size", "Policy", "Recipe", "Supernet"):
        assert name in mpqfx.__all__ and hasattr(mpqfx, name)
        assert getattr(mpqfx, name).__doc__
