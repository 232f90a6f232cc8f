"""Training throughput of the fine-tune (``mpqfx finetune``: one policy in its deployed form, no
sampling) against the float model's, on the same machine, batch and images, in one run.

Each model is timm's at the quickstart input (Fashion-MNIST 1x32x32, 10 classes, batch 64). The
float model trains with the recipe's optimizer, loss and gradient clipping; the fine-tune is the
``FinetuneLoop`` step of the supernet's uniform 4/4 policy, in its BatchNorm warm-up (batch
statistics) and after the statistics are frozen (the rest of the fine-tune). The three take turns,
``--steps`` steps each per round, the order rotating every round; each figure is the median over
the rounds of images/s, and the ratios are ratios of those medians.
Usage: nice -n 10 python benchmarks/bench_finetune_throughput.py [--rounds R] [--steps N] [model ...]
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import timm
import torch
from timm.optim import create_optimizer_v2
from torch import nn
from torch.utils.data import TensorDataset

sys.path.insert(0, __file__.rsplit("/", 1)[0])
import mpqfx  # noqa: E402
from _machine import header  # noqa: E402
from mpqfx import Policy  # noqa: E402
from mpqfx.data.fashion_mnist import FashionMNIST  # noqa: E402
from mpqfx.evaluate import recalibrated_bn  # noqa: E402
from mpqfx.finetune.model import folded_model  # noqa: E402
from mpqfx.finetune.train import FinetuneLoop, FinetuneSettings  # noqa: E402
from mpqfx.train.losses import task_loss  # noqa: E402

BATCH, BITS = 64, 4
Step = Callable[[torch.Tensor, torch.Tensor], float]


def float_step(model: nn.Module, settings: FinetuneSettings) -> Step:
    """One training step of the float model with the fine-tune's optimizer, loss and clipping."""
    optimizer = create_optimizer_v2(model, opt=settings.optimizer, lr=settings.lr, weight_decay=settings.weight_decay,
                                    momentum=settings.momentum)

    def step(images: torch.Tensor, labels: torch.Tensor) -> float:
        model.train()
        loss = task_loss(model(images), labels, settings.label_smoothing)
        loss.backward()
        if settings.grad_clip is not None:
            nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], settings.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    return step


def contestants(name: str, images: torch.Tensor, labels: torch.Tensor, folder: Path) -> dict[str, Step]:
    """The float model's step and the fine-tune's, warming up and frozen, each on its own copy."""
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=10, in_chans=1)
    net = mpqfx.prepare(model, "quickstart", example_input=images[:2]).eval()
    with torch.no_grad():  # every step the fine-tune starts from, set on real images
        for bits in (8, BITS):
            net.set_policy(Policy.uniform(net, bits))
            net(images[:BATCH])
    net.set_policy(Policy.bypass(net))
    policy, calibration = Policy.uniform(net, BITS), [(images[:BATCH], labels[:BATCH])]
    settings = FinetuneSettings.from_recipe(net.recipe, epochs=1, lr=None)
    steps: dict[str, Step] = {"float": float_step(copy.deepcopy(model), settings)}
    for phase in ("warm-up", "frozen"):
        with recalibrated_bn(net, policy, calibration):
            folded = folded_model(net, policy, calibration)
        if phase == "frozen":
            folded.freeze_batchnorm(calibration)
        loop = FinetuneLoop(folded, TensorDataset(images, labels), calibration, settings, folder / phase,
                            torch.device("cpu"))
        loop._set_lr()
        steps[phase] = loop.train_step
    return steps


def measure(steps: dict[str, Step], batches: list[tuple[torch.Tensor, torch.Tensor]], rounds: int) -> dict[str, float]:
    """Median images/s over ``rounds`` rounds of each step on ``batches``, taking turns."""
    names = list(steps)
    for name in names:  # once untimed: first-call allocations
        steps[name](*batches[0])
    rates: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            tick = time.perf_counter()
            for x, y in batches:
                steps[name](x, y)
            rates[name].append(len(batches) * BATCH / (time.perf_counter() - tick))
    return {name: statistics.median(values) for name, values in rates.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=6, help="steps of each contestant per round")
    parser.add_argument("models", nargs="*", default=["resnet18", "mobilenetv2_100", "efficientnet_lite0"])
    args = parser.parse_args()
    data = FashionMNIST("train", train=True, limit=BATCH * args.steps)
    images = torch.stack([data[i][0] for i in range(len(data))])
    labels = torch.as_tensor(data.labels)
    batches = [(images[i:i + BATCH], labels[i:i + BATCH]) for i in range(0, len(labels), BATCH)]
    print(header(f"fine-tune vs float training, Fashion-MNIST 1x32x32, batch {BATCH}, uniform {BITS}/{BITS} policy, "
                 f"{args.rounds} rounds x {args.steps} steps each"))
    print(f"load average at start: {' '.join(f'{v:.2f}' for v in os.getloadavg())}\n")
    print("| model | float (images/s) | fine-tune, BN warm-up (images/s) | fine-tune, BN frozen (images/s) | "
          "warm-up / float | frozen / float |\n|---|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as folder:
        for name in args.models:
            rate = measure(contestants(name, images, labels, Path(folder) / name), batches, args.rounds)
            print(f"| {name} | {rate['float']:.0f} | {rate['warm-up']:.0f} | {rate['frozen']:.0f} | "
                  f"{rate['warm-up'] / rate['float']:.2f}x | {rate['frozen'] / rate['float']:.2f}x |", flush=True)
    print(f"\nload average at end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
