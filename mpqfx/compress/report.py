"""report.json (everything, machine-readable), report.md (for a person) and the figures."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from mpqfx.compress.plots import bits_plot, pareto_plot
from mpqfx.io import atomic_write_text
from mpqfx.recipe import Recipe
from mpqfx.rundir import RunDir
from mpqfx.supernet import Supernet

if TYPE_CHECKING:
    from mpqfx.compress.evaluation import PolicyResult

REPORT_FORMAT = "mpqfx.report/1"


def _row(r: "PolicyResult") -> dict[str, Any]:
    return {"name": r.name, "kind": r.kind, "target": r.target, "accuracy": r.accuracy, "loss": r.loss,
            "bitops": r.bitops, "size_bits": r.size_bits, "size_bytes": r.size_bits / 8, "compression": r.compression,
            "policy_file": r.policy_file, "exports": r.exports, "selection": r.selection,
            "bits": None if r.policy is None else {k: [b.w, b.a] for k, b in r.policy.items()}}


def report_dict(run: RunDir, net: Supernet, recipe: Recipe, results: list["PolicyResult"],
                seconds: dict[str, float], cpu_seconds: dict[str, float]) -> dict[str, Any]:
    meta = run.meta()
    return {"format": REPORT_FORMAT, "model": meta["model"], "data": meta["data"], "recipe": recipe.name,
            "strategy": recipe.strategy.name, "search_backend": recipe.search.backend,
            "float_accuracy": next(r.accuracy for r in results if r.kind == "float"),
            "policies": [_row(r) for r in results],
            "layers": [{"name": l.name, "kind": l.kind.value, "role": l.role.value, "macs": l.macs, "params": l.params,
                        "traced": l.traced} for l in net.layers],
            "skipped": [{"name": s.name, "reason": s.reason} for s in net.skipped],
            "seconds": seconds, "cpu_seconds": cpu_seconds}


def _markdown(report: dict[str, Any]) -> str:
    data = report["data"]
    lines = [f"# mpqfx report: {report['model']['name']}", "",
             f"Recipe `{report['recipe']}` (strategy `{report['strategy']}`, search `{report['search_backend']}`), "
             f"data `{data['name']}` ({data.get('train_limit') or 'all'} training / {data.get('val_limit') or 'all'} "
             f"held-out images). Accuracies are top-1 on the held-out split after BatchNorm re-estimation.", "",
             f"**Float accuracy: {100 * report['float_accuracy']:.2f}%**", "",
             "| model | target | top-1 (%) | GBitOPs | size (MB) | compression vs float32 |",
             "|---|---|---:|---:|---:|---:|"]
    for p in report["policies"]:
        lines.append(f"| {p['name']} | {p['target'] or ''} | {100 * p['accuracy']:.2f} | {p['bitops'] / 1e9:.4g} | "
                     f"{p['size_bytes'] / 1e6:.3f} | {p['compression']:.2f}x |")
    searched = [p for p in report["policies"] if p["kind"] == "searched"]
    chosen = [f"- {p['target']}: {p['selection']}" for p in searched if p.get("selection")]
    if chosen:
        lines += ["", "Each search kept the candidate with the lowest loss on its search images, the uniform "
                  "policies that meet the budget included:", ""] + chosen
    lines += ["", "![BitOPs vs accuracy](pareto.png)", "", "![bits per layer](bits.png)", "",
              "## Per-layer bits (weights/activations)", "",
              "| layer | kind | MMACs | " + " | ".join(p["name"] for p in searched) + " |",
              "|---|---|---:|" + "---:|" * len(searched)]
    for layer in report["layers"]:
        bits = " | ".join("/".join(str(b) for b in p["bits"][layer["name"]]) for p in searched)
        lines.append(f"| {layer['name']}{'' if layer['traced'] else ' (untraced)'} | {layer['kind']} | "
                     f"{layer['macs'] / 1e6:.2f} | {bits} |")
    if report["skipped"]:
        lines += ["", "## Left in float", ""] + [f"- `{s['name']}`: {s['reason']}" for s in report["skipped"]]
    exports = [(p["name"], p["exports"]) for p in searched if p["exports"]]
    if exports:
        lines += ["", "## Exports", "", "| policy | integer weights | ONNX | onnxruntime max abs diff |", "|---|---|---|---:|"]
        for name, e in exports:
            lines.append(f"| {name} | `{e['safetensors']}` | `{e['onnx']}` | {e['onnx_max_abs_diff']:.2e} |")
    lines += ["", "## Time per phase", "", "Over every process of a resumed run; CPU is the process's, all threads.", "",
              "| phase | wall (s) | CPU (s) |", "|---|---:|---:|"]
    lines += [f"| {k} | {v:.1f} | {report['cpu_seconds'][k]:.1f} |" for k, v in report["seconds"].items()]
    return "\n".join(lines) + "\n"


def write_report(run: RunDir, net: Supernet, recipe: Recipe, results: list["PolicyResult"],
                 seconds: dict[str, float], cpu_seconds: dict[str, float]) -> dict[str, Any]:
    """Write report.json, report.md, pareto.png and bits.png into the run directory."""
    report = report_dict(run, net, recipe, results, seconds, cpu_seconds)
    title = f"{report['model']['name']} ({recipe.name})"
    pareto_plot(results, run.pareto_png, title)
    bits_plot(net, results, run.bits_png, title)
    atomic_write_text(run.report_json, json.dumps(report, indent=1))
    atomic_write_text(run.report_md, _markdown(report))
    return report
