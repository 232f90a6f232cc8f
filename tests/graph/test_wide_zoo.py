"""Wide zoo (slow, `make test-zoo`, part of `make test-slow` and CI): a seeded random sample of
timm models, each checked by tests/graph/zoo_check.py in its own process; writes docs/coverage.md.

The sample is at least 10% of ``timm.list_models()``, drawn from the models under 100M
parameters. Results are kept in pytest's cache under a fingerprint of the mpqfx sources, the
shipped recipes, the checker and the torch/timm versions, so an interrupted run resumes where it
stopped and any code or recipe change starts over. Environment:

- ``MPQFX_ZOO_WORKERS`` (default 1): checks run at once; ``MPQFX_ZOO_THREADS`` (default 2): each
  check's torch threads;
- ``MPQFX_ZOO_TIMEOUT`` (default 600 s of CPU, all of its threads: the same on an idle or a shared
  machine) and ``MPQFX_ZOO_MEMORY_GIB`` (default 8): a check that takes more CPU, or whose resident
  memory grows larger, is killed and fails; so is one still running after ``WALL_FACTOR`` times the
  CPU limit in wall time (a hang);
- ``MPQFX_ZOO_DEADLINE`` (Unix time; CI sets it): no check starts after it and a check still
  running then is stopped; those models are listed as not reached, kept out of the result and
  checked by the next run. The test fails only on models that were checked and failed;
- ``MPQFX_ZOO_MODELS`` (comma-separated timm names): checks those models instead of the sample,
  every one must pass, and leaves the doc alone.

The doc is rewritten after every model, marked partial until the whole sample has run.
"""

from __future__ import annotations

import dataclasses
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

from mpqfx.io import atomic_write_text

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
WALL_FACTOR = 10  # a check's wall-time limit over its CPU limit: a hung check is killed too
CI_MINUTES, CI_MARGIN_MINUTES = 90, 5  # .ci/run: the zoo's deadline is CI's limit less the margin
CI_MAKE_TEST_MINUTES = (8, 13)  # fresh clone, 2 cores: 8.6 min with the venv build (2026-12-08; 7.4 min of pytest), more when shared


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


