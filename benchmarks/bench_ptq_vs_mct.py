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
import dataclasses
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
            if i % 100 == 0:
                print(f"float epoch {epoch + 1}/{args.train_float} step {i}/{len(loader)} loss {loss.item():.3f} "
                      f"({time.perf_counter() - start:.0f} s)", flush=True)
    Path(args.float).parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), args.float)
    print(f"float model: {args.float} ({time.perf_counter() - start:.0f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--float", required=True, help="float state dict (written by --train-float)")
    parser.add_argument("--train-float", type=int, default=0, metavar="EPOCHS")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--train-images", type=int, default=None)
    parser.add_argument("--val-images", type=int, default=2000)
    args = parser.parse_args()
    if args.train_float:
        train_float(args)


if __name__ == "__main__":
    main()
