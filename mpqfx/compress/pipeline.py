"""The compression pipeline behind ``mpqfx compress``.

Phases (each timed, each resumable from the run directory): warm start (float weights from
timm, a local file, a given module, or a float training phase; then the float model's
accuracy), supernet training, search (one policy per target), evaluation (uniform and searched
policies after BatchNorm re-estimation), report, export.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist
from torch import nn

from mpqfx.compress.evaluation import PolicyEvaluator, PolicyResult, uniform_policies
from mpqfx.compress.report import write_report
from mpqfx.compress.timing import PhaseTimes
from mpqfx.compress.warm_start import Adapted, create_float_model, float_recipe, timm_spec_of, warm_start_record
from mpqfx.data.census import census_warnings, data_census
from mpqfx.data.spec import DataSpec, search_indices
from mpqfx.errors import Interrupted, MpqfxError
from mpqfx.export.double_rounding_file import save_double_rounding
from mpqfx.export.run import export_policy_files
from mpqfx.io import atomic_write_text
from mpqfx.prepare import prepare
from mpqfx.quant.policy import Policy
from mpqfx.recipe import COMPRESS_RECIPE, Recipe, WeightQuantizer
from mpqfx.registry import STRATEGIES
from mpqfx.rundir import RunDir, search_data, searched_policy_path
from mpqfx.search.constraints import candidate_bits, parse_target
from mpqfx.search.candidates import describe_selection
from mpqfx.search.progress import SearchProgress
from mpqfx.search.run import search_many
from mpqfx.store import load_supernet, save_supernet
from mpqfx.supernet import ModelSpec, Supernet
from mpqfx.train.calibrate import calibrate, calibration_batches, float_start_problem
from mpqfx.train.checkpoint import CheckpointError, reason
from mpqfx.train.distributed import barrier, init_from_env, is_main, on_main, solo_group
from mpqfx.train.loop import Trainer
from mpqfx.train.metrics import phase_bar

DEFAULT_TARGETS = ("uniform:4", "uniform:3")  # those of them whose bit-widths are candidates of the recipe

Log = Callable[[str], None]


@dataclass
class CompressResult:
    """What ``compress`` measured and wrote: every evaluated model, the time per phase, the run directory."""

    run_dir: Path
    results: list[PolicyResult]
    seconds: dict[str, float]  # wall seconds per phase, over every process of a resumed run
    cpu_seconds: dict[str, float]  # process CPU seconds per phase, counted the same way

    @property
    def float_accuracy(self) -> float:
        return next(r.accuracy for r in self.results if r.kind == "float")

    @property
    def searched(self) -> list[PolicyResult]:
        return [r for r in self.results if r.kind == "searched"]


class ExportFailed(MpqfxError):
    """The run finished and its report is written, but the export of some policies failed;
    ``result`` holds the run, and each failed row's ``export_error`` says why."""

    exit_code = 1  # the CLI's: not bad input (2), a run that failed in part

    def __init__(self, result: CompressResult):
        self.result = result
        failed = "; ".join(f"policy {Path(r.policy_file).stem} ({r.export_error})" for r in result.searched
                           if r.export_error)
        super().__init__(f"export failed for {failed}; the other policies were exported and "
                         f"{result.run_dir / 'report.md'} reports every row")


def _resolve_recipe(recipe: Recipe | str | Path, overrides: dict[str, Any]) -> Recipe:
    recipe = Recipe.load(recipe)
    train = {k: v for k, v in overrides.items() if k in ("epochs", "batch_size", "seed", "lr") and v is not None}
    data = {k: v for k, v in overrides.items()
            if k in ("train_images", "val_images", "skip_bad_images") and v is not None}
    if train:
        recipe = dataclasses.replace(recipe, train=dataclasses.replace(recipe.train, **train))
    if data:
        recipe = dataclasses.replace(recipe, data=dataclasses.replace(recipe.data, **data))
    if overrides.get("float_epochs") is not None:
        recipe = dataclasses.replace(recipe, warm_start=dataclasses.replace(recipe.warm_start,
                                                                            epochs=overrides["float_epochs"]))
    if overrides.get("search_images") is not None:
        recipe = dataclasses.replace(recipe, evaluate=dataclasses.replace(recipe.evaluate,
                                                                          search_images=overrides["search_images"]))
    return recipe.check()


