"""Accuracy on Fashion-MNIST: float, uniform 4/4 and 3/3 from the supernet, and searched policies
at the BitOPs of uniform 4/4 and 3/3, with no retraining after search; each searched policy is
compared with the median of random policies of equal or higher BitOPs.

One ``mpqfx.compress`` run per model (recipe ``oneshot`` with the settings below), then every
extra search backend on the same trained supernet. Accuracies are top-1 on the 10,000 test
images after BatchNorm re-estimation, as ``compress`` reports them. Goals: searched at the 4/4
budget within 1.0 point of float, at the 3/3 budget within 2.5 points, and each searched policy
at least as accurate as the median of 5 random policies of equal or higher BitOPs.

Usage: python benchmarks/bench_accuracy.py --model resnet18 [--float-epochs 8] [--epochs 6] ...
       (an interrupted run continues where it stopped: the run directories are resumed, and the
       time columns are those of the whole compress run, over every process that worked on it;
       --float-from DIR starts from the float phase of an earlier run of the same model;
       --search-only searches every --backend on the finished runs in --out, no training)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import statistics
import sys
from pathlib import Path
from typing import NamedTuple

sys.path.insert(0, __file__.rsplit("/", 1)[0])
import mpqfx  # noqa: E402
from _machine import header  # noqa: E402
from _recipe_variants import float_start, variant_recipe  # noqa: E402
from mpqfx.cli.options import parse_options  # noqa: E402
from mpqfx.compress.evaluation import PolicyEvaluator, PolicyResult  # noqa: E402
from mpqfx.compress.timing import PHASES  # noqa: E402
from mpqfx.data.spec import DataSpec  # noqa: E402
from mpqfx.io import atomic_write_text  # noqa: E402
from mpqfx.models import create_model  # noqa: E402
from mpqfx.recipe import Recipe, StrategySpec  # noqa: E402
from mpqfx.rundir import RunDir, search_data  # noqa: E402
from mpqfx.search.run import uses_data  # noqa: E402
from mpqfx.store import load_supernet, save_supernet  # noqa: E402

TARGETS = ("uniform:4", "uniform:3")
GOALS = {"uniform:4": 1.0, "uniform:3": 2.5}  # points below float


def bench_recipe(args: argparse.Namespace, backend: str, options: dict) -> Recipe:
    base = Recipe.load("oneshot")
    strategy = dict(base.strategy.options.__dict__, samples=args.samples, schedule_every=args.schedule_every)
    if args.uniform_share is not None:
        strategy["uniform_share"] = args.uniform_share
    recipe = dataclasses.replace(
        base, name="bench-oneshot",
        strategy=StrategySpec("oneshot", strategy),
        train=dataclasses.replace(base.train, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                                  warmup_epochs=0, quant_lr=args.quant_lr, checkpoint_every=200, log_every=20,
                                  distill=dataclasses.replace(base.train.distill, teacher=args.teacher)),
        warm_start=dataclasses.replace(base.warm_start, epochs=args.float_epochs, lr=args.float_lr),
        search=dataclasses.replace(base.search, backend=backend, options=options),
        evaluate=dataclasses.replace(base.evaluate, bn_images=args.bn_images, search_images=args.search_images,
                                     uniform_bits=(6, 4, 3)),
        data=dataclasses.replace(base.data, train_images=args.train_images, val_images=None),
    )
    return variant_recipe(recipe, parse_options(tuple(args.set))).check()


def seed_from_float_phase(previous: Path, out: Path, name: str, recipe: Recipe) -> None:
    """Start the run in ``out`` from the float phase of an earlier run of the same model and data
    (its float weights and measured float accuracy); the supernet phase then runs with ``recipe``.
    The quantizers are fitted again, as ``compress`` does after its float phase, so that a float
    phase kept from older code starts the supernet as the current code would; a ``recipe`` with
    other bit-widths or BatchNorm sets prepares the float weights again."""
    src, dst = RunDir(previous), RunDir(out)
    meta = src.meta()
    net = float_start(src.float_weights, recipe, name, meta["model"]["kwargs"], DataSpec.from_dict(meta["data"]))
    out.mkdir(parents=True)
    save_supernet(net, dst.float_weights)
    shutil.copy(src.float_result, dst.float_result)
    if "seconds" in meta:  # only the float phase carries over: the supernet phases are this run's
        meta["seconds"] = {kind: {k: v for k, v in phases.items() if k == "warm start"}
                           for kind, phases in meta["seconds"].items()}
    dst.write_meta({**meta, "recipe": recipe.name, "targets": list(TARGETS), "float_from": str(previous)})
    atomic_write_text(dst.recipe, recipe.to_yaml())


def random_median(net, evaluator, bitops: float, count: int, seed: int) -> tuple[float, list[float]]:
    """Median accuracy of the first ``count`` random policies with BitOPs >= ``bitops``."""
    accuracies, draw = [], seed
    while len(accuracies) < count:
        policy = mpqfx.Policy.sample(net, draw)
        draw += 1
        if mpqfx.bitops(net, policy).total >= bitops:
            accuracies.append(evaluator.measure(net, f"random {draw}", "random", policy).accuracy)
    return statistics.median(accuracies), accuracies


class RunFigures(NamedTuple):
    """What a bench row takes from a compress run."""

    accuracy: dict[str, float]  # by evaluated name: "float", "uniform 4/4", ...
    searched: dict[str, PolicyResult]  # the run's own searched policies, by target
    seconds: dict[str, float]  # wall seconds per phase
    cpu_seconds: dict[str, float] | None  # CPU seconds per phase (None: not recorded)


def train_and_search(name: str, out: Path, args: argparse.Namespace, backend: str, options: dict) -> RunFigures:
    """The ``compress`` run (resumed when ``out`` holds one)."""
    recipe = bench_recipe(args, backend, options)
    if args.float_from and not (out / "run.json").is_file():
        seed_from_float_phase(Path(args.float_from) / name, out, name, recipe)
    resume = (out / "run.json").is_file()
    result = mpqfx.compress(name, recipe, targets=TARGETS, out=out, export=False, resume=resume,
                            log=lambda m: print(f"  {name}: {m}", flush=True))
    accuracy = {r.name: r.accuracy for r in result.results}
    searched = {target: next(r for r in result.searched if r.target == target) for target in TARGETS}
    return RunFigures(accuracy, searched, result.seconds, result.cpu_seconds)


def finished_run(out: Path) -> RunFigures:
    """The figures of a finished run, read from its report (--search-only), without its searched
    policies, so that every backend searches."""
    report = json.loads(RunDir(out).report_json.read_text())
    accuracy = {p["name"]: p["accuracy"] for p in report["policies"]}
    return RunFigures(accuracy, {}, report["seconds"], report.get("cpu_seconds"))  # reports before 1c466ff: no CPU


def bench_model(name: str, args: argparse.Namespace, backends: list[tuple[str, dict]]) -> list[dict]:
    out = Path(args.out) / name
    primary = backends[0]
    accuracy, from_compress, seconds, cpu_seconds = (finished_run(out) if args.search_only
                                                     else train_and_search(name, out, args, *primary))
    timing = {"wall": sum(seconds.values()), "cpu": sum(cpu_seconds.values()) if cpu_seconds else None, **seconds}
    net, extras = load_supernet(out)
    net.eval()
    meta = RunDir(out).meta()
    evaluator = PolicyEvaluator(DataSpec.from_dict(meta["data"]), create_model(name, **meta["model"]["kwargs"]), net.recipe)
    rows = []
    for backend, options in backends:
        for target in TARGETS:
            if (backend, options) == primary and target in from_compress:
                searched, search_seconds = from_compress[target], None
            else:
                data, calibration = search_data(out, net) if uses_data(net, backend, options) else ([], [])
                found = mpqfx.search(net, target, backend=backend, options=options, data=data, calibration=calibration,
                                     indicators=extras.get("indicators"), traces=extras.get("traces"))
                searched = evaluator.measure(net, f"searched {target}", "searched", found.policy)
                search_seconds = found.seconds
            median, randoms = random_median(net, evaluator, searched.bitops, args.random, seed=1000)
            bits = target.split(":")[1]
            rows.append({"model": name, "backend": f"{backend} {json.dumps(options) if options else ''}".strip(),
                         "target": target, "float": accuracy["float"], "uniform": accuracy[f"uniform {bits}/{bits}"],
                         "searched": searched.accuracy, "bitops": searched.bitops, "policy": searched.policy.to_dict(),
                         "random_median": median, "randoms": randoms, "search_seconds": search_seconds, "timing": timing,
                         "settings": f"searched again on {out}" if args.search_only else settings(args)})
            print(f"  {name} {backend} {target}: searched {searched.accuracy:.4f} random median {median:.4f}", flush=True)
    return rows


def settings(args: argparse.Namespace) -> str:
    float_phase = f"float phase of {args.float_from}" if args.float_from else f"{args.float_epochs} float"
    return (f"{float_phase} + {args.epochs} supernet epochs, {args.train_images or 60000} images, "
            f"K={args.samples}, lr {args.float_lr:g}/{args.lr:g}, quant lr {args.quant_lr:g}"
            + (f", uniform share {args.uniform_share:g}" if args.uniform_share else "")
            + (", float teacher" if args.teacher else "")
            + "".join(f", {item}" for item in args.set))


def table(rows: list[dict]) -> str:
    draws = "/".join(str(n) for n in sorted({len(r["randoms"]) for r in rows}))
    lines = [header("Fashion-MNIST accuracy (oneshot, 32x32, bits {2..6}, first/last 8; top-1 % on the 10,000 test images)"),
             f"| model | search | target | float | uniform | searched (GBitOPs) | gap to float | random median ({draws}) | goals |",
             "|---|---|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        gap = 100 * (r["float"] - r["searched"])
        met = gap <= GOALS[r["target"]] and r["searched"] >= r["random_median"]
        lines.append(f"| {r['model']} | {r['backend']} | {r['target']} | {100 * r['float']:.2f} | {100 * r['uniform']:.2f} | "
                     f"{100 * r['searched']:.2f} ({r['bitops'] / 1e9:.3f}) | {gap:+.2f} | {100 * r['random_median']:.2f} | "
                     f"{'met' if met else 'missed'} |")
    lines += ["", "| model | settings | compress wall (min) | compress CPU (min) | " + " | ".join(PHASES) + " |",
              "|---|---|---:|---:|" + "---:|" * len(PHASES)]
    for model in dict.fromkeys(r["model"] for r in rows):
        row = next(r for r in rows if r["model"] == model)
        t = row["timing"]
        cpu = "-" if t["cpu"] is None else f"{t['cpu'] / 60:.1f}"
        lines.append(f"| {model} | {row['settings']} | {t['wall'] / 60:.1f} | {cpu} | "
                     + " | ".join(f"{t.get(p, 0) / 60:.1f}" for p in PHASES) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", nargs="+", default=["resnet18", "mobilenetv2_100", "efficientnet_lite0"])
    parser.add_argument("--float-epochs", type=int, default=4)
    parser.add_argument("--float-lr", type=float, default=0.05)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=0.02)
    parser.add_argument("--quant-lr", type=float, default=1e-4)
    parser.add_argument("--teacher", action="store_true", help="distil sampled policies from the float model")
    parser.add_argument("--float-from", default=None, metavar="DIR",
                        help="reuse the float phase of DIR/<model> (an earlier --out of this script)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--samples", type=int, default=1, help="K sampled policies per step besides the max one")
    parser.add_argument("--schedule-every", type=int, default=100)
    parser.add_argument("--uniform-share", type=float, default=None,
                        help="share of sampled policies that are uniform (default: the recipe's)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a dotted recipe key, e.g. strategy.sandwich=true or quant.a_bits=[3,4,5,6] (repeatable)")
    parser.add_argument("--train-images", type=int, default=None)
    parser.add_argument("--bn-images", type=int, default=1024)
    parser.add_argument("--search-images", type=int, default=512)
    parser.add_argument("--random", type=int, default=5)
    parser.add_argument("--backend", action="append", default=None, metavar="NAME[:KEY=VALUE,...]",
                        help="search backends (repeatable; the first one runs inside compress); default ilp:objective=sensitivity")
    parser.add_argument("--out", default="runs/bench-accuracy")
    parser.add_argument("--json", default=None, help="also write the rows as JSON here")
    parser.add_argument("--search-only", action="store_true",
                        help="no training: search every backend on the finished runs in --out and measure them")
    parser.add_argument("--table-from", nargs="+", default=None, metavar="JSON",
                        help="print one table from the JSON rows of earlier runs instead of running")
    args = parser.parse_args()
    if args.table_from:
        print(table([row for path in args.table_from for row in json.loads(Path(path).read_text())]))
        return
    backends = []
    for spec in args.backend or ["ilp:objective=sensitivity"]:
        name, _, opts = spec.partition(":")
        backends.append((name, parse_options(tuple(o for o in opts.split(",") if o))))
    rows = [row for model in args.model for row in bench_model(model, args, backends)]
    if args.json:
        atomic_write_text(Path(args.json), json.dumps(rows, indent=1))
    print(table(rows))


if __name__ == "__main__":
    main()
