"""``mpqfx finetune``: fine-tune one policy of a finished run in its deployed form, export it, and
measure what ships beside what was fine-tuned.

Everything goes to ``RUN/finetuned/<policy>/`` and nothing the run already wrote changes:

    policy.yaml           the policy fine-tuned
    checkpoint.pt         training checkpoints (resume); checkpoint.prev.pt the one before
    metrics.jsonl         training metrics
    finetuned.pt          the fine-tuned model's state (a FoldedModel of the supernet at the policy)
    <policy>.onnx / <policy>.safetensors   the exports, written by mpqfx.export's code
    result.json / report.md   three rows: the supernet, the fine-tuned model in torch, the exported ONNX file
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from mpqfx.errors import MpqfxError
from mpqfx.evaluate import recalibrated_bn
from mpqfx.io import atomic_write_text
from mpqfx.quant.policy import Policy
from mpqfx.rundir import RunDir
from mpqfx.supernet import Supernet
from mpqfx.train.checkpoint import load_checkpoint, recipe_differences, save_checkpoint

RESULT_FORMAT = "mpqfx.finetune/1"
WEIGHTS_NAME = "finetuned.pt"
RESULT_NAME = "result.json"
Log = Callable[[str], None]


def finetuned_dir(run_dir: str | Path, name: str) -> Path:
    return RunDir(run_dir).root / "finetuned" / name


def read_result(folder: Path) -> dict[str, Any] | None:
    """The ``result.json`` of a finished fine-tune, or None."""
    path = folder / RESULT_NAME
    if not path.is_file():
        return None
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise MpqfxError(f"{str(path)!r} is corrupt: {exc}") from None
    if result.get("format") != RESULT_FORMAT:
        raise MpqfxError(f"{str(path)!r}: not a fine-tune result (format {RESULT_FORMAT})")
    return result


def finished_results(run_dir: str | Path, order: Sequence[str] = ()) -> list[dict[str, Any]]:
    """The results of the run's finished fine-tunes (``RUN/finetuned/*/result.json``): the policies
    named in ``order`` first, in that order, then the others by name."""
    root = RunDir(run_dir).root / "finetuned"
    folders = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    results = [result for result in map(read_result, folders) if result is not None]
    rank = {name: i for i, name in enumerate(order)}
    return sorted(results, key=lambda result: (rank.get(result["policy"], len(rank)), result["policy"]))


def _check_folder(folder: Path, resume: bool, command: str) -> None:
    started = any((folder / name).is_file() for name in ("checkpoint.pt", "checkpoint.prev.pt", WEIGHTS_NAME))
    if not resume and (started or (folder / RESULT_NAME).is_file()):
        raise MpqfxError(f"{str(folder)!r} already holds a fine-tune of this policy; `{command} --resume` "
                         "continues or shows it, or delete the folder to start again")


def _same_settings(found: dict[str, Any], settings, path: Path) -> None:
    changed = recipe_differences(asdict(settings), found)
    if changed:
        raise MpqfxError(f"{str(path)!r} was fine-tuned with other settings ({', '.join(changed)}); resume with "
                         "the same --epochs and --lr, or delete its folder to fine-tune again")


def finetune_supernet_policy(net: Supernet, policy: Policy, name: str, folder: Path, spec_evaluator, train_set,
                             epochs: int, lr: float | None = None, resume: bool = False,
                             device: torch.device | None = None, supernet_row: dict[str, Any] | None = None,
                             progress: bool = False, log: Log | None = None) -> dict[str, Any]:
    """Fine-tune ``policy`` of ``net`` into ``folder`` (see the module docstring) and return the result
    (what ``result.json`` holds). ``spec_evaluator`` (a :class:`mpqfx.compress.evaluation.PolicyEvaluator`)
    gives the calibration and held-out images; ``supernet_row``: the supernet's measured row, when known."""
    from mpqfx.export.run import export_policy_files
    from mpqfx.finetune.agreement import layer_agreement
    from mpqfx.finetune.model import folded_model
    from mpqfx.finetune.train import FinetuneLoop, FinetuneSettings

    log = log or (lambda message: None)
    device = device or next(net.parameters()).device
    settings = FinetuneSettings.from_recipe(net.recipe, epochs, lr)
    done = read_result(folder) if resume else None
    if done is not None:
        _same_settings(done["settings"], settings, folder / RESULT_NAME)
        return done
    folder.mkdir(parents=True, exist_ok=True)
    policy.save(folder / "policy.yaml")
    started = time.perf_counter()
    evaluator = spec_evaluator
    calibration = evaluator.calibration
    if supernet_row is None:
        measured = evaluator.measure(net, name, "searched", policy)
        supernet_row = {"accuracy": measured.accuracy, "loss": measured.loss, "bitops": measured.bitops,
                        "size_bits": measured.size_bits}
    with recalibrated_bn(net, policy, calibration):  # the starting point: statistics as evaluation has them
        model = folded_model(net, policy, calibration)
    weights = folder / WEIGHTS_NAME
    if weights.is_file():
        state = load_checkpoint(weights, map_location=device)
        _same_settings(state["settings"], settings, weights)
        model.load_state_dict(state["model"])
        log(f"fine-tune {name}: trained weights from {weights}")
    else:
        log(f"fine-tune {name}: {epochs} epoch(s) in the deployed form, lr {settings.lr:g}")
        loop = FinetuneLoop(model, train_set, [(x.to(device), y) for x, y in calibration], settings, folder, device,
                            progress, lambda message: log(f"fine-tune {name}: {message}"))
        loop.fit(resume=resume)
        save_checkpoint(weights, {"model": model.state_dict(), "settings": asdict(settings), "policy": policy.to_dict()})
    model.cpu().eval()
    deployed = model.to_deployed(net, policy)
    paths = {"safetensors": folder / f"{name}.safetensors", "onnx": folder / f"{name}.onnx"}
    held_out = evaluator.val_batches
    exports = export_policy_files(net, policy, paths, calibration, held_out, deployed=deployed, reference=model)
    agreement = layer_agreement(paths["onnx"], model.graph, model.layers, held_out)
    model.to(device)
    worst, worst_share = agreement.worst_layer
    result = {"format": RESULT_FORMAT, "policy": name, "settings": asdict(settings), "images": agreement.images,
              "supernet": supernet_row, "finetuned": {"accuracy": agreement.torch_accuracy},
              "exported": {"accuracy": agreement.onnx_accuracy, "top1_agreement": agreement.top1_agreement,
                           "worst_layer": worst, "worst_layer_within_one_step": worst_share,
                           "layer_within_one_step": agreement.layer_within_one_step,
                           "integer_kernels": exports["onnx_integer_kernels"], "layers": exports["onnx_layers"],
                           "onnx": exports["onnx"], "onnx_bytes": exports["onnx_bytes"],
                           "safetensors": exports["safetensors"], "safetensors_bytes": exports["safetensors_bytes"]},
              "seconds": time.perf_counter() - started}
    atomic_write_text(folder / RESULT_NAME, json.dumps(result, indent=1))
    atomic_write_text(folder / "report.md", report_markdown(result))
    log(f"fine-tune {name}: top-1 {_pct(agreement.torch_accuracy)} in torch, {_pct(agreement.onnx_accuracy)} in "
        f"onnxruntime (supernet {_pct(supernet_row['accuracy'])}); top-1 agreement {agreement.top1_agreement:.2%}")
    return result