def _run_dir(out: str | Path | None, model_name: str, recipe_name: str, resume: bool) -> RunDir:
    """The run directory, checked writable; a resumed one without the temporary files of a killed run."""
    if out is None:
        if resume:
            raise MpqfxError("--resume needs --out DIR: the run directory to continue")
        out = Path("runs") / f"{model_name}-{recipe_name}-{datetime.now():%Y%m%d-%H%M%S}"
    run = RunDir(out)
    if resume and not run.run_json.is_file():
        raise MpqfxError(f"--resume: {str(run.root)!r} holds no run to continue (no run.json)")
    if not resume and run.run_json.is_file():
        raise MpqfxError(f"--out: {str(run.root)!r} already holds a run; pass --resume to continue it or choose another --out")
    if resume:
        run.remove_temp_files()
    if run.root.exists() and not run.root.is_dir():
        raise MpqfxError(f"--out: {str(run.root)!r} is a file, not a directory")
    try:
        run.root.mkdir(parents=True, exist_ok=True)
        probe = run.root / ".mpqfx-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise MpqfxError(f"--out: cannot write to {str(run.root)!r} ({exc.strerror})") from None
    return run


def compress(model: str | nn.Module | None, recipe: Recipe | str | Path = COMPRESS_RECIPE, data: str = "fashion-mnist",
             targets: Sequence[str] = (), *, epochs: int | None = None, batch_size: int | None = None,
             out: str | Path | None = None, checkpoint: str | Path | None = None, pretrained: bool = False,
             device: str | None = None, resume: bool = False, seed: int | None = None, data_dir: str | None = None,
             train_images: int | None = None, val_images: int | None = None, search_images: int | None = None,
             skip_bad_images: bool | None = None, float_epochs: int | None = None, lr: float | None = None,
             export: bool = True, finetune_epochs: int | None = None, progress: bool = True,
             log: Log | None = None) -> CompressResult | None:
    """Compress a timm model: float warm start, supernet training, one search per target,
    evaluation, report and export, all in one run directory.

    Args:
        model: a timm model name, or a timm model instance (``timm.create_model(...)``) whose
            weights are the float starting point (no float training phase runs); a resumed run
            reads it from its run directory.
        recipe: a shipped recipe name (``mpqfx recipes``), a YAML path or a :class:`Recipe`.
        data: ``"fashion-mnist"`` (embedded) or the root of an ImageFolder tree (train/, val/).
        targets: budgets, e.g. ``"uniform:4"``, ``"4.5G"``, ``"size=8x"``, ``"avg=3.5"``; default:
            ``uniform:4`` and ``uniform:3`` where those are candidate bit-widths.
        epochs, batch_size, seed, train_images, val_images, search_images, skip_bad_images, float_epochs, lr:
            override the recipe's values (``search_images``: the training images candidate policies are
            measured on in the search; ``train_images``/``val_images`` draw a seeded class-stratified sample;
            ``skip_bad_images``: leave out image files that do not decode instead of stopping;
            ``float_epochs``: ``warm_start.epochs``; ``lr``: the supernet's ``train.lr``).
        out: the run directory (default ``runs/<model>-<recipe>-<timestamp>``).
        checkpoint / pretrained: float weights from a local file / timm's hub, loaded by timm, which
            re-initialises a classifier of another size and adapts the input conv to the data's
            channels; then a float fine-tune of ``warm_start.epochs`` runs (none when the weights fit).
        resume: continue the run in ``out`` from its last completed phase or checkpoint, with the
            settings it was started with.
        export: write the integer safetensors and ONNX files of every searched policy.
        finetune_epochs: after the export, fine-tune every searched policy in its deployed form for
            that many epochs (``mpqfx finetune``, into RUN/finetuned/<policy>/); the report gets three
            rows per policy: the supernet, the fine-tuned model, its exported file.

    Under ``torchrun`` every process calls it: all of them train (``train.batch_size`` is the global
    batch), rank 0 alone writes the run directory, searches, evaluates, reports and exports, and the
    others return None once it is done. If an export fails, the report is written all the same
    (the row says why) and :class:`ExportFailed` is raised, carrying the result.

    Example:
        >>> result = mpqfx.compress("efficientnet_lite0", targets=["uniform:4"])
        >>> result.float_accuracy, [(r.name, r.accuracy) for r in result.searched]
    """
    device = init_from_env(device)  # under torchrun: every rank runs this, rank 0 alone writes the run directory
    main = is_main()
    solo = solo_group()
    log = log if log is not None and main else (lambda message: None)
    module = model if isinstance(model, nn.Module) else None
    overrides = dict(epochs=epochs, batch_size=batch_size, seed=seed, train_images=train_images, val_images=val_images,
                     search_images=search_images, skip_bad_images=skip_bad_images, float_epochs=float_epochs, lr=lr)
    if resume:
        if any(v is not None for v in overrides.values()):
            raise MpqfxError("--resume continues with the run's own settings; drop --epochs/--batch-size/--seed/"
                             "--train-images/--val-images/--search-images/--skip-bad-images/--float-epochs/--lr")
        run = on_main(lambda: _run_dir(out, "", "", resume=True))
        meta = run.meta()
        recipe_obj = Recipe.load(run.recipe)
        spec = DataSpec.from_dict(meta["data"])
        model_spec = ModelSpec(meta["model"]["name"], meta["model"]["kwargs"])
        targets, source = list(meta["targets"]), meta["weights"]
        checkpoint = meta.get("checkpoint")
        finetune_epochs = meta.get("finetune_epochs")
    else:
        if model is None:
            raise MpqfxError("compress: pass a timm model name or a timm model instance")
        recipe_obj = _resolve_recipe(recipe, overrides)
        spec = DataSpec.parse(data, data_dir, train_limit=recipe_obj.data.train_images,
                              val_limit=recipe_obj.data.val_images, image_size=recipe_obj.data.image_size,
                              seed=recipe_obj.train.seed, skip_bad_images=recipe_obj.data.skip_bad_images)
        model_spec = timm_spec_of(module, spec.model_kwargs()) if module is not None else ModelSpec(model, spec.model_kwargs())
        targets = list(targets)
        source = _weights_source(module, pretrained, checkpoint)
    torch.manual_seed(recipe_obj.train.seed)
    have_float = resume and run.float_weights.is_file()
    if source == "module" and module is None and not have_float:
        raise MpqfxError(f"--resume: {str(run.root)!r} started from a module whose weights were not saved yet; "
                         "pass that module to compress() again")
    if module is not None and not have_float:
        float_model, adapted = copy.deepcopy(module), Adapted()
    else:  # a resumed run reads its float weights from float.pt, never from the hub again
        float_model, adapted = create_float_model(model_spec.name, model_spec.kwargs,
                                                  source == "pretrained" and not have_float,
                                                  checkpoint if source == "checkpoint" and not have_float else None)
    # what the warm start does (a resumed run keeps what its start decided)
    warm = ((run.meta().get("warm_start") if resume else None)
            or warm_start_record(source, adapted, recipe_obj, checkpoint))
    calibrates = not getattr(STRATEGIES.get(recipe_obj.strategy.name), "trains", True)  # post-training (ptq)
    problem = float_start_problem(warm) if calibrates else None
    if problem:
        raise MpqfxError(problem)
    example = torch.randn(1, *spec.input_size(float_model), generator=torch.Generator().manual_seed(0))
    net = prepare(float_model, recipe_obj, example_input=example, inplace=True, model_spec=model_spec)
    if not targets:
        w_bits, a_bits = candidate_bits(net)
        targets = [t for t in DEFAULT_TARGETS if int(t[-1]) in w_bits and int(t[-1]) in a_bits] or [f"uniform:{max(w_bits)}"]
    for target in targets:  # a malformed or infeasible target fails before anything is written
        parse_target(target, net).check_feasible(net)
    if not resume:
        def start() -> RunDir:  # on rank 0, which names the run directory for every rank
            run = _run_dir(out, model_spec.name, recipe_obj.name, resume=False)
            atomic_write_text(run.recipe, recipe_obj.to_yaml())
            run.write_meta({"model": {"name": model_spec.name, "kwargs": model_spec.kwargs}, "data": spec.to_dict(),
                            "input_size": list(example.shape[1:]), "recipe": recipe_obj.name, "targets": targets,
                            "weights": source, "checkpoint": str(checkpoint) if checkpoint else None,
                            "warm_start": warm, "finetune_epochs": finetune_epochs,
                            "started": datetime.now().isoformat(timespec="seconds")})
            return run

        run = on_main(start)
    log(f"run directory: {run.root}")
    if solo is not None:
        log(f"{dist.get_world_size()} processes ({dist.get_backend()}) train, each on 1/{dist.get_world_size()} of "
            f"every batch of {recipe_obj.train.batch_size}; this one (rank 0) alone writes the run directory")
    if resume:
        log(f"resuming: the run continues with {run.restart_point()}")
    log(net.describe().splitlines()[0])
    train_set = spec.split("train", float_model, train=True)
    evaluator = PolicyEvaluator(spec, float_model, recipe_obj)
    census = _image_counts(net, train_set, evaluator)
    for line in census_warnings(census):
        log(f"warning: {line}")
    net.to(device)  # the float model's evaluation, the search and the evaluations run where training does
    times = PhaseTimes(run, resume, record=main)
    command = f"mpqfx compress --out {run.root} --resume"
    trained = False
    try:
        with times.phase("warm start"):
            _warm_start(net, warm, train_set, recipe_obj, run, device, resume, times, progress, log)
            barrier()  # rank 0 has written float.pt
            float_result = _float_result(net, evaluator, run, log) if main else None
        with times.phase("supernet training"):
            extras = (_calibrate(net, evaluator.train_set, recipe_obj, run, log) if calibrates else
                      _train_supernet(net, train_set, recipe_obj, run, device, resume, times, progress, log))
        trained = True
        if not main:  # rank 0 alone searches, evaluates, reports and exports; this rank waits below, then ends
            return None
        net.to(device).eval()  # a resumed run that trained nothing has its weights from the CPU
        with times.phase("search"):
            searched = _search(net, targets, recipe_obj, run, extras, progress, log)
        with times.phase("evaluation"):
            results = [float_result] + _evaluate(net, evaluator, recipe_obj, searched, progress, log)
        with times.phase("export"):
            if export:
                _export_all(net, results, recipe_obj, run, evaluator, progress, log)
        finetuned = []
        if finetune_epochs:
            with times.phase("fine-tune"):
                finetuned = _finetune_all(net, results, finetune_epochs, run, evaluator, train_set, device, progress, log)
        write_report(run, net, recipe_obj, results, times.wall, times.cpu, census, finetuned)
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted during {times.current or 'setup'}; `{command}` continues the run with "
                          f"{run.restart_point()}") from None
    except CheckpointError as exc:
        if not exc.then_resume:
            raise
        raise CheckpointError(f"{exc}: `{command}`") from None
    finally:
        if solo is not None and trained:  # the other ranks end once rank 0 has written the run directory
            dist.barrier(group=solo)
    log(f"report: {run.report_md}")
    result = CompressResult(run.root, results, times.wall, times.cpu)
    if any(r.export_error for r in result.searched):
        raise ExportFailed(result)
    return result


