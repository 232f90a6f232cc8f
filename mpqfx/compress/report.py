"""report.json (everything, machine-readable), report.md (for a person) and the figures.

Everything is drawn from the report dictionary, which report.json holds whole: ``render_report``
writes the same files again from it (``mpqfx report`` does, with the later searches added).
"""

from __future__ import annotations

import json
import platform
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mpqfx.compress.evaluation import policy_label, policy_name
from mpqfx.compress.plots import bits_plot, pareto_plot
from mpqfx.data.census import FEW_IMAGES, USES, WARNED_USES, census_warnings
from mpqfx.io import atomic_write_text
from mpqfx.recipe import Recipe
from mpqfx.rundir import RunDir
from mpqfx.supernet import Supernet

if TYPE_CHECKING:
    from mpqfx.compress.evaluation import PolicyResult

REPORT_FORMAT = "mpqfx.report/1"
VERSIONED = ("mpqfx", "torch", "timm", "onnx", "onnxruntime")


def _row(r: "PolicyResult") -> dict[str, Any]:
    return {"name": r.name, "kind": r.kind, "target": r.target, "policy_name": policy_name(vars(r)),
            "accuracy": r.accuracy, "loss": r.loss,
            "bitops": r.bitops, "size_bits": r.size_bits, "size_bytes": r.size_bits / 8, "compression": r.compression,
            "policy_file": r.policy_file, "exports": r.exports, "export_error": r.export_error, "selection": r.selection,
            "bits": None if r.policy is None else {k: [b.w, b.a] for k, b in r.policy.items()}}