def _pct(value: float | None) -> str:
    return "not measured" if value is None else f"{100 * value:.2f}%"


def rows(result: dict[str, Any]) -> list[tuple[str, float | None, str]]:
    """(model, top-1, what else was measured) for the supernet, the fine-tuned model and the exported file."""
    exported = result["exported"]
    epochs = result["settings"]["epochs"]
    return [("supernet", result["supernet"]["accuracy"], "the run's evaluation (BatchNorm re-estimated)"),
            (f"fine-tuned ({epochs} epoch{'s' * (epochs != 1)}, torch)", result["finetuned"]["accuracy"],
             "deployed form: BN folded, 8-bit requantization, int32 bias"),
            ("exported ONNX (onnxruntime)", exported["accuracy"],
             f"top-1 agreement with the fine-tuned model {100 * exported['top1_agreement']:.2f}%; output integers "
             f"within 1 step: worst layer {100 * exported['worst_layer_within_one_step']:.2f}% "
             f"(`{exported['worst_layer']}`); {exported['integer_kernels']}/{exported['layers']} integer kernels")]


def rows_markdown(results: list[dict[str, Any]]) -> list[str]:
    lines = ["| policy | model | top-1 (%) | measured |", "|---|---|---:|---|"]
    for result in results:
        for model, accuracy, note in rows(result):
            lines.append(f"| {result['policy']} | {model} | {_pct(accuracy).rstrip('%')} | {note} |")
    return lines


