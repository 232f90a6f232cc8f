"""The compression pipeline behind ``mpqfx compress``.

Phases (each timed, each resumable from the run directory): warm start (float training unless
weights are given), supernet training, search (one policy per target), evaluation (float,
uniform and searched policies after BatchNorm re-estimation), report, export.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
from torch.utils.data import DataLoader

from mpqfx.compress.report import write_report
from mpqfx.compress.warm_start import create_float_model, float_recipe
from mpqfx.cost.report import bitops
from mpqfx.data.spec import DataSpec, fixed_batches
from mpqfx.errors import MpqfxError
from mpqfx.evaluate import evaluate, recalibrated_bn
from mpqfx.export import deploy, export_onnx, save_integer_model
from mpqfx.prepare import prepare
from mpqfx.quant.policy import Policy
from mpqfx.recipe import Recipe
from mpqfx.rundir import RunDir, policy_filename, search_data
from mpqfx.search.constraints import parse_target
from mpqfx.search.run import search
from mpqfx.store import load_supernet, save_supernet
from mpqfx.supernet import ModelSpec, Supernet
from mpqfx.train.loop import Trainer
from mpqfx.train.metrics import phase_bar

DEFAULT_RECIPE = "quickstart"
DEFAULT_TARGETS = ("uniform:4", "uniform:3")


@dataclass
class PolicyResult:
    """One evaluated model: the float one, a uniform policy or a searched policy."""

    name: str
    kind: str  # "float", "uniform" or "searched"
    accuracy: float
    loss: float
    bitops: float
    size_bits: float
    compression: float
    target: str | None = None
    policy: Policy | None = None
    policy_file: str | None = None
    exports: dict[str, Any] = field(default_factory=dict)


@dataclass
class CompressResult:
    run_dir: Path
    results: list[PolicyResult]
    seconds: dict[str, float]

    @property
    def float_accuracy(self) -> float:
        return next(r.accuracy for r in self.results if r.kind == "float")

    @property
    def searched(self) -> list[PolicyResult]:
        return [r for r in self.results if r.kind == "searched"]


Log = Callable[[str], None]


def _resolve_recipe(recipe: Recipe | str | Path, overrides: dict[str, Any]) -> Recipe:
    recipe = Recipe.load(recipe)
    train = {k: v for k, v in overrides.items() if k in ("epochs", "batch_size", "seed") and v is not None}
    data = {k: v for k, v in overrides.items() if k in ("train_images", "val_images") and v is not None}
    if train:
        recipe = dataclasses.replace(recipe, train=dataclasses.replace(recipe.train, **train))
    if data:
        recipe = dataclasses.replace(recipe, data=dataclasses.replace(recipe.data, **data))
    return recipe.check()


def _run_root(out: str | Path | None, model: str, recipe: Recipe, resume: bool) -> RunDir:
    if out is None:
        if resume:
            raise MpqfxError("--resume needs --out DIR: the run directory to continue")
        out = Path("runs") / f"{model}-{recipe.name}-{datetime.now():%Y%m%d-%H%M%S}"
    run = RunDir(out)
    if resume and not run.run_json.is_file():
        raise MpqfxError(f"--resume: {str(run.root)!r} holds no run to continue (no run.json)")
    if not resume and run.run_json.is_file():
        raise MpqfxError(f"--out: {str(run.root)!r} already holds a run; pass --resume to continue it or choose another --out")
    return run


def compress(model: str, recipe: Recipe | str | Path = DEFAULT_RECIPE, data: str = "fashion-mnist",
             targets: Sequence[str] = DEFAULT_TARGETS, *, epochs: int | None = None, batch_size: int | None = None,
             out: str | Path | None = None, checkpoint: str | Path | None = None, pretrained: bool = False,
             device: str | None = None, resume: bool = False, seed: int | None = None, data_dir: str | None = None,
             train_images: int | None = None, val_images: int | None = None, export: bool = True,
             progress: bool = True, log: Log | None = None) -> CompressResult:
    """Compress a timm model: float warm start, supernet training, one search per target,
    evaluation, report and export, all in one run directory.

    Args:
        model: a timm model name.
        recipe: a shipped recipe name (``mpqfx recipes``), a YAML path or a :class:`Recipe`.
        data: ``"fashion-mnist"`` (embedded) or the root of an ImageFolder tree (train/, val/).
        targets: budgets, e.g. ``"uniform:4"``, ``"4.5G"``, ``"size=8x"``, ``"avg=3.5"``.
        epochs, batch_size, seed, train_images, val_images: override the recipe's values.
        out: the run directory (default ``runs/<model>-<recipe>-<timestamp>``).
        checkpoint / pretrained: float weights from a local file / timm's hub (skips the float phase).
        resume: continue the run in ``out`` from its last completed phase or checkpoint.
        export: write the integer safetensors and ONNX files of every searched policy.

    Example:
        >>> result = mpqfx.compress("efficientnet_lite0", targets=["uniform:4"])
        >>> result.float_accuracy, [(r.name, r.accuracy) for r in result.searched]
    """
    log = log or (lambda message: None)
    seconds: dict[str, float] = {}
    targets = list(targets) or list(DEFAULT_TARGETS)
    overrides = dict(epochs=epochs, batch_size=batch_size, seed=seed, train_images=train_images, val_images=val_images)
    run = _run_root(out, model, Recipe.load(recipe) if not resume else Recipe(), resume)
    if resume:
        meta = run.meta()
        if any(v is not None for v in overrides.values()):
            raise MpqfxError("--resume continues with the run's own settings; drop --epochs/--batch-size/--seed")
        recipe_obj = Recipe.load(run.recipe)
        spec = DataSpec.from_dict(meta["data"])
        model, targets = meta["model"]["name"], list(meta["targets"])
        checkpoint, pretrained = meta.get("checkpoint"), bool(meta.get("pretrained"))
    else:
        recipe_obj = _resolve_recipe(recipe, overrides)
        spec = DataSpec.parse(data, data_dir, train_limit=recipe_obj.data.train_images,
                              val_limit=recipe_obj.data.val_images, image_size=recipe_obj.data.image_size)
    torch.manual_seed(recipe_obj.train.seed)
    model_spec = ModelSpec(model, spec.model_kwargs())
    float_model = create_float_model(model, model_spec.kwargs, pretrained, checkpoint)
    example = torch.randn(1, *spec.input_size(float_model), generator=torch.Generator().manual_seed(0))
    net = prepare(float_model, recipe_obj, example_input=example, inplace=True, model_spec=model_spec)
    for target in targets:  # a malformed or infeasible target fails before any training
        parse_target(target, net).check_feasible(net)
    if not resume:
        run.root.mkdir(parents=True, exist_ok=True)
        run.recipe.write_text(recipe_obj.to_yaml(), encoding="utf-8")
        run.write_meta({"model": {"name": model, "kwargs": model_spec.kwargs}, "data": spec.to_dict(),
                        "recipe": recipe_obj.name, "targets": targets, "checkpoint": str(checkpoint) if checkpoint else None,
                        "pretrained": pretrained, "started": datetime.now().isoformat(timespec="seconds")})
    log(f"run directory: {run.root}")
    log(net.describe().splitlines()[0])
    train_set = spec.split("train", float_model, train=True)

    start = time.perf_counter()
    if not (pretrained or checkpoint) and recipe_obj.warm_start.epochs > 0:
        _warm_start(net, train_set, recipe_obj, run, device, resume, progress, log)
    seconds["warm start"] = time.perf_counter() - start

    start = time.perf_counter()
    extras = _train_supernet(net, train_set, recipe_obj, run, device, resume, progress, log)
    seconds["supernet training"] = time.perf_counter() - start
    net.eval()

    start = time.perf_counter()
    search_batches, search_calibration = search_data(run.root, net, recipe_obj.search.backend)
    searched: list[tuple[str, Policy, Path]] = []
    for target in targets:
        log(f"search {target} ({recipe_obj.search.backend})")
        found = search(net, target, data=search_batches, calibration=search_calibration,
                       indicators=extras.get("indicators"), traces=extras.get("traces")).policy
        searched.append((target, found, found.save(run.policies / policy_filename(target))))
    seconds["search"] = time.perf_counter() - start

    start = time.perf_counter()
    results = _evaluate_all(net, spec, float_model, recipe_obj, searched, progress, log)
    seconds["evaluation"] = time.perf_counter() - start

    start = time.perf_counter()
    if export:
        calibration = fixed_batches(spec.split("train", float_model, train=False), recipe_obj.evaluate.bn_images,
                                    recipe_obj.evaluate.batch_size, seed=2)
        for result in results:
            if result.kind == "searched":
                result.exports = _export(net, result, run, calibration, example, log)
    seconds["export"] = time.perf_counter() - start
    write_report(run, net, recipe_obj, results, seconds)
    log(f"report: {run.report_md}")
    return CompressResult(run.root, results, seconds)


def _warm_start(net: Supernet, train_set, recipe: Recipe, run: RunDir, device, resume: bool, progress: bool,
                log: Log) -> None:
    if run.float_weights.is_file():
        log(f"warm start: float weights from {run.float_weights}")
        loaded, _ = load_supernet(run.float_weights)
        net.load_state_dict(loaded.state_dict())
    else:
        log(f"warm start: {recipe.warm_start.epochs} float epoch(s)")
        trainer = Trainer(net, train_set, float_recipe(recipe), run_dir=run.root / "float", device=device, progress=progress)
        trainer.fit(resume=resume and trainer.checkpoint_path.is_file())
        save_supernet(net, run.float_weights)
    net.refit_quantizers()


def _train_supernet(net: Supernet, train_set, recipe: Recipe, run: RunDir, device, resume: bool, progress: bool,
                    log: Log) -> dict[str, Any]:
    if run.supernet.is_file():
        log(f"supernet: trained weights from {run.supernet}")
        loaded, extras = load_supernet(run.supernet)
        net.load_state_dict(loaded.state_dict())
        return extras
    log(f"supernet training: {recipe.strategy.name}, {recipe.train.epochs} epoch(s)")
    trainer = Trainer(net, train_set, recipe, run_dir=run.root, device=device, progress=progress)
    trainer.fit(resume=resume and trainer.checkpoint_path.is_file())
    state = trainer.strategy.state_dict()
    extras = {k: state[k] for k in ("traces", "indicators") if k in state}
    save_supernet(net, run.supernet, extras=extras)
    return extras


def _measured(net: Supernet, name: str, kind: str, policy: Policy | None, calibration, val_loader) -> PolicyResult:
    run_policy = policy if policy is not None else Policy.bypass(net.layers)
    with recalibrated_bn(net, run_policy, calibration):
        result = evaluate(net, run_policy, val_loader)
    cost = bitops(net, run_policy)
    return PolicyResult(name, kind, result.accuracy, result.loss, cost.total, cost.size_bits, cost.compression,
                        policy=policy)


def uniform_policies(net: Supernet, bits: Iterable[int]) -> list[tuple[str, Policy]]:
    """Uniform policies for ``bits`` that every layer allows, named "uniform W/A"."""
    out = []
    for b in bits:
        if all(b in l.w_bits and b in l.a_bits for l in net.layers if len(l.w_bits) > 1 or len(l.a_bits) > 1):
            out.append((f"uniform {b}/{b}", Policy.uniform(net, b)))
    return out


def _evaluate_all(net: Supernet, spec: DataSpec, float_model, recipe: Recipe, searched, progress: bool,
                  log: Log) -> list[PolicyResult]:
    ev = recipe.evaluate
    calibration = fixed_batches(spec.split("train", float_model, train=False), ev.bn_images, ev.batch_size, seed=2) \
        if ev.bn_images else []
    val_set = spec.split("val", float_model, train=False)
    val_loader = [(x, y) for x, y in DataLoader(val_set, batch_size=ev.batch_size, shuffle=False)]
    jobs = [("float", "float", None, None, None)]
    jobs += [(name, "uniform", p, None, None) for name, p in uniform_policies(net, ev.uniform_bits)]
    jobs += [(f"searched {t}", "searched", p, t, path) for t, p, path in searched]
    results = []
    with phase_bar(progress) as bar:
        task = bar.add_task("evaluation", total=len(jobs))
        for name, kind, policy, target, path in jobs:
            result = _measured(net, name, kind, policy, calibration, val_loader)
            result.target, result.policy_file = target, str(path) if path else None
            results.append(result)
            log(f"{name}: top-1 {result.accuracy:.2%} on {len(val_set)} held-out images")
            bar.update(task, advance=1)
    return results


def _export(net: Supernet, result: PolicyResult, run: RunDir, calibration, example, log: Log) -> dict[str, Any]:
    stem = Path(result.policy_file).stem
    with recalibrated_bn(net, result.policy, calibration, restore=True):
        integer = save_integer_model(net, result.policy, run.export / f"{stem}.safetensors")
        module = deploy(net, result.policy)
    check_input = calibration[0][0][:16] if calibration else example
    check = export_onnx(module, check_input, run.export / f"{stem}.onnx")
    log(f"export {stem}: {integer.name}, {stem}.onnx (onnxruntime vs PyTorch max |diff| {check.max_abs_diff:.2e})")
    return {"safetensors": str(integer), "onnx": str(run.export / f"{stem}.onnx"),
            "onnx_max_abs_diff": check.max_abs_diff, "onnx_relative_diff": check.relative,
            "onnx_optimized_max_abs_diff": check.optimized_max_abs_diff,
            "onnx_optimized_top1_agreement": check.optimized_top1_agreement}
