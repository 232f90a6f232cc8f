"""Training throughput of the ``oneshot`` Trainer on Fashion-MNIST (1x32x32, K=1, batch 64) with
``train.channels_last`` off and on: the median images/s of the logged steps (the first 5 left
out), the whole step as ``mpqfx compress`` runs it (sampling, IDM, fairness and QE losses,
gradient clipping, both optimizers).
Usage: python benchmarks/bench_trainer_throughput.py [--steps N] [model ...]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import timm
import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
import mpqfx  # noqa: E402
from _machine import header  # noqa: E402
from bench_supernet_settings import variant_recipe  # noqa: E402
from mpqfx.data.fashion_mnist import FashionMNIST  # noqa: E402
from mpqfx.train import Trainer  # noqa: E402

BATCH, SKIP = 64, 5


def images_per_s(name: str, dataset: FashionMNIST, channels_last: bool) -> float:
    recipe = variant_recipe(mpqfx.Recipe.load("oneshot"), {
        "train.epochs": 1, "train.warmup_epochs": 0, "train.batch_size": BATCH, "train.log_every": 1,
        "train.checkpoint_every": 0, "train.channels_last": channels_last, "strategy.samples": 1})
    torch.manual_seed(0)
    net = mpqfx.prepare(timm.create_model(name, num_classes=10, in_chans=1), recipe, example_input=torch.randn(2, 1, 32, 32))
    with tempfile.TemporaryDirectory() as run_dir:
        Trainer(net, dataset, recipe, run_dir=run_dir, progress=False).fit()
        records = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return statistics.median(json.loads(line)["images_per_s"] for line in records[SKIP:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("models", nargs="*", default=["efficientnet_lite0", "mobilenetv2_100", "resnet18"])
    args = parser.parse_args()
    dataset = FashionMNIST("train", train=True, limit=BATCH * args.steps)
    print(header(f"oneshot Trainer, Fashion-MNIST 1x32x32, batch {BATCH}, K=1, {args.steps} steps per layout"))
    print("| model | NCHW (images/s) | channels_last (images/s) | speed-up |\n|---|---:|---:|---:|")
    for name in args.models:
        nchw, nhwc = (images_per_s(name, dataset, cl) for cl in (False, True))
        print(f"| {name} | {nchw:.0f} | {nhwc:.0f} | {nhwc / nchw:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
