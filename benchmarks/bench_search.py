"""Search cost: exact ILP solve time (goal: resnet18 <= 0.1 s, resnet50 <= 0.5 s with 5x5 bit pairs per
layer, BitOPs <= uniform 4/4; and resnet50 under LIMPQ's own two constraints, BitOPs of W3A4 and a
12.2x smaller model, alpha 2) and the greedy search on efficientnet_lite0 with a 512-image evaluation set, with and
without reusing the activations upstream of the changed layer (same policy, ratio of wall times).

Usage: python benchmarks/bench_search.py [--images 512] [--image-size 32] [--greedy-target 0.98] [--no-greedy]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import warnings

import timm
import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
import mpqfx  # noqa: E402
from _machine import header  # noqa: E402
from mpqfx.quant.policy import Policy  # noqa: E402
from mpqfx.recipe import GraphConfig, Recipe  # noqa: E402


def quiet_prepare(model: torch.nn.Module, recipe: Recipe = Recipe()) -> mpqfx.Supernet:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return mpqfx.prepare(model, recipe)


ILP_CASES = [("resnet18", "uniform:4", 1.0), ("resnet50", "uniform:4", 1.0),
             ("resnet50", "bitops=uniform:3/4,size=12.2x", 2.0)]  # the last: LIMPQ's published search


def bench_ilp(models: list[str]) -> None:
    print(header("exact ILP (PuLP + bundled CBC, gap 0), LIMPQ objective on the initial steps, bits {2..6}"))
    print("| model | target | alpha | layers | binary variables | status | CBC solve, median of 5 (s) | "
          "search() wall, median (s) |")
    print("|---|---|---:|---:|---:|---|---:|---:|")
    nets = {name: quiet_prepare(timm.create_model(name)) for name in models}
    for name, target, alpha in [case for case in ILP_CASES if case[0] in nets]:
        net = nets[name]
        variables = sum(len(l.w_bits) * len(l.a_bits) for l in net.layers)
        solves, walls = [], []
        for _ in range(5):
            result = mpqfx.search(net, target, backend="ilp", options={"alpha": alpha})
            solves.append(result.details["solve_seconds"])
            walls.append(result.seconds)
        print(f"| {name} | {target} | {alpha:g} | {len(net.layers)} | {variables} | {result.details['status']} | "
              f"{statistics.median(solves):.3f} | {statistics.median(walls):.3f} |")


def bench_greedy(images: int, image_size: int, fraction: float) -> None:
    torch.manual_seed(0)
    model = timm.create_model("efficientnet_lite0", in_chans=1, num_classes=10)
    net = quiet_prepare(model, Recipe(graph=GraphConfig(input_size=(1, image_size, image_size))))
    generator = torch.Generator().manual_seed(0)
    batches = [(torch.randn(128, 1, image_size, image_size, generator=generator),
                torch.randint(0, 10, (128,), generator=generator)) for _ in range(images // 128)]
    net.eval()
    with torch.no_grad(), net.use_policy(Policy.max(net)):
        net(batches[0][0])  # initialise the activation steps before timing
    budget = fraction * mpqfx.bitops(net, Policy.max(net)).total
    print(header(f"greedy search, efficientnet_lite0 (1x{image_size}x{image_size}, 10 classes), "
                 f"{images} evaluation images, BitOPs <= {fraction:g} x max policy"))
    print("| activations | iterations | candidates evaluated | batch forwards | nodes recomputed | wall (s) |")
    print("|---|---:|---:|---:|---:|---:|")
    walls, chosen = {}, {}
    for reuse in (False, True):
        result = mpqfx.search(net, {"bitops": budget}, backend="greedy", data=batches,
                              options={"reuse_activations": reuse})
        d = result.details
        walls[reuse], chosen[reuse] = result.seconds, result.policy
        fraction_done = f"{d['recomputed_fraction'] * 100:.1f}%" if "recomputed_fraction" in d else "100%"
        print(f"| {'reused upstream of the changed layer' if reuse else 'full forward per candidate'} | "
              f"{d['iterations']} | {d['evaluations']} | {d['batch_forwards']} | {fraction_done} | {result.seconds:.1f} |")
    assert chosen[True] == chosen[False], "reusing activations changed the searched policy"
    print(f"\nSpeed-up from reusing activations: {walls[False] / walls[True]:.2f}x (same policy found).")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--greedy-target", type=float, default=0.98, help="BitOPs budget as a fraction of max")
    parser.add_argument("--ilp-models", nargs="*", default=["resnet18", "resnet50"])
    parser.add_argument("--no-greedy", action="store_true", help="only the ILP timings (the greedy part takes minutes)")
    args = parser.parse_args()
    bench_ilp(args.ilp_models)
    if not args.no_greedy:
        print()
        bench_greedy(args.images, args.image_size, args.greedy_target)


if __name__ == "__main__":
    main()
