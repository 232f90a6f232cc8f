"""``mpqfx export``: a searched policy of a trained run as ONNX, OpenVINO IR or integer safetensors,
or a Double Rounding supernet as its one 8-bit weight file."""

from __future__ import annotations

from pathlib import Path

import click

from mpqfx.cli.options import device_option


@click.command("export")
@click.option("--run", "run_dir", required=True, type=click.Path(path_type=Path), help="Run directory of `mpqfx compress`.")
@click.option("--policy", "policy", default=None,
              help="A policy of the run by name (uniform-4, uniform:4) or a policy YAML/JSON file; "
                   "not needed with --format double-rounding.")
@click.option("--format", "fmt", type=click.Choice(["onnx", "openvino", "safetensors", "double-rounding"]),
              default="onnx", show_default=True,
              help="openvino: IR (.xml + .bin), each b-bit quantizer in a form OpenVINO runs in u8 (needs the openvino package); "
                   "double-rounding: the one 8-bit weight file every policy derives from.")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Output file [default: RUN/export/<policy>.<ext>].")
@click.option("--opset", type=int, default=17, show_default=True, help="ONNX opset (13 to 20).")
@click.option("--check-images", type=click.IntRange(min=0), default=1000, show_default=True,
              help="Held-out images the ONNX file is measured on in onnxruntime (0: the whole split).")
@device_option("re-estimates BatchNorm and runs beside the exported file (the integer model is built on the CPU)")
def export_command(run_dir: Path, policy: str | None, fmt: str, out: Path | None, opset: int, check_images: int,
                   device: str | None) -> None:
    """Export a policy of a trained supernet (BatchNorm re-estimated on the run's training images)."""
    from mpqfx.export.run import export_policy

    path, details = export_policy(run_dir, policy, fmt, out, opset=opset, check_images=check_images or None,
                                  device=device)
    click.echo(f"wrote {path}")
    if "onnx_accuracy" in details:
        click.echo(f"onnxruntime: top-1 {details['onnx_accuracy']:.2%} (supernet {details['onnx_supernet_accuracy']:.2%}), "
                   f"top-1 agreement {details['onnx_top1_agreement']:.2%} on {details['onnx_images']} held-out images; "
                   f"{details['onnx_integer_kernels']}/{details['onnx_layers']} layers run as integer kernels")
    if "openvino_accuracy" in details:
        click.echo(f"openvino: top-1 {details['openvino_accuracy']:.2%} (supernet {details['openvino_supernet_accuracy']:.2%}), "
                   f"top-1 agreement {details['openvino_top1_agreement']:.2%} on {details['openvino_images']} held-out "
                   f"images; {details['openvino_integer_layers']}/{details['openvino_layers']} convolution/fully "
                   f"connected nodes run in u8/i8")
    elif fmt == "double-rounding":
        click.echo("every policy's weights derive from its 8-bit integers; BatchNorm statistics are the trained ones: "
                   "re-estimate them per policy (see docs/export-format.md)")
