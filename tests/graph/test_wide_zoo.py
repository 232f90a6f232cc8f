"""Wide zoo (slow, `make test-slow`): a seeded random sample of timm models, each checked by
tests/graph/zoo_check.py in its own process; writes docs/coverage.md.

The sample is at least 10% of ``timm.list_models()``, drawn from the models under 100M
parameters. Results are kept in pytest's cache under a fingerprint of the mpqfx sources, the
shipped recipes, the checker and the torch/timm versions, so an interrupted run resumes where it
stopped and any code or recipe change starts over. ``MPQFX_ZOO_WORKERS`` (default 1) runs that
many checks at once, ``MPQFX_ZOO_TIMEOUT`` (default 1800 s) bounds each, ``MPQFX_ZOO_THREADS``
(default 2) is each check's torch thread count. The doc is rewritten after every model, marked
partial until the whole sample has run. ``MPQFX_ZOO_MODELS`` (comma-separated timm names) checks
those models instead of the sample, every one must pass, and leaves the doc alone.
"""

from __future__ import annotations

import datetime
import hashlib
import importlib.util
import json
import math
import os
import platform
import random
import subprocess
import sys
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor, as_completed
from functools import lru_cache
from pathlib import Path

import pytest
import timm
import torch

ROOT = Path(__file__).resolve().parents[2]
CHECKER = Path(__file__).with_name("zoo_check.py")
_spec = importlib.util.spec_from_file_location("zoo_check", CHECKER)
zoo_check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(zoo_check)
DOC = ROOT / "docs" / "coverage.md"
SEED = 0
FRACTION = 0.10
MAX_PARAMS = 100_000_000
GOAL = 0.99


def fingerprint() -> str:
    digest = hashlib.sha256(f"{torch.__version__} {timm.__version__}".encode())
    for path in sorted((ROOT / "mpqfx").rglob("*.py")) + sorted((ROOT / "recipes").glob("*.yaml")) + [CHECKER]:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def count_params(name: str) -> int:
    """Parameters of a timm model, built on the meta device when it allows (no memory, no init)."""
    try:
        with torch.device("meta"):
            model = timm.create_model(name, pretrained=False)
    except Exception:  # noqa: BLE001 - some constructors compute on their tensors; build them for real
        model = timm.create_model(name, pretrained=False)
    return sum(p.numel() for p in model.parameters())


def draw_sample(cache) -> tuple[list[str], dict[str, int], dict[str, str], int]:
    """(sample, params of every drawn model, uncreatable drawn models -> reason, size of list_models)."""
    names = sorted(timm.list_models())
    target = math.ceil(FRACTION * len(names))
    order = names[:]
    random.Random(SEED).shuffle(order)
    key = f"mpqfx/wide-zoo/params-{timm.__version__}"
    params: dict[str, int] = cache.get(key, {})
    uncreatable: dict[str, str] = {}
    sample: list[str] = []
    for name in order:
        if len(sample) == target:
            break
        if name not in params:
            try:
                params[name] = count_params(name)
            except Exception as exc:  # noqa: BLE001 - reported in the doc
                uncreatable[name] = f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
                continue
            cache.set(key, params)
        if params[name] < MAX_PARAMS:
            sample.append(name)
    return sample, {n: params[n] for n in order if n in params and (n in sample or params[n] >= MAX_PARAMS)}, \
        uncreatable, len(names)


def run_check(name: str, timeout: float) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    start = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, str(CHECKER), name], capture_output=True, text=True,
                              timeout=timeout, env=env, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"model": name, "ok": False, "reason": f"timeout after {timeout:.0f} s",
                "time_s": round(time.perf_counter() - start, 1)}
    lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
    if not lines:
        tail = " ".join(proc.stderr.split())[-300:]
        return {"model": name, "ok": False, "reason": f"checker exited with {proc.returncode}: {tail}",
                "time_s": round(time.perf_counter() - start, 1)}
    return json.loads(lines[-1])


@lru_cache(maxsize=1)
def families() -> dict[str, str]:
    """Model name -> the timm module that defines it (its family)."""
    return {m: module for module in timm.list_modules() for m in timm.list_models(module=module)}


