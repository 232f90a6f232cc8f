"""``mpqfx compress``: the whole job, from a timm model name to a report and exported files."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command("compress")
@click.option("--model", "model_name", default=None, help="timm model name, e.g. efficientnet_lite0 (not needed with --resume).")
@click.option("--recipe", default="quickstart", show_default=True,
              help="Shipped recipe name (see `mpqfx recipes`) or YAML path; quickstart is a few-minute CPU run "
                   "(bitops and search --model, which train nothing, default to oneshot's layer rules).")
@click.option("--data", default="fashion-mnist", show_default=True,
              help="fashion-mnist (embedded) or the root of an ImageFolder tree with train/ and val/.")
@click.option("--data-dir", default=None, help="Folder with the Fashion-MNIST IDX files (default: $MPQFX_DATA_DIR, "
              "then /usr/share/datasets/fashion-mnist).")
@click.option("--target", "targets", multiple=True, help="Budget (repeatable): 4.5G, uniform:4, size=8x, avg=3.5, ... "
              "[default: uniform:4 and uniform:3, where candidate bit-widths]")
@click.option("--epochs", type=click.IntRange(1), default=None, help="Supernet epochs (default: the recipe's).")
@click.option("--batch-size", type=click.IntRange(1), default=None,
              help="Training batch size, of all processes together under torchrun (default: the recipe's).")
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=None,
              help="Supernet learning rate, train.lr (default: the recipe's).")
@click.option("--float-epochs", type=click.IntRange(0), default=None,
              help="Float epochs before the supernet, warm_start.epochs: training from random weights, or the "
              "fine-tune after a re-initialised classifier (default: the recipe's).")
@click.option("--train-images", type=click.IntRange(1), default=None,
              help="Use N training images (a seeded sample with every class in proportion).")
@click.option("--val-images", type=click.IntRange(1), default=None,
              help="Use N held-out images (a seeded sample with every class in proportion).")
@click.option("--skip-bad-images", is_flag=True,
              help="Leave out image files that do not decode (counted in the report) instead of stopping at one.")
@click.option("--search-images", type=click.IntRange(0), default=None,
              help="Training images the search measures candidate policies on (default: the recipe's).")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Run directory [default: runs/<model>-<recipe>-<timestamp>].")
@click.option("--checkpoint", type=click.Path(path_type=Path), default=None,
              help="Local float weights, loaded by timm: a state dict (.pt/.pth), .safetensors, or a timm/torchvision "
              "training checkpoint; a classifier of another size is re-initialised and fine-tuned.")
@click.option("--pretrained", is_flag=True, help="Start from timm's pretrained weights (needs the network; offline, "
              "use --checkpoint).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default=None, help="Default: cuda when available.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from where it stopped.")
@click.option("--seed", type=int, default=None, help="Seed (default: the recipe's).")
@click.option("--no-export", is_flag=True, help="Skip the safetensors/ONNX export.")
@click.option("--finetune-epochs", type=click.IntRange(1), default=None,
              help="Fine-tune every searched policy in its deployed form for E epochs after the search "
              "(as `mpqfx finetune`); the report shows supernet, fine-tuned and exported rows.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the summary as JSON on stdout (for scripts); progress and log lines go to stderr.")
def compress_command(model_name: str | None, recipe: str, data: str, data_dir: str | None, targets: tuple[str, ...],
                     epochs: int | None, batch_size: int | None, lr: float | None, float_epochs: int | None,
                     train_images: int | None, val_images: int | None, search_images: int | None,
                     skip_bad_images: bool, out: Path | None, checkpoint: Path | None, pretrained: bool,
                     device: str | None, resume: bool, seed: int | None, no_export: bool, finetune_epochs: int | None,
                     as_json: bool) -> None:
    """Train a supernet once, search every --target, evaluate, report and export."""
    import rich
    from rich.console import Console

    from mpqfx.errors import MpqfxError

    from mpqfx.cli.tables import print_report_summary
    from mpqfx.compress import ExportFailed, compress

    if model_name is None and not resume:
        raise MpqfxError("--model: required (a timm model name, e.g. efficientnet_lite0)")
    if as_json:  # rich's progress bars draw on its global console
        rich.reconfigure(stderr=True)
    console = Console(stderr=as_json)  # else progress on stdout: stderr is left to the one-line error, if any
    failed = None
    try:
        result = compress(model_name, recipe, data, targets, epochs=epochs, batch_size=batch_size, out=out,
                          checkpoint=checkpoint, pretrained=pretrained, device=device, resume=resume, seed=seed,
                          data_dir=data_dir, train_images=train_images, val_images=val_images,
                          search_images=search_images, skip_bad_images=skip_bad_images or None,
                          float_epochs=float_epochs, lr=lr, export=not no_export, finetune_epochs=finetune_epochs,
                          log=lambda message: console.print(f"[dim]mpqfx:[/dim] {message}"))
    except ExportFailed as exc:  # the report is complete: show it, then the one line naming the failed policies
        result, failed = exc.result, exc
    if result is None:  # a rank other than 0 under torchrun: rank 0 reports
        return
    report = json.loads((result.run_dir / "report.json").read_text(encoding="utf-8"))
    print_report_summary(report, result.run_dir, as_json=as_json)
    if failed is not None:
        raise failed
