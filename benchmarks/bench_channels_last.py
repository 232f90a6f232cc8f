"""What ``train.channels_last`` buys: one training step (forward + backward + SGD step) of the
float model and of the supernet under a fixed sampled policy, in the standard (NCHW) layout and
in channels_last (NHWC weights and batch), batch 64, 32x32, CPU.

The two layouts alternate; each speed-up is the median of per-pair ratios, so that machine drift
cancels out.
Usage: python benchmarks/bench_channels_last.py [model ...]
"""

from __future__ import annotations

import statistics
import sys

import timm
import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
import mpqfx  # noqa: E402
from _machine import header  # noqa: E402
from bench_train_step import BATCH, SIZE, make_step, time_alternating  # noqa: E402

MODELS = sys.argv[1:] or ["efficientnet_lite0", "mobilenetv2_100", "resnet18"]
LAYOUTS = {"NCHW": torch.contiguous_format, "NHWC": torch.channels_last}


def build(name: str, kind: str, example: torch.Tensor) -> torch.nn.Module:
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=10).train()
    if kind == "supernet":
        model = mpqfx.prepare(model, example_input=example[:2]).train()
        model.set_policy(mpqfx.Policy.sample(model, 0))
    return model


def main() -> None:
    print(header(f"training step (forward + backward + SGD step), batch {BATCH}, {SIZE}x{SIZE}, NCHW vs channels_last"))
    print("| model | float NCHW (ms) | float NHWC (ms) | speed-up | supernet NCHW (ms) | supernet NHWC (ms) | speed-up |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, 3, SIZE, SIZE, generator=gen)
    y = torch.randint(0, 10, (BATCH,), generator=gen)
    for name in MODELS:
        cells = []
        for kind in ("float", "supernet"):
            runs = {}
            for layout, fmt in LAYOUTS.items():
                model = build(name, kind, x).to(memory_format=fmt)
                runs[layout] = (make_step(model), x.contiguous(memory_format=fmt))
            times = time_alternating(runs, y)
            speedup = statistics.median(a / b for a, b in zip(times["NCHW"], times["NHWC"]))
            cells += [f"{statistics.median(times['NCHW']) * 1e3:.0f}", f"{statistics.median(times['NHWC']) * 1e3:.0f}",
                      f"{speedup:.2f}x"]
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