def write_doc(results: list[dict], planned: int, params: dict[str, int], uncreatable: dict[str, str], pool: int,
              wall_s: float, settings: str) -> None:
    family_of = families()
    passed = [r for r in results if r["ok"]]
    exported = [r for r in results if r.get("quantized_layers") and r["integer_layers"] == r["quantized_layers"]]
    partial = len(results) < planned
    by_family: dict[str, list[dict]] = defaultdict(list)
    for r in results:
        by_family[family_of.get(r["model"], "?")].append(r)
    cores = len(os.sched_getaffinity(0))
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    big = sorted(n for n, p in params.items() if p >= MAX_PARAMS)
    lines = [
        "# Model coverage: a random timm sample",
        "",
        "Written by `make test-slow` (tests/graph/test_wide_zoo.py, each model checked by",
        "tests/graph/zoo_check.py in its own process); do not edit by hand.",
        "",
        *([f"**Partial sample: {len(results)} of the {planned} planned models have run.**", ""] if partial else []),
        f"- date: {datetime.date.today().isoformat()}; machine: {cpu}, {cores} cores "
        f"(load average at the end {os.getloadavg()[0]:.1f}); torch {torch.__version__}, timm {timm.__version__}",
        f"- run with: {settings}",
        f"- sample: {planned} models = {planned / pool:.1%} of `timm.list_models()` ({pool} names), "
        f"drawn with `random.Random({SEED}).shuffle` over the sorted names, keeping models under "
        f"{MAX_PARAMS // 1_000_000}M parameters ({len(big)} drawn models at or above were passed over"
        f"{'' if not uncreatable else f', {len(uncreatable)} could not be created'})",
        f"- checks per model: `mpqfx.prepare` at the model's default input size (constant parameters "
        "perturbed first), bypass output within 1e-4 of the output range of the float model, >= 99% "
        "of conv/linear weights quantized, finite uniform 4/4 output, uniform 8/8 error against the float "
        f"model within [{zoo_check.ERROR_8_BOUNDS[0]:g}, {zoo_check.ERROR_8_BOUNDS[1]:g}] (RMS difference over the float output's RMS "
        "deviation; for a float model that already moves by f when its input is rounded to 8 bits, up to the upper bound "
        "plus f and below the error of the best output that ignores the input); then `mpqfx.export.deploy` at uniform 4/4 calibrated on the test's {zoo_check.CALIBRATION_IMAGES} "
        "images, `export_onnx`, every quantized layer an integer kernel in onnxruntime's optimized graph, and the "
        f"ONNX file's top-1 agreement with the deployed module in float64 on {zoo_check.EXPORT_IMAGES} other images no "
        f"lower than the noise floor (the float32 deployed module against the same reference) minus "
        f"{zoo_check.AGREEMENT_TOLERANCE:.1%} (one image)",
        f"- result{' so far' if partial else ''}: **{len(passed)} of {len(results)} pass ({len(passed) / len(results):.1%})**, "
        f"{len(exported)} export with every quantized layer an integer kernel; "
        f"checks took {sum(r.get('time_s', 0) for r in results) / 60:.0f} min of process time "
        f"({wall_s / 60:.0f} min of wall time)",
        "",
        "## Per family",
        "",
        "Exported: ONNX written and opened in onnxruntime; integer layers: quantized layers that run as",
        "integer kernels after its optimizer, of all quantized layers; agreement: ONNX top-1 against the",
        "float64 deployed module, beside the noise floor (float32 deployed module against the same); layers",
        "summed and agreements averaged over the family's exported models.",
        "",
        "| family (timm module) | sampled | pass | lowest coverage | exported | integer layers | agreement / noise floor |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for fam in sorted(by_family):
        rs = by_family[fam]
        covs = [r["coverage"] for r in rs if "coverage" in r]
        low = f"{min(covs):.1%}" if covs else "-"
        out = [r for r in rs if "agreement" in r]
        layers = f"{sum(r['integer_layers'] for r in out)} / {sum(r['quantized_layers'] for r in out)}" if out else "-"
        agree = (f"{sum(r['agreement'] for r in out) / len(out):.1%} / {sum(r['noise_floor'] for r in out) / len(out):.1%}"
                 if out else "-")
        lines.append(f"| {fam} | {len(rs)} | {sum(r['ok'] for r in rs)} | {low} | {len(out)} | {layers} | {agree} |")
    lines += ["", "## Failures", ""]
    failures = [r for r in results if not r["ok"]]
    lines += [f"- `{r['model']}` ({r.get('stage', '?')}): {r['reason']}" for r in failures] or ["None."]
    if big or uncreatable:
        lines += ["", "## Passed over", ""]
        lines += [f"- `{n}`: {params[n] / 1e6:.0f}M parameters" for n in big]
        lines += [f"- `{n}`: cannot be created offline ({why})" for n, why in sorted(uncreatable.items())]
    DOC.write_text("\n".join(lines) + "\n")


@pytest.mark.slow
def test_random_timm_sample(request):
    chosen = [n.strip() for n in os.environ.get("MPQFX_ZOO_MODELS", "").split(",") if n.strip()]
    if chosen:
        return check_chosen(chosen)
    cache = request.config.cache
    sample, params, uncreatable, pool = draw_sample(cache)
    assert len(sample) >= FRACTION * pool
    key = f"mpqfx/wide-zoo/results-{fingerprint()}"
    done: dict[str, dict] = cache.get(key, {})
    wall_before: float = cache.get(f"{key}-wall-s", 0.0)  # of the sessions before this one
    todo = [n for n in sample if n not in done]
    workers = int(os.environ.get("MPQFX_ZOO_WORKERS", "1"))
    timeout = float(os.environ.get("MPQFX_ZOO_TIMEOUT", "1800"))
    settings = (f"`MPQFX_ZOO_WORKERS={workers} MPQFX_ZOO_THREADS={os.environ.get('MPQFX_ZOO_THREADS', '2')} "
                f"MPQFX_ZOO_TIMEOUT={timeout:.0f} python -m pytest -m slow tests/graph/test_wide_zoo.py` "
                f"(one process per model, killed after {timeout:.0f} s)")
    start = time.perf_counter()

    def record() -> None:
        wall = wall_before + time.perf_counter() - start
        cache.set(f"{key}-wall-s", wall)
        write_doc([done[n] for n in sample if n in done], len(sample), params, uncreatable, pool, wall, settings)

    with ThreadPoolExecutor(workers) as pool_:
        for future in as_completed([pool_.submit(run_check, n, timeout) for n in todo]):
            result = future.result()
            done[result["model"]] = result
            cache.set(key, done)
            record()
            print(f"[{len(done)}/{len(sample)}] {result['model']}: "
                  f"{'ok' if result['ok'] else result['reason'][:160]} ({result.get('time_s', '?')} s)", flush=True)
    record()
    results = [done[n] for n in sample]
    assert all(r.get("quantized_layers") and r["integer_layers"] == r["quantized_layers"] for r in results if r["ok"])
    failed = [f"{r['model']}: {r['reason']}" for r in results if not r["ok"]]
    assert len(failed) <= (1 - GOAL) * len(results), "\n".join(failed)


def check_chosen(names: list[str]) -> None:
    """``MPQFX_ZOO_MODELS``: check these models one after the other, each in its own process; all must pass."""
    timeout = float(os.environ.get("MPQFX_ZOO_TIMEOUT", "1800"))
    results = []
    for name in names:
        result = run_check(name, timeout)
        results.append(result)
        print(f"{name}: {'ok' if result['ok'] else result['reason'][:300]} ({result.get('time_s', '?')} s; export "
              f"{result.get('export_s', '-')} s, {result.get('integer_layers', '-')}/{result.get('quantized_layers', '-')} "
              f"integer layers, agreement {result.get('agreement', '-')} vs floor {result.get('noise_floor', '-')}, "
              f"8/8 error {result.get('error_8', '-')})", flush=True)
    failed = [f"{r['model']}: {r['reason']}" for r in results if not r["ok"]]
    assert not failed, "\n".join(failed)


@pytest.mark.parametrize("quantizer, stage, error_8", [
    pytest.param(None, "done", (0.01, 0.5), marks=pytest.mark.slow),  # the export stage takes a while
    ("no-op", "uniform 8/8", (0.0, 0.0)),  # returns its input: the supernet is the float model
    ("zero", "uniform 8/8", (0.9, 1.0)),  # returns zeros: only biases and BatchNorm offsets reach the output
])
def test_the_checker_passes_test_resnet_and_fails_broken_quantizers(monkeypatch, quantizer, stage, error_8):
    import mpqfx.quant.lsq as lsq

    fakes = {"no-op": lambda x, *_, **__: x, "zero": lambda x, *_, **__: torch.zeros_like(x)}
    if quantizer is not None:
        monkeypatch.setattr(lsq, "lsq_quantize", fakes[quantizer])
    result = zoo_check.check("test_resnet", {"model": "test_resnet", "ok": False})
    assert result["stage"] == stage and result["ok"] is (quantizer is None), result.get("reason")
    assert error_8[0] <= result["error_8"] <= error_8[1]
    if quantizer is None:
        assert result["integer_layers"] == result["quantized_layers"] == result["layers"]
        assert result["agreement"] >= result["noise_floor"] - zoo_check.AGREEMENT_TOLERANCE
