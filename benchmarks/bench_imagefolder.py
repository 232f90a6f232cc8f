"""Is the data loader the bottleneck on an ImageFolder? Images/s of the loader alone (timm's
training transform at the model's input size, decoding the files, with ``--workers`` loader
processes), of the float phase and of supernet training (the Trainer as ``mpqfx compress`` runs
them, timed around the strategy's step), on a generated ImageFolder of JPEG files larger than the
input, at 160 px and 224 px. The loader must deliver at least twice the supernet's images/s.
Usage: python benchmarks/bench_imagefolder.py [--images N] [--batch B] [--workers W] [--steps S] [model]
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np
import timm
import torch
from PIL import Image
from torch.utils.data import DataLoader

import sys
sys.path.insert(0, __file__.rsplit("/", 1)[0])
import mpqfx  # noqa: E402
from _machine import header  # noqa: E402
from bench_imagenet_cost import images_per_s  # noqa: E402
from mpqfx.compress.warm_start import float_recipe  # noqa: E402
from mpqfx.data.spec import DataSpec  # noqa: E402

CLASSES = 10
FILE_SIZE = (320, 256)  # width, height of the generated JPEG files: larger than either input size


def write_imagefolder(root: Path, per_class: int) -> None:
    """``train/`` and ``val/`` with ``CLASSES`` classes of noisy colour images, ``per_class`` each."""
    rng = np.random.default_rng(0)
    for split, count in (("train", per_class), ("val", max(1, per_class // 4))):
        for c in range(CLASSES):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (FILE_SIZE[1], FILE_SIZE[0], 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.jpg", quality=90)


def loader_images_per_s(dataset, batch: int, workers: int) -> float:
    loader = DataLoader(dataset, batch_size=batch, shuffle=True, drop_last=True, num_workers=workers,
                        persistent_workers=False)
    it = iter(loader)
    next(it)  # workers started, first batch decoded
    start, seen = time.perf_counter(), 0
    for images, _ in it:
        seen += images.shape[0]
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=48, help="training images per class")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4, help="training steps per phase")
    parser.add_argument("model", nargs="?", default="resnet18")
    args = parser.parse_args()
    base = mpqfx.Recipe.load("oneshot")
    train = dataclasses.replace(base.train, batch_size=args.batch, epochs=1, warmup_epochs=0, log_every=1,
                                checkpoint_every=0, workers=args.workers, max_steps=args.steps)
    recipe = dataclasses.replace(base, train=train).check()
    print(header(f"ImageFolder, {CLASSES} classes x {args.images} JPEG files of {FILE_SIZE[0]}x{FILE_SIZE[1]}, "
                 f"{args.model}, recipe oneshot, batch {args.batch}, {args.workers} loader workers, "
                 f"{args.steps} steps per phase"))
    print("| input | loader alone (images/s) | float (images/s) | supernet (images/s) | loader / supernet |\n"
          "|---|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        write_imagefolder(root, args.images)
        spec = DataSpec.parse(str(root))
        for size in (160, 224):
            torch.manual_seed(0)
            model = timm.create_model(args.model, num_classes=CLASSES,
                                      pretrained_cfg_overlay=dict(input_size=(3, size, size)))
            dataset = spec.split("train", model, train=True)
            loader = loader_images_per_s(dataset, args.batch, args.workers)
            net = mpqfx.prepare(model, recipe, example_input=torch.randn(1, 3, size, size))
            float_ips = images_per_s(net, float_recipe(recipe), dataset)
            super_ips = images_per_s(net, recipe, dataset)
            print(f"| {size}x{size} | {loader:.1f} | {float_ips:.1f} | {super_ips:.1f} | {loader / super_ips:.1f}x |",
                  flush=True)


if __name__ == "__main__":
    main()
