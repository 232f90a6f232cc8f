"""Post-training mixed precision side by side: mpqfx's ``ptq`` recipe against Sony's Model
Compression Toolkit (MCT) mixed-precision PTQ with its default IMX500 target (weights 2/4/8 bits,
activations 8), on the same float model, the same calibration images and the same held-out images.

Targets are weights memory of the conv/linear kernels at an average of 8, 6, 4 and 3 bits. MCT
gets that as its ``ResourceUtilization(weights_memory=bytes)``; mpqfx gets the same kernel bytes as
a ``size=`` budget (mpqfx's size also counts biases and BatchNorm at 32 bits, added here), with
activations held at 8 bits. Each row reports top-1 on the held-out images and the wall time of
the quantization (MCT) or of the whole ``ptq`` compress run without export (mpqfx).

MCT is the optional extra ``peers`` (``pip install 'mpqfx[peers]'``); without it the MCT rows are
skipped with a message. There are no converged float checkpoints shipped: ``--train-float N``
trains the float model for N epochs on the Fashion-MNIST training split first (a plain timm model
and SGD) and keeps it at ``--float`` for later runs.

Usage: python benchmarks/bench_ptq_vs_mct.py --model efficientnet_lite0 --float runs/ptq-bench/float.pt \
           [--train-float 3] [--bits 8 6 4 3] [--calibration 1024] [--val-images 2000]
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, __file__.rsplit("/", 1)[0])
import mpqfx  # noqa: E402
from _machine import header  # noqa: E402
from mpqfx.data.spec import DataSpec, batches_at, calibration_indices  # noqa: E402
from mpqfx.models import create_model  # noqa: E402
from mpqfx.recipe import Recipe  # noqa: E402


def data_spec(args: argparse.Namespace) -> DataSpec:
    return DataSpec.parse("fashion-mnist", image_size=args.image_size, train_limit=args.train_images,
                          val_limit=args.val_images)


def train_float(args: argparse.Namespace) -> None:
    """A plain float training of the timm model (SGD, Nesterov, cosine), saved as a state dict."""
    spec = data_spec(args)
    model = create_model(args.model, **spec.model_kwargs()).to(memory_format=torch.channels_last)
    train = spec.split("train", model, train=True)
    loader = torch.utils.data.DataLoader(train, batch_size=128, shuffle=True, drop_last=True,
                                         generator=torch.Generator().manual_seed(0))
    steps = args.train_float * len(loader)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-5)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps, pct_start=0.15)
    model.train()
    start = time.perf_counter()
    for epoch in range(args.train_float):
        for i, (x, y) in enumerate(loader):
            loss = F.cross_entropy(model(x.to(memory_format=torch.channels_last)), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if i % 25 == 0:
                print(f"float epoch {epoch + 1}/{args.train_float} step {i}/{len(loader)} loss {loss.item():.3f} "
                      f"({time.perf_counter() - start:.0f} s)", flush=True)
    Path(args.float).parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), args.float)
    print(f"float model: {args.float} ({time.perf_counter() - start:.0f} s)")


def float_accuracy(model: torch.nn.Module, batches: list) -> float:
    """Top-1 of a plain module (eval mode, its own BatchNorm statistics) on ``batches``."""
    model.eval()
    with torch.no_grad():
        correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in batches)
    return correct / sum(len(y) for _, y in batches)


def kernel_budgets(args: argparse.Namespace, recipe: Recipe) -> tuple[int, dict[int, tuple[float, str]]]:
    """Conv/linear kernel parameters, and per average bit-width the kernel bytes (MCT's weights
    memory) with the mpqfx ``size=`` target of the same kernel bytes (plus biases and BatchNorm at 32 bits)."""
    from mpqfx.cost.report import bitops as cost_report

    model = create_model(args.model, **data_spec(args).model_kwargs())
    net = mpqfx.prepare(model, recipe, example_input=torch.zeros(1, 1, args.image_size, args.image_size))
    kernels = sum(l.params for l in net.layers)
    other_bits = cost_report(net, mpqfx.Policy.bypass(net.layers)).size_bits - 32 * kernels
    return kernels, {b: (kernels * b / 8, f"size={math.floor(kernels * b + other_bits)}bits") for b in args.bits}


def run_mpqfx(args: argparse.Namespace, recipe: Recipe, targets: list[str]) -> tuple[dict[str, float], float]:
    """One ``ptq`` compress run (no export) for every target, in ``--out`` (default: a temporary
    folder): top-1 per target, and its wall seconds; prints its CPU seconds per phase."""
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(args.out) if args.out else Path(scratch) / "run"
        result = mpqfx.compress(args.model, recipe, targets=targets, checkpoint=args.float, out=out,
                                val_images=args.val_images, export=False, progress=False)
    seconds = time.perf_counter() - start
    phases = ", ".join(f"{phase} {cpu:.1f}" for phase, cpu in result.cpu_seconds.items() if phase != "export")
    print(f"mpqfx ptq CPU seconds per phase: {phases}\n")
    return {r.target: r.accuracy for r in result.searched}, seconds


def run_mct(args: argparse.Namespace, calibration: list, held_out: list, weights_memory: float) -> tuple[float, float]:
    """MCT mixed-precision PTQ (its default IMX500 target: weights 2/4/8, activations 8) under
    ``weights_memory`` bytes: top-1 on the held-out images and the wall seconds of the quantization."""
    import model_compression_toolkit as mct

    model = create_model(args.model, **data_spec(args).model_kwargs())
    model.load_state_dict(torch.load(args.float))
    model.eval()

    def representative():
        for x, _ in calibration:
            yield [x.numpy()]

    start = time.perf_counter()
    quantized, _ = mct.ptq.pytorch_post_training_quantization(
        model, representative, target_resource_utilization=mct.core.ResourceUtilization(weights_memory=weights_memory),
        core_config=mct.core.CoreConfig(mixed_precision_config=mct.core.MixedPrecisionQuantizationConfig()))
    seconds = time.perf_counter() - start
    return float_accuracy(quantized.cpu(), held_out), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--float", required=True, help="float state dict (written by --train-float)")
    parser.add_argument("--train-float", type=int, default=0, metavar="EPOCHS")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--train-images", type=int, default=None)
    parser.add_argument("--val-images", type=int, default=2000)
    parser.add_argument("--calibration", type=int, default=1024, help="calibration images (both tools)")
    parser.add_argument("--bits", type=int, nargs="+", default=[8, 6, 4, 3], help="average kernel bits per target")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--out", default=None, help="keep mpqfx's run directory here")
    parser.add_argument("--skip", choices=("mpqfx", "mct"), default=None, help="leave out one tool's rows")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.train_float:
        train_float(args)
    recipe = Recipe.from_dict({"base": "ptq", "name": "ptq-a8", "quant": {"a_bits": [8]},  # MCT's activations: 8 bits
                               "strategy": {"options": {"images": args.calibration}},
                               "evaluate": {"bn_images": args.calibration, "uniform_bits": [8]},
                               "data": {"image_size": args.image_size}})
    spec = data_spec(args)
    model = create_model(args.model, **spec.model_kwargs())
    model.load_state_dict(torch.load(args.float))
    train = spec.split("train", model, train=False)
    calibration = batches_at(train, calibration_indices(train, args.calibration), 128)
    held_out = batches_at(spec.split("val", model, train=False), range(len(spec.split("val", model, train=False))), 256)
    print(header(f"post-training mixed precision: mpqfx ptq vs MCT, {args.model} {args.image_size}x{args.image_size}"))
    print(f"float: top-1 {float_accuracy(model, held_out):.2%} on {sum(len(y) for _, y in held_out)} held-out images "
          f"(its own BatchNorm statistics); {args.calibration} calibration images\n")
    kernels, budgets = kernel_budgets(args, recipe)
    targets = [target for _, target in budgets.values()]
    ours, our_seconds = run_mpqfx(args, recipe, targets) if args.skip != "mpqfx" else (dict.fromkeys(targets, math.nan), math.nan)
    try:
        import model_compression_toolkit  # noqa: F401
        have_mct = args.skip != "mct"
    except ImportError:
        have_mct = False
        print("MCT rows skipped: model-compression-toolkit is not installed (pip install 'mpqfx[peers]')\n")
    print(f"| kernel bits (avg) | weights memory | mpqfx ptq top-1 | MCT top-1 | MCT wall (s) |")
    print("|---:|---:|---:|---:|---:|")
    for bits, (memory, target) in budgets.items():
        mct_acc, mct_seconds = run_mct(args, calibration, held_out, memory) if have_mct else (math.nan, math.nan)
        print(f"| {bits} | {memory / 1e6:.3f} MB | {ours[target]:.2%} | {mct_acc:.2%} | {mct_seconds:.0f} |", flush=True)
    print(f"\nmpqfx ptq: one compress run for all {len(budgets)} targets (no export), {our_seconds:.0f} s wall; "
          f"{kernels} kernel parameters")


if __name__ == "__main__":
    main()
