"""`mpqfx bitops` and the CLI's error contract: one line on stderr, non-zero exit, no traceback."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from mpqfx.cli.main import cli, main


def run(*args):
    return CliRunner().invoke(cli, list(args))


def test_help_lists_commands():
    result = run("--help")
    assert result.exit_code == 0 and "bitops" in result.output


def test_bitops_prints_table_and_totals():
    result = run("bitops", "--model", "resnet18", "--bits", "4")
    assert result.exit_code == 0, result.output
    assert "layer1.0.conv1" in result.output and "fc" in result.output
    assert "34.71 GBitOPs" in result.output


def test_bitops_table_fits_80_columns_with_whole_layer_names_and_json_has_the_same_numbers():
    result = CliRunner().invoke(cli, ["bitops", "--model", "mobilenetv3_small_100", "--bits", "4"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert max(len(line) for line in lines) <= 80
    names = [line.split("│")[1].strip() for line in lines if line.startswith("│")]
    assert "blocks.0.0.se.conv_reduce" in names  # the longest names, each on one row
    data = json.loads(run("bitops", "--model", "mobilenetv3_small_100", "--bits", "4", "--json").output)
    assert [layer["name"] for layer in data["layers"]] == names
    assert sum(layer["bitops"] for layer in data["layers"]) == data["bitops"]
    assert f"{data['bitops'] / 1e9:.2f} GBitOPs" in result.output


def test_bitops_wbits_abits_and_input_size():
    result = run("bitops", "--model", "resnet18", "--wbits", "2", "--abits", "3", "--input-size", "3,112,112", "--total-only")
    assert result.exit_code == 0, result.output
    assert "W2/A3, input [3, 112, 112]" in result.output


@pytest.mark.parametrize("args,message", [
    (["bitops", "--model", "resnet181"], "unknown timm model 'resnet181'; close matches: resnet18"),
    (["bitops", "--model", "resnet18", "--input-size", "3,x"], "--input-size: expected H or C,H,W"),
    (["bitops", "--model", "resnet18", "--recipe", "nope"], "no shipped recipe named 'nope'"),
    (["bitops", "--model", "resnet18", "--recipe", "quikstart"],
     "no shipped recipe named 'quikstart', did you mean 'quickstart'? (shipped: bitmixer"),
])
def test_bad_input_is_one_line_without_traceback(args, message, capsys, monkeypatch):
    """The console script's own process for the first case; ``main()`` in this one for the others (seconds less
    each: an exception that escaped would fail the test here as a traceback would there)."""
    if args[2] == "resnet181":
        proc = subprocess.run([sys.executable, "-m", "mpqfx.cli.main", *args], capture_output=True, text=True,
                              env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
        code, err = proc.returncode, proc.stderr
    else:
        monkeypatch.setattr(sys, "argv", ["mpqfx", *args])
        with pytest.raises(SystemExit) as ended:
            main()
        code, err = ended.value.code, capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], err
    assert "Traceback" not in err


def test_bad_recipe_field_from_cli(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("quant: {w_bits: [], a_bits: [0]}\n")
    result = run("bitops", "--model", "resnet18", "--recipe", str(bad))
    assert result.exit_code == 2
    assert "quant.w_bits: must not be empty" in result.output and "quant.a_bits: bit-widths [0]" in result.output