def report_markdown(result: dict[str, Any]) -> str:
    lines = [f"# Fine-tuned policy `{result['policy']}`", "",
             f"Top-1 on {result['images']} held-out images. The fine-tuned model computes the deployed arithmetic; "
             "the exported file is measured in onnxruntime with every optimization (its integer kernels).", ""]
    lines += rows_markdown([result])
    lines += ["", f"Files: `{result['exported']['onnx']}`, `{result['exported']['safetensors']}`."]
    return "\n".join(lines) + "\n"


def finetune(run_dir: str | Path, policy: str | Path, epochs: int = 1, lr: float | None = None, resume: bool = False,
             device: str | None = None, progress: bool = True, log: Log | None = None) -> dict[str, Any]:
    """Fine-tune one policy of a finished run (a policy name of the run, or a policy file) in its
    deployed form for ``epochs`` epochs, export it and measure the export beside it; the result
    (``RUN/finetuned/<name>/result.json``).

    Example:
        >>> result = mpqfx.finetune.run.finetune("runs/demo", "mixed@uniform-4", epochs=1)
        >>> result["finetuned"]["accuracy"], result["exported"]["top1_agreement"]
    """
    from mpqfx.compress.evaluation import PolicyEvaluator
    from mpqfx.data.spec import DataSpec
    from mpqfx.export.run import named_policy, resolve_policy
    from mpqfx.models import create_model
    from mpqfx.store import load_supernet
    from mpqfx.train.distributed import resolve_device

    if epochs < 1:
        raise MpqfxError(f"--epochs: must be at least 1, got {epochs}")
    run = RunDir(run_dir)
    if not run.root.is_dir():
        raise MpqfxError(f"--run: {str(run.root)!r} does not exist")
    name, source = resolve_policy(run.root, policy)
    if not run.supernet.is_file():
        raise MpqfxError(f"--run: {str(run.root)!r} has no trained supernet (supernet.pt); "
                         f"finish the run with `mpqfx compress --resume --out {run.root}`")
    folder = finetuned_dir(run.root, name.replace("/", "-"))
    _check_folder(folder, resume, f"mpqfx finetune --run {run.root} --policy {name}")
    if resume:
        run.remove_temp_files()
    device = resolve_device(device)
    net, _ = load_supernet(run.supernet, device=device)
    net.eval()
    chosen = named_policy(net, source, name)
    spec = DataSpec.from_dict(run.meta()["data"])
    float_model = create_model(net.model_spec.name, **net.model_spec.kwargs)
    evaluator = PolicyEvaluator(spec, float_model, net.recipe)
    train_set = spec.split("train", float_model, train=True)
    return finetune_supernet_policy(net, chosen, name, folder, evaluator, train_set, epochs, lr, resume, device,
                                    progress=progress, log=log)
