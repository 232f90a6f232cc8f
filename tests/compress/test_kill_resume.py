"""``mpqfx compress`` killed with SIGKILL during the float warm start, supernet training and search,
then resumed with ``--resume``, ends exactly like an uninterrupted run; at every kill point each
file in the run directory is whole (the only partial files are atomic-write temporaries, which
the resume removes)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import torch
import yaml

from mpqfx.export.integer_file import read_integer_file
from mpqfx.export.onnx_qdq import load_onnx
from mpqfx.integrity import intact
from mpqfx.recipe import Recipe

# Runs the CLI with one function wrapped so that the process SIGKILLs itself (or sends itself
# $KILL_SIGNAL) at a chosen moment:
# KIND=float|supernet: after training step N of that phase; KIND=search: at the N-th ILP search.
KILLER = """
import os, signal, sys
kind, n = sys.argv.pop(1), int(sys.argv.pop(1))
sig = getattr(signal, os.environ.get("KILL_SIGNAL", "SIGKILL"))
signal.signal(signal.SIGINT, signal.default_int_handler)  # a shell's background job inherits SIGINT ignored
from mpqfx.search.ilp import IlpSearch
from mpqfx.train.loop import Trainer
if kind == "search":
    calls, real_run = [0], IlpSearch.run
    def run(self, constraints):
        calls[0] += 1
        if calls[0] == n:
            os.kill(os.getpid(), sig)
        return real_run(self, constraints)
    IlpSearch.run = run
else:
    real_update = Trainer._update_schedules
    def update(self):
        real_update(self)
        if (self.recipe.strategy.name == "float") == (kind == "float") and self.global_step == n:
            os.kill(os.getpid(), sig)
    Trainer._update_schedules = update
