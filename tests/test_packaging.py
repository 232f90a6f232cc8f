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

    for name in ("prepare", "search", "bitops", "model_size", "Policy", "Recipe", "Supernet"):
        assert name in mpqfx.__all__ and hasattr(mpqfx, name)
        assert getattr(mpqfx, name).__doc__


def test_every_subpackage_is_listed_for_installation():
    """Editable installs hide a package missing from pyproject's list; a wheel would lack it."""
    import tomllib

    root = Path(__file__).resolve().parents[1]
    listed = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {
        ".".join(d.relative_to(root).parts)
        for d in (root / "mpqfx").rglob("*")
        if d.is_dir() and any(d.glob("*.py"))
    } | {"mpqfx", "mpqfx.cli", "mpqfx.recipes"}
    assert on_disk <= listed, f"missing from pyproject packages: {sorted(on_disk - listed)}"
    for package in on_disk - {"mpqfx.cli", "mpqfx.recipes"}:
        assert (root / package.replace(".", "/") / "__init__.py").exists(), package


def test_search_function_survives_submodule_imports():
    import mpqfx
    import mpqfx.search.greedy  # noqa: F401
    from mpqfx.search import Constraints  # noqa: F401

    assert callable(mpqfx.search) and mpqfx.search.__module__ == "mpqfx.search.run"
