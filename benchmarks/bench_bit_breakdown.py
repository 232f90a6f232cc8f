"""Where a low-bit policy loses its accuracy: on a finished run's supernet, uniform B/B against
the same policy with only weights or only activations at B (the rest at the top candidate), and
with one group of layers (depthwise convs, layers whose input is signed) kept at the top candidate.
Top-1 on the held-out split after BatchNorm re-estimation, as ``compress`` measures policies.

Usage: python benchmarks/bench_bit_breakdown.py runs/bench/accuracy-fix/mobilenetv2_100 --bits 4 3
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable

sys.path.insert(0, __file__.rsplit("/", 1)[0])
import mpqfx  # noqa: E402
from _machine import header  # noqa: E402
from mpqfx.compress.evaluation import PolicyEvaluator, PolicyResult  # noqa: E402
from mpqfx.data.spec import DataSpec  # noqa: E402
from mpqfx.graph.layer_info import LayerInfo, LayerKind, Role  # noqa: E402
from mpqfx.models import create_model  # noqa: E402
from mpqfx.quant.policy import nearest_bits  # noqa: E402
from mpqfx.rundir import RunDir  # noqa: E402
from mpqfx.store import load_supernet  # noqa: E402

Rule = Callable[[LayerInfo, int, int], tuple[int, int]]  # (layer, low bits, top bits) -> (w, a)


def _depthwise(layer: LayerInfo) -> bool:
    return layer.kind is LayerKind.DEPTHWISE


RULES: dict[str, Rule] = {
    "uniform B/B": lambda l, b, top: (b, b),
    "weights B, activations top": lambda l, b, top: (b, top),
    "weights top, activations B": lambda l, b, top: (top, b),
    "B/B, depthwise at top": lambda l, b, top: (top, top) if _depthwise(l) else (b, b),
    "B/B, depthwise weights at top": lambda l, b, top: (top, b) if _depthwise(l) else (b, b),
    "B/B, signed-input activations at top": lambda l, b, top: (b, top) if l.a_signed else (b, b),
}


def policy(net: mpqfx.Supernet, rule: Rule, bits: int) -> mpqfx.Policy:
    def layer_bits(l: LayerInfo) -> tuple[int, int]:
        top = max(max(l.w_bits), max(l.a_bits))
        w, a = rule(l, bits, top)
        return nearest_bits(l.w_bits, w), nearest_bits(l.a_bits, a)

    return mpqfx.Policy({l.name: layer_bits(l) for l in net.layers})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a finished compress run directory (supernet.pt, run.json)")
    parser.add_argument("--bits", type=int, nargs="+", default=[4, 3])
    args = parser.parse_args()
    run = Path(args.run)
    net, _ = load_supernet(run)
    net.eval()
    meta = RunDir(run).meta()
    model = meta["model"]
    evaluator = PolicyEvaluator(DataSpec.from_dict(meta["data"]), create_model(model["name"], **model["kwargs"]),
                                net.recipe)
    print(header(f"{model['name']}: where low-bit policies lose accuracy ({run})"))
    top = max(max(l.a_bits) for l in net.layers if l.role is Role.NORMAL)
    float_model = PolicyResult.from_dict(json.loads(RunDir(run).float_result.read_text()))
    bypass = evaluator.measure(net, "bypass", "float", None)
    print(f"float model {100 * float_model.accuracy:.2f}, the trained supernet's latent weights in bypass "
          f"{100 * bypass.accuracy:.2f}; top = each layer's highest candidate ({top} for the searchable layers)\n")
    print("| policy | B | GBitOPs | top-1 |\n|---|---:|---:|---:|")
    for bits in args.bits:
        for name, rule in RULES.items():
            result = evaluator.measure(net, name, "breakdown", policy(net, rule, bits))
            print(f"| {name} | {bits} | {result.bitops / 1e9:.4f} | {100 * result.accuracy:.2f} |", flush=True)


if __name__ == "__main__":
    main()