from mpqfx.cli.main import main
sys.argv[0] = "mpqfx"
main()
"""

TARGETS = ("uniform:4", "uniform:3", "size=6x")


@pytest.fixture(scope="module")
def tiny_recipe(tmp_path_factory):
    """quickstart with 2 float + 2 supernet epochs of 4 steps, a checkpoint every 3 steps."""
    data = Recipe.load("quickstart").to_dict()
    data["name"] = "tiny"
    data["warm_start"]["epochs"] = 2
    data["train"].update(epochs=2, batch_size=32, checkpoint_every=3, log_every=1)
    data["evaluate"].update(bn_images=64, search_images=64, batch_size=64)
    data["data"].update(train_images=128, val_images=64)
    path = tmp_path_factory.mktemp("recipe") / "tiny.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def compress(out, recipe, fashion_dir, kill=None, resume=False, env=None):
    args = ["--out", str(out), "--resume"] if resume else [
        "--model", "test_resnet", "--recipe", str(recipe), "--data-dir", str(fashion_dir), "--out", str(out),
        *[a for t in TARGETS for a in ("--target", t)]]
    command = [sys.executable, "-c", KILLER, *kill] if kill else [sys.executable, "-m", "mpqfx.cli.main"]
    return subprocess.run([*command, "compress", *args], capture_output=True, text=True,
                          env=None if env is None else {**os.environ, **env})


def assert_every_file_is_whole(root):
    for path in root.rglob("*"):
        if not path.is_file() or (path.name.startswith(".") and path.name.endswith(".tmp")):
            continue
        if path.suffix == ".pt":
            assert intact(torch.load(path, weights_only=True)), path
        elif path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".jsonl":
            assert all(json.loads(line) for line in path.read_text().splitlines()), path
        elif path.suffix == ".yaml":
            assert yaml.safe_load(path.read_text()), path
        elif path.suffix == ".png":
            data = path.read_bytes()
            assert data.startswith(b"\x89PNG") and data.endswith(b"IEND\xaeB`\x82"), path
        elif path.suffix == ".safetensors":
            read_integer_file(path)
        elif path.suffix == ".onnx":
            load_onnx(path)


def outcome(root):
    """Everything a run ends with, minus timings and its own path."""
    report = json.loads((root / "report.json").read_text().replace(str(root), "RUN"))
    report.pop("seconds")
    report.pop("cpu_seconds")
    policies = {p.name: p.read_text() for p in sorted((root / "policies").iterdir())}
    state = torch.load(root / "supernet.pt", weights_only=True)["state_dict"]
    return report, policies, state


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_recipe, fashion_dir):
    root = tmp_path_factory.mktemp("whole") / "run"
    proc = compress(root, tiny_recipe, fashion_dir)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return outcome(root)


@pytest.mark.parametrize("kill", [pytest.param(("float", "6"), marks=pytest.mark.slow), ("supernet", "5"),
                                  pytest.param(("search", "2"), marks=pytest.mark.slow)],
                         ids=["during-float-warm-start", "during-supernet-training", "during-search"])
def test_killed_and_resumed_run_equals_an_uninterrupted_one(kill, uninterrupted, tiny_recipe, fashion_dir, tmp_path):
    root = tmp_path / "run"
    proc = compress(root, tiny_recipe, fashion_dir, kill=kill)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert not (root / "report.json").exists()
    assert_every_file_is_whole(root)
    if kill[0] == "search":
        assert (root / "supernet.pt").is_file() and len(list((root / "policies").iterdir())) == 1

    before = json.loads((root / "run.json").read_text()).get("seconds", {"wall": {}})["wall"]  # finished phases
    cut = {"float": ("warm start", root / "float"), "supernet": ("supernet training", root)}.get(kill[0])
    if cut:  # the phase's last checkpoint carries the time of the steps before it
        before[cut[0]] = torch.load(cut[1] / "checkpoint.pt", weights_only=True)["seconds"]["wall"]
    assert set(before) == {"float": {"warm start"}, "supernet": {"warm start", "supernet training"},
                           "search": {"warm start", "supernet training"}}[kill[0]]

    proc = compress(root, tiny_recipe, fashion_dir, resume=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    seconds = json.loads((root / "report.json").read_text())["seconds"]
    assert all(seconds[phase] >= spent > 0 for phase, spent in before.items())  # the earlier process's time is kept
    assert_every_file_is_whole(root)
    assert not list(root.rglob(".*.tmp"))
    report, policies, state = outcome(root)
    expected_report, expected_policies, expected_state = uninterrupted
    assert policies == expected_policies
    assert report == expected_report
    assert state.keys() == expected_state.keys()
    assert all(torch.equal(state[k], expected_state[k]) for k in state)


def test_ctrl_c_names_the_phase_and_the_command_and_the_resume_says_where_it_continues(
        uninterrupted, tiny_recipe, fashion_dir, tmp_path):
    root = tmp_path / "run"
    proc = compress(root, tiny_recipe, fashion_dir, kill=("supernet", "6"), env={"KILL_SIGNAL": "SIGINT"})
    assert proc.returncode == 130, proc.stderr[-2000:]
    command = f"mpqfx compress --out {root} --resume"
    # checkpoints come at steps 3, 4 (the end of epoch 1) and 6; Ctrl-C arrives before step 6's is written
    assert proc.stderr.strip() == (f"mpqfx: interrupted during supernet training; `{command}` continues the run "
                                   "with supernet training at step 4 of 8 (checkpoint.pt)")
    step = 4

    proc = compress(root, tiny_recipe, fashion_dir, resume=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = " ".join(proc.stdout.split())  # rich wraps long lines
    assert f"resuming: the run continues with supernet training at step {step} of 8 (checkpoint.pt)" in out
    assert f"supernet training: resuming from checkpoint.pt at step {step} of 8 (epoch 2 of 2)" in out
    assert outcome(root)[1] == uninterrupted[1]  # the same policies as a run never stopped


@pytest.mark.slow  # tests/train covers the fallback to checkpoint.prev.pt in the Trainer
def test_a_damaged_last_checkpoint_falls_back_and_the_run_ends_the_same(uninterrupted, tiny_recipe, fashion_dir,
                                                                      tmp_path):
    root = tmp_path / "run"
    proc = compress(root, tiny_recipe, fashion_dir, kill=("supernet", "7"))
    assert proc.returncode == -signal.SIGKILL
    latest = root / "checkpoint.pt"
    latest.write_bytes(latest.read_bytes()[:4096])  # the last checkpoint (step 6) cut short
    proc = compress(root, tiny_recipe, fashion_dir, resume=True, env={"COLUMNS": "1000"})  # no path cut by a wrap
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = " ".join(proc.stdout.split())
    assert "checkpoint.pt' is corrupt or truncated" in out and "resuming from checkpoint.prev.pt at step 4 of 8" in out
    steps = [json.loads(line)["step"] for line in (root / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9))
    report, policies, state = outcome(root)
    assert (report, policies) == uninterrupted[:2]
    assert all(torch.equal(state[k], uninterrupted[2][k]) for k in state)