def _image_counts(net: Supernet, train_set, evaluator: PolicyEvaluator) -> dict[str, Any]:
    """The classes and the images of each class each use of the data actually got (the indices
    drawn; rundir.search_data draws the same search images), and the files left out."""
    evaluate = net.recipe.evaluate
    search = search_indices(evaluator.train_set, evaluate.search_images, evaluate.bn_images)
    return data_census(train_set, evaluator.val_batches.dataset, search, evaluator.calibration_indices,
                       evaluator.spec.root)


def _weights_source(module: nn.Module | None, pretrained: bool, checkpoint: str | Path | None) -> str:
    given = [name for name, on in (("a module", module is not None), ("--pretrained", pretrained),
                                   ("--checkpoint", checkpoint)) if on]
    if len(given) > 1:
        raise MpqfxError(f"{' and '.join(given)} both give the float weights: pass one of them")
    return "module" if module is not None else "pretrained" if pretrained else "checkpoint" if checkpoint else "train"


def _warm_start(net: Supernet, warm: dict[str, Any], train_set, recipe: Recipe, run: RunDir, device, resume: bool,
                times: PhaseTimes, progress: bool, log: Log) -> None:
    """Bring ``net`` to its float starting point and keep it in float.pt (what a resumed run reloads):
    float training from random weights, or a fine-tune of weights whose classifier (or input conv)
    timm adapted to the data, for ``warm["float_epochs"]`` epochs."""
    if run.float_weights.is_file():
        log(f"warm start: float weights from {run.float_weights}")
        loaded, _ = load_supernet(run.float_weights)
        net.load_state_dict(loaded.state_dict())
        return
    if warm["float_epochs"] > 0:
        log(f"warm start: {warm['float_epochs']} float epoch(s)")
        trainer = Trainer(net, train_set, float_recipe(recipe), run_dir=run.root / "float", device=device,
                          progress=progress, log=lambda message: log(f"warm start: {message}"))
        trainer.fit(resume=resume and trainer.has_checkpoint)
        times.add("warm start", trainer.carried)
        net.refit_quantizers()  # the quantizers follow the trained float weights
    log(f"warm start: {warm['note']}")
    if is_main():
        save_supernet(net, run.float_weights)


