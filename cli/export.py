"""``mpqfx export``: a searched policy of a trained run as integer safetensors or ONNX."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("export")
@click.option("--run", "run_dir", required=True, type=click.Path(path_type=Path), help="Run directory of `mpqfx compress`.")
@click.option("--policy", "policy_path", required=True, type=click.Path(path_type=Path),
              help="Policy YAML/JSON (e.g. RUN/policies/uniform-4.yaml).")
@click.option("--format", "fmt", type=click.Choice(["onnx", "safetensors", "double-rounding"]), default="onnx",
              show_default=True, help="double-rounding: the one 8-bit weight file every policy derives from.")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Output file [default: RUN/export/<policy>.<ext>].")
def export_command(run_dir: Path, policy_path: Path, fmt: str, out: Path | None) -> None:
    """Export a policy of a trained supernet (BatchNorm re-estimated on the run's training images)."""
    from mpqfx.export.run import export_policy

    path, details = export_policy(run_dir, policy_path, fmt, out)
    click.echo(f"wrote {path}" + (f" ({details})" if details else ""))
