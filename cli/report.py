"""``mpqfx report``: a finished run's report written again, with the searches made after it."""

from __future__ import annotations

from pathlib import Path

import click

from mpqfx.cli.options import device_option


@click.command("report")
@click.option("--run", "run_dir", required=True, type=click.Path(path_type=Path), help="Run directory of `mpqfx compress`.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON (for scripts) instead of a table.")
@device_option("measures the later searches on")
def report_command(run_dir: Path, as_json: bool, device: str | None) -> None:
    """Write report.md, report.json and the figures again, adding the policies `mpqfx search` kept in
    RUN/searches/ (each measured once, like the run's own) and the fine-tunes `mpqfx finetune` finished
    in RUN/finetuned/ (supernet, fine-tuned and exported rows); the run's own rows stay as they were."""
    from rich.console import Console

    from mpqfx.cli.tables import print_report_summary
    from mpqfx.compress.later import update_report
    from mpqfx.errors import MpqfxError

    if not run_dir.is_dir():
        raise MpqfxError(f"--run: {str(run_dir)!r} is not a directory")
    console = Console(stderr=as_json)
    report = update_report(run_dir, log=lambda message: console.print(f"[dim]mpqfx:[/dim] {message}"), device=device)
    print_report_summary(report, run_dir, as_json=as_json)
