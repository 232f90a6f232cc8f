"""Time mpqfx.prepare (trace + annotate + rewrite) per model; goal: efficientnet_lite0 <= 2 s on CPU.

Usage: python benchmarks/bench_prepare.py [model ...]
"""

from __future__ import annotations

import statistics
import sys
import time
import warnings

import timm
import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
import mpqfx  # noqa: E402
from _machine import header  # noqa: E402

MODELS = sys.argv[1:] or ["efficientnet_lite0", "resnet18", "mobilenetv2_100", "resnet50"]


def main() -> None:
    print(header("prepare(): trace + annotate + rewrite, default 224x224 example input"))
    print("| model | layers | median of 5 (s) | min (s) |\n|---|---:|---:|---:|")
    for name in MODELS:
        model = timm.create_model(name)
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                net = mpqfx.prepare(model)
            times.append(time.perf_counter() - t0)
        print(f"| {name} | {len(net.layers)} | {statistics.median(times):.3f} | {min(times):.3f} |")


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
