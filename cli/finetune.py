"""``mpqfx finetune``: quantization-aware fine-tuning of one policy of a run in its deployed form."""

from __future__ import annotations

from pathlib import Path

import click

from mpqfx.cli.options import device_option


@click.command("finetune")
@click.option("--run", "run_dir", required=True, type=click.Path(path_type=Path), help="Run directory of `mpqfx compress`.")
@click.option("--policy", "policy", required=True, help="A policy of the run by name (as in RUN/policies/) or a policy file.")
@click.option("--epochs", type=int, default=1, show_default=True, help="Fine-tuning epochs over the run's training images.")
@click.option("--lr", type=float, default=None, help="Learning rate of the weights [default: a tenth of the recipe's train.lr].")
@click.option("--resume", is_flag=True, help="Continue (or show) the fine-tune in RUN/finetuned/<policy>/.")
@device_option("and the fine-tuned model train")
def finetune_command(run_dir: Path, policy: str, epochs: int, lr: float | None, resume: bool, device: str | None) -> None:
    """Fine-tune one policy with the deployed arithmetic simulated (BatchNorm folded, 8-bit
    requantization, int32 bias), export it and measure the export beside it (RUN/finetuned/<policy>/)."""
    from rich.console import Console

    from mpqfx.finetune.run import finetune, rows

    console = Console()
    result = finetune(run_dir, policy, epochs=epochs, lr=lr, resume=resume, device=device,
                      log=lambda message: console.print(f"[dim]mpqfx:[/dim] {message}"))
    for model, accuracy, note in rows(result):
        top1 = "not measured" if accuracy is None else f"{100 * accuracy:.2f}%"
        click.echo(f"{model}: top-1 {top1} ({note})")
