"""What an ImageNet run of the ``imagenet`` recipe costs: images/s of the float phase (strategy
``float``, the fine-tune after a re-initialised classifier) and of supernet training (K=3 + max
policy, float-teacher distillation), measured with the Trainer as ``mpqfx compress`` runs it on
random 3x224x224 images of 1000 classes, then the hours of the recipe's epochs over ImageNet-1k's
1,281,167 training images. Images/s: the batch over the median time of the training steps
after the first (timed around the strategy's step, as the Trainer's own images_per_s is).
Usage: python benchmarks/bench_imagenet_cost.py [--steps N] [--batch B] [model ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time

import timm
import torch
from torch.utils.data import TensorDataset

sys.path.insert(0, __file__.rsplit("/", 1)[0])
import mpqfx  # noqa: E402
from _machine import header  # noqa: E402
from mpqfx.compress.warm_start import float_recipe  # noqa: E402
from mpqfx.train import Trainer  # noqa: E402

IMAGENET_TRAIN = 1_281_167


def images_per_s(net: mpqfx.Supernet, recipe: mpqfx.Recipe, dataset, teacher=None) -> float:
    seconds: list[float] = []
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(net, dataset, recipe, run_dir=run_dir, teacher=teacher, progress=False)
        step = trainer.strategy.train_step

        def timed(images, labels):
            tick = time.perf_counter()
            out = step(images, labels)
            seconds.append(time.perf_counter() - tick)
            return out

        trainer.strategy.train_step = timed
        trainer.fit()
    return recipe.train.batch_size / statistics.median(seconds[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("models", nargs="*", default=["resnet18", "mobilenetv2_100", "efficientnet_lite0"])
    args = parser.parse_args()
    base = mpqfx.Recipe.load("imagenet")
    train = dataclasses.replace(base.train, batch_size=args.batch, epochs=1, warmup_epochs=0, log_every=1,
                                checkpoint_every=0, workers=0)
    recipe = dataclasses.replace(base, train=train).check()
    g = torch.Generator().manual_seed(0)
    dataset = TensorDataset(torch.randn(args.batch * args.steps, 3, 224, 224, generator=g),
                            torch.randint(0, 1000, (args.batch * args.steps,), generator=g))
    epochs = base.train.epochs
    print(header(f"recipe imagenet, 3x224x224, batch {args.batch}, {args.steps} steps per phase"))
    print(f"| model | float (images/s) | supernet (images/s) | float / supernet | {epochs} supernet epochs "
          f"(hours) | 1 float epoch (hours) |\n|---|---:|---:|---:|---:|---:|")
    for name in args.models:
        torch.manual_seed(0)
        net = mpqfx.prepare(timm.create_model(name), recipe, example_input=torch.randn(1, 3, 224, 224))
        teacher = net.float_teacher()
        float_ips = images_per_s(net, float_recipe(recipe), dataset)
        super_ips = images_per_s(net, recipe, dataset, teacher=teacher)
        print(f"| {name} | {float_ips:.2f} | {super_ips:.3f} | {float_ips / super_ips:.1f}x | "
              f"{IMAGENET_TRAIN * epochs / super_ips / 3600:,.0f} | {IMAGENET_TRAIN / float_ips / 3600:,.1f} |",
              flush=True)


if __name__ == "__main__":
    main()
