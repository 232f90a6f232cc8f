"""How much a wider ILP candidate set could buy at one budget: on a finished run's supernet, the
LIMPQ optimum (Eq. 4) for several alphas (the weight of the weight indicators), under every
(weight floor, activation floor) pair, and for alpha 1 also the next best optima (no-good cuts).
Each distinct policy is scored as the ``ilp`` backend scores its floored candidates (loss on the
run's search images after BatchNorm re-estimation) and measured on the held-out split as
``compress`` reports policies. The best held-out accuracy among them bounds what any rule that
picks from these candidates can reach. The uniform policies the search is compared with
(mpqfx/search/candidates.py) are listed too, with alpha "uniform".

Usage: python benchmarks/bench_search_headroom.py runs/bench/ab-base/efficientnet_lite0 --target uniform:3
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _machine import header  # noqa: E402
from mpqfx.compress.evaluation import PolicyEvaluator  # noqa: E402
from mpqfx.data.spec import DataSpec  # noqa: E402
from mpqfx.models import create_model  # noqa: E402
from mpqfx.rundir import RunDir, search_data  # noqa: E402
from mpqfx.search.constraints import constraints_from  # noqa: E402
from mpqfx.search.candidates import Meter, uniform_baselines  # noqa: E402
from mpqfx.search.ilp import fixed_costs, floor_pairs, floored_layer, limpq_coefficients  # noqa: E402
from mpqfx.search.solver import SolverError, solve_ilp  # noqa: E402
from mpqfx.store import load_supernet  # noqa: E402
from mpqfx.train.limpq import importance_indicators  # noqa: E402


def candidates(net, indicators, constraints, alphas: list[float], top_k: int) -> dict:
    """{policy: [(alpha, weight floor, activation floor, rank), ...]} for every distinct optimum,
    with every way it was found (the first one names it in the table)."""
    offsets = fixed_costs(net)
    found: dict = {}
    for alpha in alphas:
        coefficients = limpq_coefficients(net.layers, indicators, alpha)
        for w_floor, a_floor in floor_pairs(net.layers, split=True):
            layers = [floored_layer(l, w_floor, a_floor) for l in net.layers]
            ranked: list = []
            for rank in range(top_k if alpha == 1.0 else 1):
                try:
                    solution = solve_ilp(layers, coefficients, constraints, *offsets, exclude=ranked)
                except SolverError:
                    break  # these floors do not meet the budget, or no further optimum
                ranked.append(solution.policy)
                found.setdefault(solution.policy, []).append((alpha, w_floor, a_floor, rank))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a finished compress run directory (supernet.pt, run.json)")
    parser.add_argument("--target", default="uniform:3")
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.25, 0.5, 1.0, 2.0, 4.0])
    parser.add_argument("--top-k", type=int, default=3, help="optima per floor pair at alpha 1")
    parser.add_argument("--json", default=None, help="also write the rows as JSON here")
    args = parser.parse_args()
    net, extras = load_supernet(args.run)
    net.eval()
    meta = RunDir(args.run).meta()
    model = meta["model"]
    evaluator = PolicyEvaluator(DataSpec.from_dict(meta["data"]), create_model(model["name"], **model["kwargs"]),
                                net.recipe)
    batches, calibration = search_data(args.run, net)
    constraints = constraints_from(args.target, net)
    found = candidates(net, extras.get("indicators") or importance_indicators(net), constraints, args.alphas, args.top_k)
    for name, policy in uniform_baselines(net, constraints):
        w, a = name.split()[1].split("/")
        found.setdefault(policy, []).append(("uniform", int(w), int(a), 0))
    meter = Meter(net, batches, calibration)
    print(header(f"{model['name']}: ILP candidates at {args.target} ({args.run})"))
    print(f"{len(found)} distinct candidates\n")
    print("| alpha | weight floor | activation floor | rank | GBitOPs | search loss | held-out top-1 |\n"
          "|---:|---:|---:|---:|---:|---:|---:|", flush=True)
    rows = []
    for policy, ways in found.items():
        alpha, w_floor, a_floor, rank = ways[0]
        search_loss = meter.measure([policy])[policy].loss
        held_out = evaluator.measure(net, "candidate", "headroom", policy)
        rows.append({"alpha": alpha, "w_floor": w_floor, "a_floor": a_floor, "rank": rank,
                     "bitops": held_out.bitops, "search_loss": search_loss, "accuracy": held_out.accuracy,
                     "backend_candidate": any(way[0] == 1.0 and way[3] == 0 for way in ways)})
        print(f"| {alpha} | {w_floor} | {a_floor} | {rank} | {held_out.bitops / 1e9:.4f} | {search_loss:.4f} | "
              f"{100 * held_out.accuracy:.2f} |", flush=True)
    default = min((r for r in rows if r["backend_candidate"]), key=lambda r: r["search_loss"], default=None)
    lowest = min(rows, key=lambda r: r["search_loss"])
    best = max(rows, key=lambda r: r["accuracy"])
    picked = f"{100 * default['accuracy']:.2f}" if default else "-"
    print(f"\nheld-out top-1 of the ilp backend's pick (alpha 1, optima only): {picked}; of the lowest search "
          f"loss: {100 * lowest['accuracy']:.2f}; best of all: {100 * best['accuracy']:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
