"""Parameter overhead of the BatchNorm sets (Transitional / switchable) for the default bit candidates,
as a percentage of the float model's parameters.

Usage: python benchmarks/bench_bn_overhead.py [model ...]
"""

from __future__ import annotations

import sys
import warnings

import timm

sys.path.insert(0, __file__.rsplit("/", 1)[0])
import mpqfx  # noqa: E402
from _machine import header  # noqa: E402
from mpqfx.recipe import BnMode, QuantConfig, Recipe  # noqa: E402

MODELS = sys.argv[1:] or ["efficientnet_lite0", "mobilenetv2_100", "resnet18"]


def extra_parameters(net: mpqfx.Supernet) -> int:
    """Parameters of every BN set beyond the original (the ``fp`` set)."""
    return sum(p.numel() for bn in net.transitional_bns() for key, s in bn.sets.items() if key != "fp"
               for p in s.parameters())


def main() -> None:
    print(header("BatchNorm-set parameter overhead, default bits {2..6} (depthwise without 2, first/last 8)"))
    print("| model | float params | transitional sets | transitional overhead | switchable overhead |")
    print("|---|---:|---:|---:|---:|")
    for name in MODELS:
        model = timm.create_model(name)
        base = sum(p.numel() for p in model.parameters())
        row = []
        for mode in (BnMode.TRANSITIONAL, BnMode.SWITCHABLE):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                net = mpqfx.prepare(model, Recipe(quant=QuantConfig(bn=mode)))
            sets = sum(len(bn.sets) - 1 for bn in net.transitional_bns())
            row.append((sets, extra_parameters(net) / base * 100))
        print(f"| {name} | {base / 1e6:.2f}M | {row[0][0]} | {row[0][1]:.2f}% | {row[1][1]:.2f}% |")


if __name__ == "__main__":
    main()
