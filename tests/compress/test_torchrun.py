"""`torchrun -m mpqfx compress` with 2 CPU processes (gloo): both train, rank 0 alone writes the run directory.

Each process gets a ``sitecustomize`` that sets its umask (rank 0: 022, rank 1: 077, so a file rank 1
made would be 0o600) and, on rank 1, records every write, rename, removal or mkdir Python makes
inside the run directory (audit hooks); the run directory must show none.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

SITECUSTOMIZE = textwrap.dedent('''
    import atexit, json, os, sys
    rank = os.environ.get("RANK")
    if rank is not None:
        os.umask(0o022 if rank == "0" else 0o077)
    if rank not in (None, "0"):
        watched = os.path.realpath(os.environ["MPQFX_TEST_WATCH"])
        writes = []
        FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
        EVENTS = ("os.rename", "os.remove", "os.mkdir", "os.rmdir", "os.chmod", "os.truncate", "os.link", "os.symlink")

        def inside(path):
            try:
                return os.path.realpath(os.fsdecode(path)).startswith(watched + os.sep)
            except TypeError:  # a file descriptor
                return False

        def hook(event, args):
            if event == "open":
                path, mode, flags = args
                if ((isinstance(mode, str) and any(c in mode for c in "wax+")) or (flags or 0) & FLAGS) and inside(path):
                    writes.append([event, os.fsdecode(path)])
            elif event in EVENTS and inside(args[0]):
                writes.append([event, os.fsdecode(args[0])])

        sys.addaudithook(hook)
        atexit.register(lambda: open(f"{watched}.writes{rank}.json", "w").write(json.dumps(writes)))
''')


def torchrun_compress(tmp_path, run, *args):
    hooks = tmp_path / "hooks"
    hooks.mkdir(exist_ok=True)
    (hooks / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "MPQFX_TEST_WATCH": str(run), "COLUMNS": "100",
           "PYTHONPATH": os.pathsep.join([str(hooks), *filter(None, [os.environ.get("PYTHONPATH")])])}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "mpqfx", "compress", "--out", str(run), *map(str, args)],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)


def assert_written_by_rank_0_alone(run):
    assert json.loads(run.with_name(f"{run.name}.writes1.json").read_text()) == []  # rank 1 ran and wrote nothing
    files = [p for p in run.rglob("*") if p.is_file()]
    assert {p.relative_to(run).as_posix(): oct(p.stat().st_mode & 0o777) for p in files} == {
        p.relative_to(run).as_posix(): "0o644" for p in files}
    assert {oct(p.stat().st_mode & 0o777) for p in run.rglob("*") if p.is_dir()} == {"0o755"}


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory, write_imagefolder):
    tmp_path = tmp_path_factory.mktemp("torchrun")
    folder = write_imagefolder(tmp_path / "folder", train=8, val=2)  # 3 classes: 24 training, 6 held-out images
    run = tmp_path / "run"
    proc = torchrun_compress(tmp_path, run, "--model", "test_resnet", "--data", folder, "--target", "uniform:4",
                             "--epochs", "1", "--batch-size", "8")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return tmp_path, run, proc


def test_two_processes_train_and_rank_0_alone_writes_the_whole_run_directory(ddp_run):
    _, run, proc = ddp_run
    for name in ("run.json", "recipe.yaml", "float.pt", "float.json", "float/checkpoint.pt", "checkpoint.pt",
                 "supernet.pt", "metrics.jsonl", "report.json", "report.md", "pareto.png", "bits.png",
                 "policies/mixed@uniform-4.yaml", "export/mixed@uniform-4.onnx", "export/mixed@uniform-4.safetensors"):
        assert (run / name).is_file(), name
    assert_written_by_rank_0_alone(run)
    report = json.loads((run / "report.json").read_text())
    assert [p["name"] for p in report["policies"]] == ["float", "uniform 8/8", "uniform 4/4", "uniform 3/3",
                                                       "searched uniform:4"]
    assert report["images"]["train"] == 24 and report["images"]["held_out"] == 6
    assert report["policies"][-1]["exports"]["onnx_images"] == 6
    # --batch-size 8 is the global batch: 24 images / 8 = 3 steps an epoch (4 images a step on each rank)
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [3]
    assert len(torch.load(run / "checkpoint.pt", weights_only=True)["rng"]) == 2  # both ranks' RNG states
    assert proc.stdout.count("mpqfx: run directory:") == 1 and proc.stdout.count("\nreport: ") == 1  # rank 0 speaks
    assert "2 processes (gloo) train, each on 1/2 of every batch of 8" in " ".join(proc.stdout.split())


@pytest.mark.slow
def test_resume_under_torchrun_continues_from_the_two_process_checkpoint(ddp_run):
    tmp_path, first, _ = ddp_run
    run = shutil.copytree(first, tmp_path / "resumed")
    for name in ("supernet.pt", "report.json", "report.md", "pareto.png", "bits.png", "search-selection.json"):
        (run / name).unlink()
    for name in ("policies", "export"):
        shutil.rmtree(run / name)
    proc = torchrun_compress(tmp_path, run, "--resume")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "resuming from checkpoint.pt at step 3 of 3" in " ".join(proc.stdout.split())
    assert_written_by_rank_0_alone(run)
    before, after = (torch.load(r / "supernet.pt", weights_only=True)["state_dict"] for r in (first, run))
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    rows = [json.loads((r / "report.json").read_text())["policies"] for r in (first, run)]
    assert [(p["name"], p["accuracy"]) for p in rows[1]] == [(p["name"], p["accuracy"]) for p in rows[0]]
    assert (run / "export" / "mixed@uniform-4.onnx").is_file()


@pytest.mark.cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")
def test_two_gpus_train_with_nccl_and_rank_0_alone_writes_the_run_directory(tmp_path, fashion_dir):
    run = tmp_path / "run"
    proc = torchrun_compress(tmp_path, run, "--model", "test_resnet", "--data-dir", fashion_dir, "--device", "cuda",
                             "--target", "uniform:4", "--epochs", "1", "--batch-size", "64", "--train-images", "512",
                             "--val-images", "128")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 processes (nccl) train, each on 1/2 of every batch of 64" in " ".join(proc.stdout.split())
    assert_written_by_rank_0_alone(run)
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()][-1] == 512 // 64
    assert len(torch.load(run / "checkpoint.pt", weights_only=True)["rng"]) == 2
    report = json.loads((run / "report.json").read_text())
    exports = report["policies"][-1]["exports"]
    assert report["images"]["held_out"] == 128 and exports["onnx_integer_kernels"] == exports["onnx_layers"] > 0