def _float_result(net: Supernet, evaluator: PolicyEvaluator, run: RunDir, log: Log) -> PolicyResult:
    """The float model's accuracy, measured once after the warm start (kept in float.json)."""
    if run.float_result.is_file():
        return PolicyResult.from_dict(json.loads(run.float_result.read_text(encoding="utf-8")))
    result = evaluator.measure(net, "float", "float", None)
    atomic_write_text(run.float_result, json.dumps(result.to_dict(), indent=1))
    log(f"float: top-1 {result.accuracy:.2%} on {evaluator.val_images} held-out images")
    return result


def _train_supernet(net: Supernet, train_set, recipe: Recipe, run: RunDir, device, resume: bool, times: PhaseTimes,
                    progress: bool, log: Log) -> dict[str, Any]:
    if run.supernet.is_file():
        log(f"supernet: trained weights from {run.supernet}")
        loaded, extras = load_supernet(run.supernet)
        net.load_state_dict(loaded.state_dict())
        return extras
    log(f"supernet training: {recipe.strategy.name}, {recipe.train.epochs} epoch(s)")
    teacher = net.float_teacher() if recipe.train.distill.teacher else None  # net holds the float weights here
    trainer = Trainer(net, train_set, recipe, run_dir=run.root, device=device, teacher=teacher, progress=progress,
                      log=lambda message: log(f"supernet training: {message}"))
    trainer.fit(resume=resume and trainer.has_checkpoint)
    times.add("supernet training", trainer.carried)
    state = trainer.strategy.state_dict()
    extras = {k: state[k] for k in ("traces", "indicators") if k in state}
    if is_main():
        save_supernet(net, run.supernet, extras=extras)
    return extras


