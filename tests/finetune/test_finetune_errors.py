"""``mpqfx finetune`` on bad input: one line naming what is wrong and what is allowed, exit code 2,
no traceback."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from mpqfx.cli.main import cli


def _finetune(*args: str):
    result = CliRunner().invoke(cli, ["finetune", *args])
    return result.exit_code, result.output.strip()


@pytest.fixture
def run(tmp_path):
    """A run directory with two searched policies and no supernet yet."""
    root = tmp_path / "RUN"
    (root / "policies").mkdir(parents=True)
    for name in ("mixed@uniform-4", "mixed@uniform-3"):
        (root / "policies" / f"{name}.yaml").write_text("layers: {}\n")
    (root / "run.json").write_text(json.dumps({"format": "mpqfx.run/1"}))
    return root


def test_a_missing_run_is_named(tmp_path):
    code, output = _finetune("--run", str(tmp_path / "nowhere"), "--policy", "uniform-4")
    assert code == 2
    assert output == f"mpqfx: error: --run: '{tmp_path / 'nowhere'}' does not exist"


def test_an_unknown_policy_lists_the_runs_policies(run):
    code, output = _finetune("--run", str(run), "--policy", "mixed@uniform-9")
    assert code == 2 and len(output.splitlines()) == 1 and "Traceback" not in output
    assert "--policy 'mixed@uniform-9': no such file or policy of" in output
    assert output.endswith("(the run's policies: mixed@uniform-3, mixed@uniform-4)")


def test_a_run_without_supernet_says_how_to_finish_it(run):
    code, output = _finetune("--run", str(run), "--policy", "mixed@uniform-3")
    assert code == 2
    assert output == (f"mpqfx: error: --run: '{run}' has no trained supernet (supernet.pt); finish the run with "
                      f"`mpqfx compress --resume --out {run}`")


@pytest.mark.parametrize("epochs", ["0", "-2"])
def test_epochs_below_one_are_refused(run, epochs):
    code, output = _finetune("--run", str(run), "--policy", "uniform-4", "--epochs", epochs)
    assert code == 2
    assert output == f"mpqfx: error: --epochs: must be at least 1, got {epochs}"
