"""Time mpqfx.prepare (trace + annotate + rewrite) per model; goal: efficientnet_lite0 <= 2 s on CPU.

Usage: python benchmarks/bench_prepare.py [--weight-quantizer lsq|lsq_channel|double_rounding] [model ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
import warnings

import timm
import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
import mpqfx  # noqa: E402
from _machine import header  # noqa: E402
from mpqfx.recipe import WeightQuantizer  # noqa: E402

MODELS = ["efficientnet_lite0", "resnet18", "mobilenetv2_100", "resnet50"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", default=MODELS)
    parser.add_argument("--weight-quantizer", default="lsq", choices=[q.value for q in WeightQuantizer])
    args = parser.parse_args()
    recipe = mpqfx.Recipe.load("default")
    recipe = dataclasses.replace(recipe, quant=dataclasses.replace(recipe.quant, weight_quantizer=WeightQuantizer(args.weight_quantizer)))
    print(header(f"prepare(): trace + annotate + rewrite, default 224x224 example input, weight quantizer {args.weight_quantizer}"))
    print("| model | layers | median of 5 (s) | min (s) |\n|---|---:|---:|---:|")
    for name in args.models:
        model = timm.create_model(name)
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                net = mpqfx.prepare(model, recipe)
            times.append(time.perf_counter() - t0)
        print(f"| {name} | {len(net.layers)} | {statistics.median(times):.3f} | {min(times):.3f} |")


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