def usage(pid: int) -> tuple[float, float]:
    """(resident GiB, CPU seconds of all its threads) of a running process; zeros once it has exited."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0, 0.0
    kib = next((int(l.split()[1]) for l in status.splitlines() if l.startswith("VmRSS:")), 0)
    utime, stime = stat.rsplit(")", 1)[1].split()[11:13]  # fields 14 and 15 of proc(5), in clock ticks
    return kib / 2**20, (int(utime) + int(stime)) / os.sysconf("SC_CLK_TCK")


def run_check(name: str, cpu_s: float, memory_gib: float, wall_s: float | None = None) -> dict:
    """The checker's JSON result for ``name``; killed above ``cpu_s`` seconds of CPU (what a check costs
    however shared the cores are), above ``memory_gib`` resident, or after ``wall_s`` seconds
    (default ``WALL_FACTOR * cpu_s``: a check that hangs uses no CPU)."""
    wall_s = WALL_FACTOR * cpu_s if wall_s is None else wall_s
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(CHECKER), name], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=ROOT)
    killed, reason, peak = None, "", 0.0
    while True:
        try:
            stdout, stderr = proc.communicate(timeout=1.0)
            break
        except subprocess.TimeoutExpired:
            resident, cpu = usage(proc.pid)
            peak = max(peak, resident)
            if killed is None and peak > memory_gib:
                killed, reason = "memory", f"killed at {peak:.1f} GiB resident (limit {memory_gib:g} GiB)"
            elif killed is None and cpu > cpu_s:
                killed, reason = "cpu", f"timeout: killed after {cpu_s:g} s of CPU"
            elif killed is None and time.perf_counter() - start > wall_s:
                killed, reason = "wall", f"timeout: killed after {wall_s:.0f} s of wall time ({cpu:.0f} s of CPU)"
            if killed is not None:
                proc.kill()
    elapsed = round(time.perf_counter() - start, 1)
    if killed is not None:
        return {"model": name, "ok": False, "reason": reason, "killed": killed, "time_s": elapsed}
    lines = [l for l in stdout.splitlines() if l.startswith("{")]
    if not lines:
        tail = " ".join(stderr.split())[-300:]
        return {"model": name, "ok": False, "reason": f"checker exited with {proc.returncode}: {tail}",
                "time_s": elapsed}
    return json.loads(lines[-1])


def run_before(name: str, cpu_s: float, memory_gib: float, deadline: float) -> dict | None:
    """``run_check`` cut short at the Unix time ``deadline``: None when the model is not started by
    then, or is still running at it (a limit of its own is a result)."""
    left = deadline - time.time()
    if left <= 0:
        return None
    result = run_check(name, cpu_s, memory_gib, min(WALL_FACTOR * cpu_s, left))
    return None if result.get("killed") == "wall" and left < WALL_FACTOR * cpu_s else result


def percentile(values: list[float], q: float) -> float:
    """The ``q``-quantile of ``values`` (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


@lru_cache(maxsize=1)
def families() -> dict[str, str]:
    """Model name -> the timm module that defines it (its family)."""
    return {m: module for module in timm.list_modules() for m in timm.list_models(module=module)}


def all_integer(r: dict) -> bool:
    """Every layer mpqfx quantized runs as an integer kernel in onnxruntime's optimized graph."""
    return bool(r.get("quantized_layers")) and r["integer_layers"] == r["quantized_layers"] == r["layers"]


def time_lines(results: list[dict], planned: int, wall_s: float, settings: str) -> list[str]:
    """Per-model time and memory distribution of the finished checks (the killed ones excluded), and
    what they make of CI's time plan."""
    finished = [r for r in results if not r.get("killed")]
    if not finished:
        return []
    times = [r["time_s"] for r in finished]
    cpu = [r["cpu_s"] for r in finished if "cpu_s" in r]
    exports = [r["export_s"] for r in finished if "export_s" in r]
    rss = [r["peak_rss_mb"] / 1024 for r in finished if "peak_rss_mb" in r]
    slowest = sorted(finished, key=lambda r: -r.get("cpu_s", r["time_s"]))[:5]
    lines = [
        "", "## Time and memory", "",
        f"Measured in this run ({settings}), each check's own process from start to its JSON line:", "",
        f"- wall time per model: median {percentile(times, 0.5):.0f} s, 90th percentile {percentile(times, 0.9):.0f} s, "
        f"max {max(times):.0f} s; sum {sum(times) / 60:.0f} min over {len(times)} models, "
        f"{wall_s / 60:.0f} min of wall time (the load average says how shared the cores were)",
        *([f"- of which deploy + export + onnxruntime: median {percentile(exports, 0.5):.0f} s, max {max(exports):.0f} s"]
          if exports else []),
        *([f"- peak resident memory per check: median {percentile(rss, 0.5):.1f} GiB, max {max(rss):.1f} GiB"]
          if rss else []),
    ]
    if cpu:
        per_model = sum(cpu) / len(cpu)
        left = (CI_MINUTES - CI_MARGIN_MINUTES - CI_MAKE_TEST_MINUTES[1], CI_MINUTES - CI_MARGIN_MINUTES - CI_MAKE_TEST_MINUTES[0])
        lines += [
            f"- CPU time per model (all its threads; the wall time on a core of its own): median "
            f"{percentile(cpu, 0.5):.0f} s, 90th percentile {percentile(cpu, 0.9):.0f} s, max {max(cpu):.0f} s, "
            f"mean {per_model:.0f} s",
            "- slowest (CPU): " + ", ".join(f"`{r['model']}` {r.get('cpu_s', r['time_s']):.0f} s" for r in slowest),
            f"- CI plan: the {planned} models at {per_model:.0f} s each on 2 idle cores (2 workers x 1 thread) need "
            f"about {per_model * planned / 2 / 60:.0f} min. `.ci/run` gives the zoo what is left of CI's "
            f"{CI_MINUTES} min after the venv build and `make test` ({CI_MAKE_TEST_MINUTES[0]}-{CI_MAKE_TEST_MINUTES[1]} min "
            f"together on this machine) and a {CI_MARGIN_MINUTES} min margin: {left[0]}-{left[1]} min; models not reached "
            "are listed, not failed (a later run in the same checkout resumes from pytest's cache)",
        ]
    return lines


def write_doc(results: list[dict], planned: int, params: dict[str, int], uncreatable: dict[str, str], pool: int,
              wall_s: float, settings: str, not_reached: list[str]) -> None:
    family_of = families()
    passed = [r for r in results if r["ok"]]
    exported = [r for r in results if "agreement" in r]
    integer = [r for r in exported if all_integer(r)]
    agreeing = [r for r in exported if zoo_check.agrees(r)]
    partial = len(results) < planned
    by_family: dict[str, list[dict]] = defaultdict(list)
    for r in results:
        by_family[family_of.get(r["model"], "?")].append(r)
    cores = len(os.sched_getaffinity(0))
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    big = sorted(n for n, p in params.items() if p >= MAX_PARAMS)
    n = len(results)
    lines = [
        "# Model coverage: a random timm sample",
        "",
        "Written by `make test-zoo` (tests/graph/test_wide_zoo.py, each model checked by",
        "tests/graph/zoo_check.py in its own process); do not edit by hand. CI (`.ci/run`) runs the same",
        "command after `make test` with a deadline 80 minutes after its start: models not reached by then",
        "are listed, not failed.",
        "",
        *([f"**Partial sample: {n} of the {planned} planned models have run"
           f"{f'; {len(not_reached)} not reached before the deadline' if not_reached else ''}.**", ""] if partial else []),
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
        f"model within [{zoo_check.ERROR_8_BOUNDS[0]:g}, {zoo_check.ERROR_8_BOUNDS[1]:g}] (RMS difference over the float "
        "output's RMS deviation; for a float model that already moves by f when its input is rounded to 8 bits, up to "
        "the upper bound plus f and below the error of the best output that ignores the input); then "
        f"`mpqfx.export.deploy` at uniform 4/4 calibrated on the test's {zoo_check.CALIBRATION_IMAGES} images, "
        "`export_onnx`, every quantized layer an integer kernel in onnxruntime's optimized graph, and the "
        f"ONNX file's top-1 agreement with the deployed module in float64 on {zoo_check.EXPORT_IMAGES} other images not "
        f"significantly below the noise floor (the float32 deployed module against the same reference): a one-sided "
        f"exact sign test on the images where only one of the two agrees, failing at p < {zoo_check.AGREEMENT_ALPHA:g}. "
        "Uniform w/a is every layer at its allowed bit-width nearest w/a (default recipe: 6/6 inside, 8/8 first and "
        "last), each policy's activation steps fitted on its own forward",
        f"- result{' so far' if partial else ''}: **{len(passed)} of {n} pass all checks ({len(passed) / max(n, 1):.1%})**; "
        f"**{len(integer)} of {n} ({len(integer) / max(n, 1):.1%}) export with every quantized layer an integer kernel**"
        f" ({len(exported)} exported); {len(agreeing)} of the {len(exported)} exported agree with the float64 module "
        "within the noise floor (sign test)",
        *time_lines(results, planned, wall_s, settings),
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
    if not_reached:
        lines += ["", "## Not reached before the deadline", "", ", ".join(f"`{m}`" for m in not_reached)]
    if big or uncreatable:
        lines += ["", "## Passed over", ""]
        lines += [f"- `{n}`: {params[n] / 1e6:.0f}M parameters" for n in big]
        lines += [f"- `{n}`: cannot be created offline ({why})" for n, why in sorted(uncreatable.items())]
    atomic_write_text(DOC, "\n".join(lines) + "\n")


@dataclasses.dataclass(frozen=True)
class Settings:
    """The run's environment (module docstring)."""

    workers: int
    threads: int
    timeout: float  # CPU seconds
    memory_gib: float
    deadline: float  # Unix time; inf: none

    @classmethod
    def from_env(cls) -> Settings:
        deadline = os.environ.get("MPQFX_ZOO_DEADLINE", "")
        return cls(int(os.environ.get("MPQFX_ZOO_WORKERS", "1")), int(os.environ.get("MPQFX_ZOO_THREADS", "2")),
                   float(os.environ.get("MPQFX_ZOO_TIMEOUT", "600")), float(os.environ.get("MPQFX_ZOO_MEMORY_GIB", "8")),
                   float(deadline) if deadline else math.inf)

    def describe(self) -> str:
        return (f"`MPQFX_ZOO_WORKERS={self.workers} MPQFX_ZOO_THREADS={self.threads} MPQFX_ZOO_TIMEOUT={self.timeout:.0f} "
                f"MPQFX_ZOO_MEMORY_GIB={self.memory_gib:g} python -m pytest -m slow tests/graph/test_wide_zoo.py` "
                f"(one process per model, killed after {self.timeout:.0f} s of CPU, {WALL_FACTOR * self.timeout:.0f} s of "
                f"wall time or above {self.memory_gib:g} GiB resident"
                f"{'' if math.isinf(self.deadline) else ', no model started after the deadline MPQFX_ZOO_DEADLINE'})")


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
    settings = Settings.from_env()
    start = time.perf_counter()
    not_reached: list[str] = []

    def record() -> None:
        wall = wall_before + time.perf_counter() - start
        cache.set(f"{key}-wall-s", wall)
        write_doc([done[n] for n in sample if n in done], len(sample), params, uncreatable, pool, wall,
                  settings.describe(), sorted(not_reached))

    with ThreadPoolExecutor(settings.workers) as pool_:
        futures = {pool_.submit(run_before, n, settings.timeout, settings.memory_gib, settings.deadline): n
                   for n in todo}
        for future in as_completed(futures):
            result = future.result()
            if result is None:
                not_reached.append(futures[future])
                continue
            done[result["model"]] = result
            cache.set(key, done)
            record()
            print(f"[{len(done)}/{len(sample)}] {result['model']}: "
                  f"{'ok' if result['ok'] else result['reason'][:160]} ({result.get('time_s', '?')} s)", flush=True)
    record()
    if not_reached:
        print(f"{len(not_reached)} of {len(sample)} models not reached before the deadline: "
              f"{', '.join(sorted(not_reached))}", flush=True)
    results = [done[n] for n in sample if n in done]
    assert all(r.get("quantized_layers") and r["integer_layers"] == r["quantized_layers"] for r in results if r["ok"])
    failed = [f"{r['model']}: {r['reason']}" for r in results if not r["ok"]]
    assert len(failed) <= (1 - GOAL) * len(sample), "\n".join(failed)


def check_chosen(names: list[str]) -> None:
    """``MPQFX_ZOO_MODELS``: check these models one after the other, each in its own process; all must pass."""
    settings = Settings.from_env()
    results = []
    for name in names:
        result = run_check(name, settings.timeout, settings.memory_gib)
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
        assert zoo_check.agrees(result)


def fake_checker(tmp_path: Path, body: str) -> Path:
    """A stand-in for zoo_check.py: ``body`` runs, then it prints a passing result for its model."""
    script = tmp_path / "checker.py"
    script.write_text(f"import json, sys, time\n{body}\nprint(json.dumps({{'model': sys.argv[1], 'ok': True}}))\n")
    return script


def test_a_check_above_its_memory_limit_is_killed_and_fails(tmp_path, monkeypatch):
    monkeypatch.setitem(globals(), "CHECKER", fake_checker(tmp_path, "x = b\"x\" * (400 * 2**20); time.sleep(30)"))
    start = time.perf_counter()
    result = run_check("m", cpu_s=60, memory_gib=0.25)
    assert time.perf_counter() - start < 15
    assert result["ok"] is False and result["killed"] == "memory"
    assert result["reason"].startswith("killed at 0.") and result["reason"].endswith("GiB resident (limit 0.25 GiB)")


def test_a_check_past_its_cpu_limit_fails(tmp_path, monkeypatch):
    monkeypatch.setitem(globals(), "CHECKER", fake_checker(tmp_path, "while True: pass"))
    result = run_check("m", cpu_s=0.5, memory_gib=8, wall_s=60)  # the CPU limit kills it, however loaded the machine
    assert (result["ok"], result["killed"], result["reason"]) == (False, "cpu", "timeout: killed after 0.5 s of CPU")


def test_a_hung_check_fails_at_its_wall_limit_but_one_cut_by_the_deadline_is_not_reached(tmp_path, monkeypatch):
    monkeypatch.setitem(globals(), "CHECKER", fake_checker(tmp_path, "time.sleep(60)"))  # no CPU
    result = run_before("m", cpu_s=0.2, memory_gib=8, deadline=time.time() + 60)
    assert (result["ok"], result["killed"]) == (False, "wall")
    assert result["reason"].startswith(f"timeout: killed after {0.2 * WALL_FACTOR:.0f} s of wall time")
    start = time.perf_counter()
    assert run_before("m", cpu_s=60, memory_gib=8, deadline=time.time() + 2) is None
    assert time.perf_counter() - start < 10
    assert run_before("m", cpu_s=60, memory_gib=8, deadline=time.time() - 1) is None  # not started


def test_a_check_that_ends_before_the_deadline_is_its_result(tmp_path, monkeypatch):
    monkeypatch.setitem(globals(), "CHECKER", fake_checker(tmp_path, "x = bytearray(100 * 2**20)"))
    assert run_before("m", cpu_s=60, memory_gib=8, deadline=time.time() + 60) == {"model": "m", "ok": True}


def test_the_cache_fingerprint_changes_with_a_source_or_a_recipe(tmp_path, monkeypatch):
    (tmp_path / "mpqfx" / "export").mkdir(parents=True)
    (tmp_path / "recipes").mkdir()
    source, recipe = tmp_path / "mpqfx" / "export" / "qdq.py", tmp_path / "recipes" / "oneshot.yaml"
    source.write_text("x = 1\n")
    recipe.write_text("train: {epochs: 1}\n")
    monkeypatch.setitem(globals(), "ROOT", tmp_path)
    first = fingerprint()
    recipe.write_text("train: {epochs: 2}\n")
    second = fingerprint()
    source.write_text("x = 2\n")
    assert len({first, second, fingerprint()}) == 3


@pytest.mark.parametrize("worse, better, p", [
    (0, 0, 1.0),  # nothing discordant: no evidence against the export
    (2, 0, 1 / 4),  # maxvit_tiny_tf_384 on 8 images (float32 5 of 8, ONNX 3 of 8): chance explains it
    (5, 0, 1 / 32),
    (5, 1, 7 / 64),  # (C(6,5) + C(6,6)) / 2^6
    (16, 0, 1 / 2 ** 16),  # every image lost
])
def test_the_agreement_sign_test_against_hand_counts(worse, better, p):
    assert zoo_check.sign_test_p(worse, better) == pytest.approx(p)
    assert zoo_check.agrees({"worse": worse, "better": better}) is (p >= zoo_check.AGREEMENT_ALPHA)


def test_each_uniform_policy_fits_its_own_activation_steps():
    """What the checker relies on: after a 4/4 forward, ``refit_quantizers`` makes the 8/8 output the
    one a fresh supernet gives (without it the first and last layers keep steps fitted under 4/4)."""
    import timm

    import mpqfx

    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))

    def fresh() -> mpqfx.Supernet:
        torch.manual_seed(0)
        return mpqfx.prepare(timm.create_model("test_efficientnet"), example_input=x[:1]).eval()

    with torch.no_grad():
        direct = fresh()
        direct.set_policy(mpqfx.Policy.uniform(direct, 8))
        expected = direct(x)
        after = fresh()
        after.set_policy(mpqfx.Policy.uniform(after, 4))
        after(x)
        after.set_policy(mpqfx.Policy.uniform(after, 8))
        stale = after(x)
        after.refit_quantizers()
        refitted = after(x)
    assert not torch.equal(stale, expected)  # the leak the checker avoids is real on this model
    assert torch.equal(refitted, expected)


def test_the_8_bit_lower_bound_follows_an_insensitive_model_but_never_reaches_zero():
    ref = torch.arange(8.0).reshape(2, 4)
    assert zoo_check.error_8_bounds(0.2, ref)[0] == zoo_check.ERROR_8_BOUNDS[0]
    assert zoo_check.error_8_bounds(7.57e-6, ref)[0] == pytest.approx(7.57e-5)  # vit_pe_core_tiny_patch16_384
    assert zoo_check.error_8_bounds(0.0, ref)[0] == zoo_check.MIN_ERROR_8  # a no-op quantizer's 0 still fails