def _calibrate(net: Supernet, train_set, recipe: Recipe, run: RunDir, log: Log) -> dict[str, Any]:
    """Post-training calibration (strategy ``calibrate``) instead of supernet training, kept in supernet.pt."""
    if run.supernet.is_file():
        log(f"calibration: steps from {run.supernet}")
        net.load_state_dict(load_supernet(run.supernet)[0].state_dict())
        return {}
    options = recipe.strategy.options
    calibrate(net, calibration_batches(train_set, options, recipe.evaluate.batch_size, log), options, log)
    if is_main():
        save_supernet(net, run.supernet)
    return {}


SELECTION_FILE = "search-selection.json"


def _search(net: Supernet, targets: list[str], recipe: Recipe, run: RunDir, extras: dict[str, Any], progress: bool,
            log: Log) -> list[tuple[str, Policy, Path, str | None]]:
    """One policy per target, written to policies/; a resumed run keeps the policies it already found.
    The searches share one backend instance (search_many), so budget-independent statistics are computed once.
    Each comes with the line saying which candidate won on the search images (kept in
    search-selection.json, so a resumed run reports the same)."""
    paths = {target: searched_policy_path(run.policies, target) for target in targets}
    missing = [target for target in targets if not paths[target].is_file()]
    found: dict[str, Policy] = {t: Policy.load(paths[t]).validate(net.layers) for t in targets if t not in missing}
    verdicts = run.root / SELECTION_FILE  # which candidate won, kept for a resumed run's report
    kept = json.loads(verdicts.read_text()) if verdicts.is_file() else {}
    chosen: dict[str, str | None] = {t: kept.get(t) if t not in missing else None for t in targets}
    if missing:
        batches, calibration = search_data(run.root, net)
        with SearchProgress(progress) as bar:
            results = search_many(net, missing, data=batches, calibration=calibration, traces=extras.get("traces"),
                                  cache_dir=run.root, report=bar)
            for target in missing:  # each policy is saved as soon as it is found
                bar.target = target
                result = next(results)
                found[target], chosen[target] = result.policy, describe_selection(result.details)
                atomic_write_text(verdicts, json.dumps({t: chosen[t] for t in targets if chosen[t] is not None}))
                result.policy.save(paths[target])  # after its verdict: a policy on disk always has one
                log(f"search {target} ({recipe.search.backend}, {result.seconds:.1f} s): {paths[target].name}; "
                    f"{chosen[target]}")
    return [(target, found[target], paths[target], chosen[target]) for target in targets]