def versions() -> dict[str, str]:
    """Versions of Python and of the packages a run's numbers depend on (a loaded module's own
    ``__version__`` first: it names the build, e.g. torch's ``+cu130``)."""
    out = {"python": platform.python_version()}
    for name in VERSIONED:
        loaded = getattr(sys.modules.get(name), "__version__", None)
        try:
            out[name] = str(loaded or version(name))
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def report_dict(run: RunDir, net: Supernet, recipe: Recipe, results: list["PolicyResult"],
                seconds: dict[str, float], cpu_seconds: dict[str, float], census: dict[str, Any],
                finetuned: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The report of a run; ``census`` (mpqfx.data.census.data_census) gives the classes, the images
    of each class each use actually got (train, held_out, search, bn_calibration) and the files
    left out; ``images`` holds the totals."""
    meta = run.meta()
    images = {use: sum(census["images_per_class"][use].values()) for use in USES}
    return {"format": REPORT_FORMAT, "model": meta["model"], "data": {**meta["data"], **census}, "images": images,
            "input_size": list(net.example_input.shape[1:]), "recipe": recipe.name,
            "strategy": recipe.strategy.name, "search_backend": recipe.search.backend,
            "float_accuracy": next(r.accuracy for r in results if r.kind == "float"),
            "warm_start": meta.get("warm_start"),
            "policies": [_row(r) for r in results], "searches": [],
            "layers": [{"name": l.name, "kind": l.kind.value, "role": l.role.value, "macs": l.macs, "params": l.params,
                        "traced": l.traced} for l in net.layers],
            "skipped": [{"name": s.name, "reason": s.reason} for s in net.skipped],
            "finetuned": finetuned or [], "seconds": seconds, "cpu_seconds": cpu_seconds, "versions": versions()}


def _data_line(report: dict[str, Any]) -> str:
    data, images = report["data"], report["images"]
    size = "x".join(str(d) for d in report["input_size"])
    search = f", searches score policies on {images['search']}" if images.get("search") else ""
    return (f"data `{data['name']}`: {images['train']} training and {images['held_out']} held-out images at input "
            f"{size} (channels x height x width); BatchNorm re-estimated on {images['bn_calibration']} training "
            f"images before each evaluation{search}")


def _policy_table(rows: list[dict[str, Any]], extra: str | None = None) -> list[str]:
    head = f"| {extra} " if extra else ""
    lines = [f"{head}| policy | budget | top-1 (%) | GBitOPs | size (MB) | compression vs float32 |",
             ("|---" if extra else "") + "|---|---|---:|---:|---:|---:|"]
    for p in rows:
        cell = f"| {p[extra]} " if extra else ""
        accuracy = "not measured" if p["accuracy"] is None else f"{100 * p['accuracy']:.2f}"
        name = policy_name(p)
        label = policy_label(p["kind"], p["name"]) + (f" (`{name}`)" if name else "")
        lines.append(f"{cell}| {label} | {p['target'] or ''} | {accuracy} | "
                     f"{p['bitops'] / 1e9:.4g} | {p['size_bytes'] / 1e6:.3f} | {p['compression']:.2f}x |")
    return lines


def _markdown(report: dict[str, Any]) -> str:
    lines = [f"# mpqfx report: {report['model']['name']}", "",
             f"Recipe `{report['recipe']}` (strategy `{report['strategy']}`, search `{report['search_backend']}`), "
             f"{_data_line(report)}. Accuracies are top-1 on the held-out split after BatchNorm re-estimation; "
             "\"mixed\" rows are the searched mixed-precision policies, each under its budget; "
             "`mpqfx export --run RUN --policy NAME` exports a row by the name in its brackets.", "",
             f"**Float accuracy: {100 * report['float_accuracy']:.2f}%**", ""]
    if report.get("warm_start"):
        lines += [f"Float weights: {report['warm_start']['note']}.", ""]
    lines += _policy_table(report["policies"])
    later = report.get("searches", [])
    if later:
        lines += ["", "## Later searches", "",
                  "Policies `mpqfx search` found on the trained supernet after the run (RUN/searches/NAME/), measured "
                  "like the rows above; the rows above are the ones `mpqfx compress` evaluated and exported.", ""]
        lines += _policy_table(later, extra="search")
    searched = [p for p in report["policies"] if p["kind"] == "searched"]
    chosen = [f"- {p['target']}: {p['selection']}" for p in searched if p.get("selection")]
    if chosen:
        lines += ["", "Each search kept the candidate with the lowest loss on its search images, the uniform "
                  "policies that meet the budget included:", ""] + chosen
    lines += ["", "![BitOPs vs accuracy](pareto.png)", "", "![bits per layer](bits.png)", "",
              "## Per-layer bits (weights/activations)", "",
              "| layer | kind | MMACs | " + " | ".join(f"mixed {p['target']}" for p in searched) + " |",
              "|---|---|---:|" + "---:|" * len(searched)]
    for layer in report["layers"]:
        bits = " | ".join("/".join(str(b) for b in p["bits"][layer["name"]]) for p in searched)
        lines.append(f"| {layer['name']}{'' if layer['traced'] else ' (untraced)'} | {layer['kind']} | "
                     f"{layer['macs'] / 1e6:.2f} | {bits} |")
    if report["skipped"]:
        lines += ["", "## Left in float", ""] + [f"- `{s['name']}`: {s['reason']}" for s in report["skipped"]]
    exports = [(p["target"], p["exports"]) for p in searched if p["exports"]]
    failed = [p for p in searched if p.get("export_error")]
    if exports or failed:
        lines += ["", "## Exports", ""] + (_exports_table(exports) if exports else [])
    if failed:
        lines += ["", "Failed exports (their rows above are measured on the supernet):", ""]
        lines += [f"- {p['target']} (`{Path(p['policy_file']).stem}`): {p['export_error']}" for p in failed]
    if report.get("finetuned"):
        from mpqfx.finetune.run import rows_markdown

        lines += ["", "## Fine-tuned policies", "",
                  "Policies fine-tuned in their deployed form (BatchNorm folded, 8-bit requantization, int32 bias; "
                  "RUN/finetuned/POLICY/, by `mpqfx compress --finetune-epochs` or `mpqfx finetune`), then exported; "
                  "every row is top-1 on the held-out split.", ""]
        lines += rows_markdown(report["finetuned"])
    lines += _classes_section(report["data"])
    lines += ["", "## Time per phase", "", "Over every process of a resumed run; CPU is the process's, all threads.", "",
              "| phase | wall (s) | CPU (s) |", "|---|---:|---:|"]
    lines += [f"| {k} | {v:.1f} | {report['cpu_seconds'][k]:.1f} |" for k, v in report["seconds"].items()]
    lines += ["", "Versions: " + ", ".join(f"{name} {v}" for name, v in report["versions"].items()) + "."]
    return "\n".join(lines) + "\n"


USE_NAMES = {"train": "training", "held_out": "held-out", "search": "search", "bn_calibration": "BN calibration"}
FULL_TABLE_CLASSES = 20  # up to this many classes the report lists each; more get a per-use summary


def _count_cell(n: int, use: str) -> str:
    return f"**{n}**" if n < FEW_IMAGES and use in WARNED_USES else str(n)


def _classes_section(data: dict[str, Any]) -> list[str]:
    """The classes and the images of each per use (runs reported before these were recorded: nothing)."""
    per_use = data.get("images_per_class")
    if not per_use:
        return []
    classes = data["classes"]
    lines = ["", "## Classes and images", "",
             f"{len(classes)} classes; the images of each class in each use of the data (a limit draws a seeded, "
             f"class-stratified sample). **Bold**: fewer than {FEW_IMAGES} training or held-out images.", ""]
    uses = [use for use in USES if use in per_use]
    if len(classes) <= FULL_TABLE_CLASSES:
        lines += ["| class | " + " | ".join(USE_NAMES[u] for u in uses) + " |", "|---|" + "---:|" * len(uses)]
        lines += [f"| {c} | " + " | ".join(_count_cell(per_use[u][c], u) for u in uses) + " |" for c in classes]
    else:
        lines += ["| use | images | classes present | fewest per class | most per class |", "|---|---:|---:|---|---|"]
        for use in uses:
            counts = per_use[use]
            low, high = min(counts.values()), max(counts.values())
            fewest = [c for c in classes if counts[c] == low]
            named = ", ".join(fewest[:3]) + (", ..." if len(fewest) > 3 else "")
            lines.append(f"| {USE_NAMES[use]} | {sum(counts.values())} | {sum(n > 0 for n in counts.values())} | "
                         f"{_count_cell(low, use)} ({named}) | {high} |")
    warnings = census_warnings(data)
    if warnings:
        lines += ["", "Warnings:", ""] + [f"- {line}" for line in warnings]
    return lines


def _exports_table(exports: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """What ships: each exported ONNX file measured in onnxruntime on the held-out split."""
    lines = ["The ONNX files measured in onnxruntime (all graph optimizations: the integer kernels a deployment "
             "runs) on the held-out split, beside the supernet at the same policy; agreement is the share of "
             "images whose top-1 class is the same.", "",
             "| budget | supernet top-1 (%) | ONNX top-1 (%) | top-1 agreement (%) | integer kernels | ONNX (MB) | "
             "integer safetensors (MB) |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name, e in exports:
        lines.append(f"| {name} | {100 * e['onnx_supernet_accuracy']:.2f} | {100 * e['onnx_accuracy']:.2f} | "
                     f"{100 * e['onnx_top1_agreement']:.2f} | {e['onnx_integer_kernels']}/{e['onnx_layers']} | "
                     f"{e['onnx_bytes'] / 1e6:.3f} | {e['safetensors_bytes'] / 1e6:.3f} |")
    lines += ["", "Files: " + ", ".join(f"`{e['onnx']}`, `{e['safetensors']}`" for _, e in exports) + "."]
    return lines


def render_report(run: RunDir, report: dict[str, Any]) -> None:
    """Write report.json, report.md, pareto.png and bits.png from ``report``."""
    title = f"{report['model']['name']} ({report['recipe']})"
    pareto_plot(report, run.pareto_png, title)
    bits_plot(report, run.bits_png, title)
    atomic_write_text(run.report_json, json.dumps(report, indent=1))
    atomic_write_text(run.report_md, _markdown(report))


def write_report(run: RunDir, net: Supernet, recipe: Recipe, results: list["PolicyResult"],
                 seconds: dict[str, float], cpu_seconds: dict[str, float], census: dict[str, Any],
                 finetuned: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Write report.json, report.md, pareto.png and bits.png into the run directory (``finetuned``: the
    results of ``mpqfx.finetune`` for the searched policies, three rows each)."""
    report = report_dict(run, net, recipe, results, seconds, cpu_seconds, census, finetuned)
    render_report(run, report)
    return report
