"""One training step (forward + backward + SGD step) of the supernet under a fixed sampled policy,
as a ratio to the float model's step; goal <= 1.3x (batch 64, 32x32, CPU).

Float and supernet steps alternate; the ratio is the median of the per-pair ratios, so that
machine drift (this 2-core box varies +-15% between runs) cancels out.
Usage: python benchmarks/bench_train_step.py [--fwd-bwd] [model ...]
(--fwd-bwd: forward + backward only, no optimizer step.)
"""

from __future__ import annotations

import statistics
import sys
import time

import timm
import torch
import torch.nn.functional as F

sys.path.insert(0, __file__.rsplit("/", 1)[0])
import mpqfx  # noqa: E402
from _machine import header  # noqa: E402

FWD_BWD = "--fwd-bwd" in sys.argv
MODELS = [a for a in sys.argv[1:] if not a.startswith("--")] or ["efficientnet_lite0", "resnet18"]
BATCH, SIZE, STEPS, WARMUP = 64, 32, 20, 3


def make_step(model):
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step(x, y):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        if not FWD_BWD:
            opt.step()
    return step


def time_alternating(runs: dict, labels: torch.Tensor) -> dict[str, list[float]]:
    """Seconds of each ``name: (step, input)`` run per round, the runs taking turns so that
    machine drift hits them alike; the first ``WARMUP`` rounds are left out."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for i in range(WARMUP + STEPS):
        for name, (step, inp) in runs.items():
            t0 = time.perf_counter()
            step(inp, labels)
            if i >= WARMUP:
                times[name].append(time.perf_counter() - t0)
    return times


def main() -> None:
    what = "forward + backward" if FWD_BWD else "training step (forward + backward + SGD step)"
    print(header(f"{what}, batch {BATCH}, {SIZE}x{SIZE}, fixed sampled policy"))
    print("| model | float step (ms) | supernet step (ms) | ratio |\n|---|---:|---:|---:|")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, 3, SIZE, SIZE, generator=gen)
    y = torch.randint(0, 10, (BATCH,), generator=gen)
    for name in MODELS:
        torch.manual_seed(0)
        float_model = timm.create_model(name, num_classes=10).train()
        net = mpqfx.prepare(float_model, example_input=x[:2]).train()
        net.set_policy(mpqfx.Policy.sample(net, 0))
        times = time_alternating({"float": (make_step(float_model), x), "supernet": (make_step(net), x)}, y)
        ratio = statistics.median(s / f for f, s in zip(times["float"], times["supernet"]))
        f, s = statistics.median(times["float"]), statistics.median(times["supernet"])
        print(f"| {name} | {f * 1e3:.0f} | {s * 1e3:.0f} | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