def _evaluate(net: Supernet, evaluator: PolicyEvaluator, recipe: Recipe, searched, progress: bool,
              log: Log) -> list[PolicyResult]:
    jobs: list[tuple] = [(name, "uniform", p, None, None) for name, p in uniform_policies(net, recipe.evaluate.uniform_bits)]
    jobs += [(f"searched {t}", "searched", p, t, path, chosen) for t, p, path, chosen in searched]
    results = []
    with phase_bar(progress) as bar:
        task = bar.add_task("evaluation", total=len(jobs))
        for name, kind, policy, target, path, *chosen in jobs:
            result = evaluator.measure(net, name, kind, policy)
            result.target, result.policy_file = target, str(path) if path else None
            result.selection = chosen[0] if chosen else None
            results.append(result)
            log(f"{name}: top-1 {result.accuracy:.2%} on {evaluator.val_images} held-out images")
            bar.update(task, advance=1)
    return results


def _export_all(net: Supernet, results: list[PolicyResult], recipe: Recipe, run: RunDir, evaluator: PolicyEvaluator,
                progress: bool, log: Log) -> None:
    searched = [r for r in results if r.kind == "searched"]
    double_rounding = recipe.quant.weight_quantizer is WeightQuantizer.DOUBLE_ROUNDING
    with phase_bar(progress) as bar:
        task = bar.add_task("export", total=len(searched) + double_rounding)
        for result in searched:
            try:
                result.exports = _export(net, result, run, evaluator, log)
            except Exception as exc:  # a failed export is a row of the report, not the end of the run
                result.export_error = str(exc).strip().splitlines()[0] if isinstance(exc, MpqfxError) else reason(exc)
                log(f"export {Path(result.policy_file).stem} failed: {result.export_error}")
            bar.update(task, advance=1)
        if double_rounding:  # one 8-bit file from which every policy's weights derive (Eq. 2-3)
            path = save_double_rounding(net, run.export / "supernet.dr8.safetensors")
            log(f"export: {path.name} (every policy's weights derive from its 8-bit integers)")
            bar.update(task, advance=1)


def _finetune_all(net: Supernet, results: list[PolicyResult], epochs: int, run: RunDir, evaluator: PolicyEvaluator,
                  train_set, device, progress: bool, log: Log) -> list[dict[str, Any]]:
    """Fine-tune every searched policy in its deployed form (RUN/finetuned/<policy>/, resumed where it stopped)."""
    from mpqfx.finetune.run import finetune_supernet_policy, finetuned_dir

    out = []
    for result in (r for r in results if r.kind == "searched"):
        stem = Path(result.policy_file).stem
        row = {"accuracy": result.accuracy, "loss": result.loss, "bitops": result.bitops, "size_bits": result.size_bits}
        out.append(finetune_supernet_policy(net, result.policy, stem, finetuned_dir(run.root, stem), evaluator, train_set,
                                            epochs, resume=True, device=device, supernet_row=row, progress=progress,
                                            log=log))
        net.to(device).eval()
    return out


def _export(net: Supernet, result: PolicyResult, run: RunDir, evaluator: PolicyEvaluator, log: Log) -> dict[str, Any]:
    stem = Path(result.policy_file).stem
    paths = {"safetensors": run.export / f"{stem}.safetensors", "onnx": run.export / f"{stem}.onnx"}
    exports = export_policy_files(net, result.policy, paths, evaluator.calibration, evaluator.val_batches)
    log(f"export {stem}: {paths['safetensors'].name}, {paths['onnx'].name} (onnxruntime top-1 "
        f"{exports['onnx_accuracy']:.2%}, agreement with the supernet {exports['onnx_top1_agreement']:.2%} on "
        f"{exports['onnx_images']} held-out images; {exports['onnx_integer_kernels']}/{exports['onnx_layers']} "
        f"layers as integer kernels)")
    return exports
