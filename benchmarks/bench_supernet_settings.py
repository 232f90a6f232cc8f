"""Supernet-training settings compared on a short schedule: each variant trains the supernet from
the same float weights (the float phase of an earlier ``bench_accuracy.py`` run) for one full
cosine schedule over a fixed subset of the training images, then reports the float (bypass) and
uniform 6/6, 4/4 and 3/3 top-1 on the 10,000 test images after BatchNorm re-estimation, as
``compress`` measures them.

A variant is NAME or NAME:KEY=VALUE,... with dotted recipe keys, e.g.
``teacher:train.distill.teacher=true`` or ``shared-bn:quant.bn=shared``; ``train.distill.teacher``
distils from the float weights (``Supernet.float_teacher``); ``train.epochs=3`` passes over the
subset three times. One candidate bit-width (``quant.w_bits=[4],quant.a_bits=[4]``) trains that
single policy: plain quantization-aware training, the reference a supernet's uniform policy is
measured against. ``strategy=float`` trains the float model on from the same weights with the
variant's schedule (``float-ref:strategy=float,train.epochs=12``): the float reference for a
supernet trained that long. A short schedule ranks settings for a longer one only roughly
(docs/benchmarks.md).

Usage: python benchmarks/bench_supernet_settings.py --model mobilenetv2_100 --from runs/bench/accuracy \\
           base teacher:train.distill.teacher=true ...
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import Subset

sys.path.insert(0, __file__.rsplit("/", 1)[0])
import mpqfx  # noqa: E402
from _machine import header  # noqa: E402
from _recipe_variants import float_start, variant_recipe  # noqa: E402
from mpqfx.cli.options import parse_options  # noqa: E402
from mpqfx.compress.evaluation import PolicyEvaluator  # noqa: E402
from mpqfx.data.spec import DataSpec  # noqa: E402
from mpqfx.graph.layer_info import Role  # noqa: E402
from mpqfx.models import create_model  # noqa: E402
from mpqfx.recipe import Recipe  # noqa: E402
from mpqfx.rundir import RunDir  # noqa: E402
from mpqfx.train.loop import Trainer  # noqa: E402

UNIFORM = (6, 4, 3)


def run_variant(run: Path, name: str, overrides: dict, args: argparse.Namespace) -> dict:
    meta = RunDir(run).meta()
    kwargs = meta["model"]["kwargs"]
    base = Recipe.load(run / "recipe.yaml")
    recipe = variant_recipe(base, {"train.epochs": 1, "train.warmup_epochs": 0, "train.max_steps": None,
                                   "train.checkpoint_every": 0, **overrides})
    spec = DataSpec.from_dict(meta["data"])
    net = float_start(run / "float.pt", recipe, args.model, kwargs, spec)
    float_model = create_model(args.model, **kwargs)
    train = spec.split("train", float_model, train=True)
    train = Subset(train, torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[: args.images].tolist())
    teacher = net.float_teacher() if recipe.train.distill.teacher else None
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        Trainer(net, train, recipe, run_dir=tmp, teacher=teacher, progress=False).fit()
    seconds = time.perf_counter() - start
    net.eval()
    evaluator = PolicyEvaluator(spec, float_model, recipe)
    allowed = [b for b in UNIFORM if all(b in l.w_bits and b in l.a_bits for l in net.layers if l.role is Role.NORMAL)]
    if recipe.strategy.name == "float":
        allowed = []  # the quantizers were not trained
    accuracy = {b: evaluator.measure(net, f"uniform {b}/{b}", "uniform", mpqfx.Policy.uniform(net, b)).accuracy
                for b in allowed}  # a single-candidate variant has one uniform policy
    accuracy["float"] = evaluator.measure(net, "float", "float", None).accuracy
    return {"variant": name, "overrides": overrides, "steps": recipe.train.epochs * (len(train) // recipe.train.batch_size),
            "train_seconds": seconds, "accuracy": accuracy}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variants", nargs="+", metavar="NAME[:KEY=VALUE,...]")
    parser.add_argument("--model", default="mobilenetv2_100")
    parser.add_argument("--from", dest="source", default="runs/bench/accuracy",
                        help="a bench_accuracy.py --out directory holding <model>/float.pt")
    parser.add_argument("--images", type=int, default=25600,
                        help="training images (a fixed subset; one pass unless a variant sets train.epochs)")
    parser.add_argument("--json", default=None, help="append each variant's row here (JSON lines)")
    args = parser.parse_args()
    run = Path(args.source) / args.model
    print(header(f"{args.model}: supernet settings, {args.images} images, one cosine schedule from {run}/float.pt"))
    print("| variant | overrides | steps | train (s) | float | " + " | ".join(f"uniform {b}/{b}" for b in UNIFORM) + " |")
    print("|---|---|---:|---:|---:|" + "---:|" * len(UNIFORM))
    for spec in args.variants:
        name, _, options = spec.partition(":")
        row = run_variant(run, name, parse_options(tuple(o for o in options.split(",") if o)), args)
        if args.json:
            with open(args.json, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
        cells = " | ".join(f"{100 * row['accuracy'][b]:.2f}" if b in row["accuracy"] else "-" for b in ("float", *UNIFORM))
        print(f"| {name} | {json.dumps(overrides) if (overrides := row['overrides']) else '-'} | {row['steps']} | "
              f"{row['train_seconds']:.0f} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
