"""`mpqfx compress` end to end through the CLI with tiny settings, and the commands around it."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import timm
import torch
import yaml

import mpqfx
from mpqfx import Policy
from mpqfx.cli.tables import print_report_summary
from mpqfx.errors import MpqfxError
from mpqfx.export import load_integer_model
from mpqfx.export.integer_file import read_integer_file
from mpqfx.export.run import export_policy
from mpqfx.search import parse_target
from mpqfx.store import load_supernet

TARGETS = ["uniform:4", "bitops=uniform:6,size=6x"]


UMASK = 0o027  # the run is made under it: files must come out 0o640, not mkstemp's 0o600


def mpqfx_cli(*args, env=None, umask=None):
    return subprocess.run([sys.executable, "-m", "mpqfx.cli.main", *map(str, args)], capture_output=True, text=True,
                          env=env, preexec_fn=None if umask is None else (lambda: os.umask(umask)))


def one_line_error(proc, message):
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in proc.stderr, proc.stderr


@pytest.fixture(scope="module")
def run(tmp_path_factory, fashion_dir):
    root = tmp_path_factory.mktemp("compress") / "run"
    targets = [a for t in TARGETS for a in ("--target", t)]
    proc = mpqfx_cli("compress", "--model", "test_resnet", "--data-dir", fashion_dir, "--train-images", 128,
                     "--val-images", 64, "--batch-size", 32, "--out", root, *targets,
                     env={**os.environ, "COLUMNS": "80"}, umask=UMASK)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root, proc


def test_run_directory_holds_every_promised_file(run):
    root, proc = run
    for name in ("run.json", "recipe.yaml", "float.pt", "supernet.pt", "checkpoint.pt", "metrics.jsonl",
                 "report.json", "report.md", "pareto.png", "bits.png", "float/checkpoint.pt"):
        assert (root / name).is_file(), name
    for png in ("pareto.png", "bits.png"):
        assert (root / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (root / "policies").iterdir()) == ["mixed@bitops-uniform-6_size-6x.yaml", "mixed@uniform-4.yaml"]
    exports = sorted(p.name for p in (root / "export").iterdir())
    assert exports == sorted(f"{s}.{e}" for s in ("mixed@bitops-uniform-6_size-6x", "mixed@uniform-4") for e in ("onnx", "safetensors"))
    assert str(root) in proc.stdout and "uniform 4/4" in proc.stdout and "report.md" in proc.stdout
    for line in (root / "metrics.jsonl").read_text().splitlines():
        assert "loss" in json.loads(line)


def test_every_file_follows_the_umask(run):
    root, _ = run
    files = [p for p in root.rglob("*") if p.is_file()]
    assert len(files) >= 20  # report, figures, policies, exports, checkpoints, run records
    assert {p.relative_to(root).as_posix(): oct(p.stat().st_mode & 0o777) for p in files} == {
        p.relative_to(root).as_posix(): oct(0o666 & ~UMASK) for p in files}
    assert {oct(p.stat().st_mode & 0o777) for p in root.rglob("*") if p.is_dir()} == {oct(0o777 & ~UMASK)}


def test_the_summary_table_fits_80_columns_without_splitting_names(run):
    root, proc = run
    table = proc.stdout[proc.stdout.index(f"\nrun {root}") + 1:]
    assert max(len(line) for line in table.splitlines()) <= 80
    rows = [line for line in table.splitlines() if line.startswith("│")]
    assert [line.split("│")[1].strip() for line in rows if line.split("│")[1].strip()] == [
        "float", "uniform 8/8", "uniform 4/4", "uniform 3/3", "mixed", "mixed"]
    budgets = " ".join(line.split("│")[2].strip() for line in rows)
    assert "uniform:4" in budgets and "bitops=uniform:6, size=6x" in budgets  # a joint budget wraps between terms


def test_the_report_states_actual_counts_input_size_and_versions(run):
    root, _ = run
    report = json.loads((root / "report.json").read_text())
    assert report["images"] == {"train": 128, "held_out": 64, "bn_calibration": 128, "search": 128}
    assert report["input_size"] == [1, 32, 32]
    assert json.loads((root / "run.json").read_text())["input_size"] == [1, 32, 32]
    assert report["versions"]["torch"] == torch.__version__ and report["versions"]["timm"] == timm.__version__
    assert report["versions"]["mpqfx"] == mpqfx.__version__
    markdown = (root / "report.md").read_text()
    assert "128 training and 64 held-out images at input 1x32x32" in markdown
    assert f"torch {torch.__version__}" in markdown


def tree_digest(root, skip=("searches",)):
    """SHA-256 of every file of a run directory, by relative path, outside ``skip``."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
            if p.is_file() and p.relative_to(root).parts[0] not in skip}


def test_a_later_search_changes_nothing_the_run_reported_and_the_report_can_add_it(run, tmp_path):
    root = shutil.copytree(run[0], tmp_path / "run")
    before = tree_digest(root)
    report_before = json.loads((root / "report.json").read_text())
    proc = mpqfx_cli("search", "--run", root, "--target", "uniform:4", "--target", "uniform:3", "--option",
                     "objective=limpq", "--json")
    assert proc.returncode == 0, proc.stderr
    assert tree_digest(root) == before  # report, figures, policies, exports: byte-identical
    found = json.loads(proc.stdout)
    folder = root / "searches" / "ilp-objective=limpq"
    assert [Path(r["policy_file"]) for r in found] == [folder / "mixed@uniform-4.yaml", folder / "mixed@uniform-3.yaml"]
    kept = tree_digest(root, skip=())
    again = mpqfx_cli("search", "--run", root, "--target", "uniform:4", "--option", "objective=limpq", "--device", "cpu",
                      env={**os.environ, "COLUMNS": "80"})
    assert again.returncode == 0, again.stderr
    assert tree_digest(root, skip=()) == kept  # the same policy found again: nothing changes
    assert max(len(line) for line in again.stdout.splitlines()) <= 80
    cells = [line.split("│")[1].strip() for line in again.stdout.splitlines() if line.startswith("│")]
    assert cells == ["uniform:4", "mixed@uniform-4.yaml"]  # budget and file name each whole, in the one cell

    net, _ = load_supernet(root)
    Policy.max(net).save(root / "searches" / "mine" / "mixed@uniform-4.yaml")  # what an earlier, other search left
    kept = tree_digest(root, skip=())
    conflict = mpqfx_cli("search", "--run", root, "--target", "uniform:3", "--target", "uniform:4", "--name", "mine")
    one_line_error(conflict, "mine/mixed@uniform-4.yaml' already holds a different policy for this target")
    assert tree_digest(root, skip=()) == kept  # refused before writing anything, mixed@uniform-3.yaml included
    shutil.rmtree(root / "searches" / "mine")
    one_line_error(mpqfx_cli("search", "--run", root, "--target", "uniform:4", "--out", root / "policies"),
                   "holds the policies `mpqfx compress` evaluated, reported and exported")
    assert tree_digest(root) == before

    proc = mpqfx_cli("report", "--run", root, "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((root / "report.json").read_text())
    assert report["policies"] == report_before["policies"]  # the run's own rows stay as they were
    later = report["searches"]
    assert [(r["search"], r["target"]) for r in later] == [("ilp-objective=limpq", "uniform:4"),
                                                           ("ilp-objective=limpq", "uniform:3")]
    for entry in later:
        assert 0 <= entry["accuracy"] <= 1
        assert entry["bitops"] == mpqfx.bitops(net, Policy.load(entry["policy_file"])).total
    assert [p["kind"] for p in json.loads(proc.stdout)["policies"]][-2:] == ["searched", "searched"]
    markdown = (root / "report.md").read_text()
    assert "## Later searches" in markdown and "| ilp-objective=limpq | mixed (`ilp-objective=limpq/mixed@uniform-3`) | uniform:3 |" in markdown
    for name in ("policies", "export"):
        assert {k: v for k, v in tree_digest(root).items() if k.startswith(name)} == {
            k: v for k, v in before.items() if k.startswith(name)}


def test_compress_json_prints_only_json_on_stdout(run, tmp_path):
    root = shutil.copytree(run[0], tmp_path / "run")
    proc = mpqfx_cli("compress", "--out", root, "--resume", "--json", "--no-export")  # the export: the tests below
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)  # progress bars and log lines went to stderr
    report = json.loads((root / "report.json").read_text())
    assert summary["run_dir"] == str(root) and summary["images"] == report["images"]
    assert [(p["name"], p["accuracy"]) for p in summary["policies"]] == [
        (p["name"], p["accuracy"]) for p in report["policies"]]
    assert "resuming: the run continues with the evaluation (warm start, supernet training and search are done)" \
        in " ".join(proc.stderr.split())


def test_a_failed_export_is_a_row_of_the_report_and_the_other_policies_still_export(run, tmp_path, monkeypatch,
                                                                                    capsys):
    """A resume whose export of mixed@uniform-4 raises (as the ONNX exporter can) writes the whole report, exports
    the other policy and ends with exit code 1 and one line naming mixed@uniform-4; the next resume exports it."""
    from mpqfx.cli.main import main
    from mpqfx.compress import pipeline

    root = shutil.copytree(run[0], tmp_path / "run")
    for name in ("report.json", "report.md", "pareto.png", "bits.png"):
        (root / name).unlink()
    shutil.rmtree(root / "export")
    real = pipeline.export_policy_files

    def failing(net, policy, paths, *args, **kwargs):
        if paths["onnx"].stem == "mixed@uniform-4":
            raise RuntimeError("exporter crashed at /layer1/conv1\n  a second line")
        return real(net, policy, paths, *args, **kwargs)

    monkeypatch.setattr(pipeline, "export_policy_files", failing)
    monkeypatch.setattr(sys, "argv", ["mpqfx", "compress", "--out", str(root), "--resume"])
    with pytest.raises(SystemExit) as ended:
        main()
    out, err = capsys.readouterr()
    reason = "RuntimeError: exporter crashed at /layer1/conv1"
    assert ended.value.code == 1 and "Traceback" not in err
    assert err.strip().splitlines() == [f"mpqfx: error: export failed for policy mixed@uniform-4 ({reason}); the other "
                                        f"policies were exported and {root / 'report.md'} reports every row"]
    # the summary first; rich wraps a long path anywhere, even inside a word
    assert "uniform 4/4" in out and f"report:{root / 'report.md'}" in "".join(out.split())
    for name in ("report.json", "report.md", "pareto.png", "bits.png"):
        assert (root / name).is_file(), name
    report = json.loads((root / "report.json").read_text())
    assert [p["kind"] for p in report["policies"]] == ["float", "uniform", "uniform", "uniform", "searched", "searched"]
    failed, exported = [p for p in report["policies"] if p["kind"] == "searched"]
    assert (failed["target"], failed["export_error"], failed["exports"]) == ("uniform:4", reason, {})
    assert 0 <= failed["accuracy"] <= 1  # measured on the supernet like every row
    assert exported["export_error"] is None and exported["exports"]["onnx_integer_kernels"] > 0
    assert sorted(p.name for p in (root / "export").iterdir()) == ["mixed@bitops-uniform-6_size-6x.onnx",
                                                                   "mixed@bitops-uniform-6_size-6x.safetensors"]
    markdown = (root / "report.md").read_text()
    assert f"- uniform:4 (`mixed@uniform-4`): {reason}\n" in markdown and "## Time per phase" in markdown

    monkeypatch.setattr(pipeline, "export_policy_files", real)  # whatever failed is fixed: the next resume exports it
    with pytest.raises(SystemExit) as ended:
        main()
    assert ended.value.code == 0, capsys.readouterr().err
    report = json.loads((root / "report.json").read_text())
    assert [p["export_error"] for p in report["policies"]] == [None] * 6
    assert (root / "export" / "mixed@uniform-4.onnx").is_file() and "Failed exports" not in (root / "report.md").read_text()


def test_the_report_is_regenerated_byte_for_byte(run, tmp_path):
    root = shutil.copytree(run[0], tmp_path / "run")
    before = tree_digest(root)
    proc = mpqfx_cli("report", "--run", root, "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    assert tree_digest(root) == before


def test_report_lists_float_uniform_and_searched_with_exact_bitops(run):
    root, _ = run
    report = json.loads((root / "report.json").read_text())
    net, _ = load_supernet(root)
    kinds = [p["kind"] for p in report["policies"]]
    assert kinds == ["float", "uniform", "uniform", "uniform", "searched", "searched"]
    assert [p["name"] for p in report["policies"]][1:4] == ["uniform 8/8", "uniform 4/4", "uniform 3/3"]
    for entry in report["policies"]:
        policy = Policy.bypass(net.layers) if entry["bits"] is None else Policy({k: tuple(v) for k, v in entry["bits"].items()})
        cost = mpqfx.bitops(net, policy)
        assert entry["bitops"] == cost.total and entry["size_bits"] == cost.size_bits
        assert 0 <= entry["accuracy"] <= 1
    assert report["float_accuracy"] == report["policies"][0]["accuracy"]
    assert set(report["seconds"]) == {"warm start", "supernet training", "search", "evaluation", "export"}
    markdown = (root / "report.md").read_text()
    assert "Float accuracy" in markdown and "Per-layer bits" in markdown and "pareto.png" in markdown


def test_searched_policies_meet_their_targets(run):
    root, _ = run
    net, _ = load_supernet(root)
    report = json.loads((root / "report.json").read_text())
    searched = [p for p in report["policies"] if p["kind"] == "searched"]
    assert [p["target"] for p in searched] == TARGETS
    for entry in searched:
        policy = Policy.load(entry["policy_file"])
        assert parse_target(entry["target"], net).satisfied_by(net, policy)


def test_exported_onnx_runs_integer_kernels_computes_the_integer_file_and_is_measured_in_the_report(run):
    root, _ = run
    report = json.loads((root / "report.json").read_text())
    net, _ = load_supernet(root)
    x = torch.randn(4, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    for entry in [p for p in report["policies"] if p["kind"] == "searched"]:
        exports = entry["exports"]
        module = load_integer_model(exports["safetensors"])
        expected = module(x).detach().numpy()
        got = ort.InferenceSession(exports["onnx"], providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
        assert np.abs(got - expected).max() <= 1e-4 * (expected.max() - expected.min())
        assert exports["onnx_images"] == 64  # the whole held-out split
        assert exports["onnx_integer_kernels"] == exports["onnx_layers"] == len(net.layers)
        assert exports["onnx_supernet_accuracy"] == pytest.approx(entry["accuracy"])  # the row the report shows
        assert 0 <= exports["onnx_accuracy"] <= 1 and 0 <= exports["onnx_top1_agreement"] <= 1
        assert exports["onnx_bytes"] == (root / "export" / f"{Path(entry['policy_file']).stem}.onnx").stat().st_size
    markdown = (root / "report.md").read_text()
    assert "ONNX top-1" in markdown and f"{len(net.layers)}/{len(net.layers)}" in markdown


def test_export_command_writes_a_policy_again(run, tmp_path):
    root, _ = run
    out = tmp_path / "again.safetensors"
    proc = mpqfx_cli("export", "--run", root, "--policy", root / "policies" / "mixed@uniform-4.yaml", "--format",
                     "safetensors", "--out", out)
    assert proc.returncode == 0, proc.stderr
    x = torch.randn(2, 1, 32, 32)
    assert torch.equal(load_integer_model(out)(x), load_integer_model(root / "export" / "mixed@uniform-4.safetensors")(x))
    proc = mpqfx_cli("export", "--run", root, "--format", "double-rounding")  # needs no --policy
    one_line_error(proc, "weight_quantizer: double_rounding")


def _snapshot(root):
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _summary_names(report, root) -> list[str | None]:
    """The policy names `mpqfx report --json` prints for a report."""
    out = io.StringIO()
    with redirect_stdout(out):
        print_report_summary(report, root, as_json=True)
    return [row["policy_name"] for row in json.loads(out.getvalue())["policies"]]


def test_every_policy_of_the_report_is_exported_by_its_name(run, tmp_path):
    """The report names each row; `mpqfx export --policy NAME` takes that name, uniform policies included:
    uniform-4 is every layer at 4/4 (first and last at the recipe's 8/8), not the mixed@uniform-4 policy."""
    root = shutil.copytree(run[0], tmp_path / "run", ignore=shutil.ignore_patterns("checkpoint*.pt", "float"))
    report = json.loads((root / "report.json").read_text())
    names = [p["policy_name"] for p in report["policies"]]
    assert names == [None, "uniform-8", "uniform-4", "uniform-3", "mixed@uniform-4", "mixed@bitops-uniform-6_size-6x"]
    markdown = (root / "report.md").read_text()
    assert "| uniform 4/4 (`uniform-4`) |" in markdown and "| mixed (`mixed@uniform-4`) | uniform:4 |" in markdown
    assert _summary_names(report, root) == names
    proc = mpqfx_cli("export", "--run", root, "--policy", "uniform-4", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    onnx = root / "export" / "uniform-4.onnx"
    assert f"wrote {onnx}" in proc.stdout and "top-1 agreement" in proc.stdout and "64 held-out images" in proc.stdout
    assert "16/16 layers run as integer kernels" in proc.stdout
    weights, _ = export_policy(root, "uniform-4", "safetensors")
    assert weights == root / "export" / "uniform-4.safetensors"
    meta, _ = read_integer_file(weights)
    bits = {name: (layer["w_bits"], layer["a_bits"]) for name, layer in meta["layers"].items()}
    assert len(bits) == 16 and {bits.pop("conv1.0"), bits.pop("fc")} == {(8, 8)} and set(bits.values()) == {(4, 4)}
    x = torch.randn(4, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    expected = load_integer_model(weights)(x).detach().numpy()
    got = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
    assert np.abs(got - expected).max() <= 1e-4 * (expected.max() - expected.min())


def _old_layout(root: Path) -> None:
    """Rewrite a run directory as mpqfx wrote it before the mixed@ names: policies and exports named after
    the budget alone (uniform-4.yaml held the mixed policy), no policy_name in report.json."""
    for folder in (root / "policies", root / "export"):
        for path in folder.iterdir():
            path.rename(path.with_name(path.name.removeprefix("mixed@")))
    report = json.loads((root / "report.json").read_text())
    for row in report["policies"]:
        row.pop("policy_name")
        if row["policy_file"]:
            row["policy_file"] = row["policy_file"].replace("mixed@", "")
        row["exports"] = {k: v.replace("mixed@", "") if isinstance(v, str) else v for k, v in row["exports"].items()}
    (root / "report.json").write_text(json.dumps(report, indent=1))


def test_a_run_directory_of_the_old_names_still_loads_reports_resumes_and_exports(run, tmp_path):
    from mpqfx.compress.later import update_report
    from mpqfx.rundir import RunDir

    root = shutil.copytree(run[0], tmp_path / "run", ignore=shutil.ignore_patterns("checkpoint*.pt", "float"))
    _old_layout(root)
    assert sorted(p.name for p in (root / "policies").iterdir()) == ["bitops-uniform-6_size-6x.yaml", "uniform-4.yaml"]
    assert RunDir(root).restart_point() == "the evaluation (warm start, supernet training and search are done)"
    report = update_report(root)
    assert _summary_names(report, root) == [None, "uniform-8", "uniform-4", "uniform-3", "mixed@uniform-4",
                                            "mixed@bitops-uniform-6_size-6x"]  # old rows name none themselves
    assert "| mixed (`mixed@uniform-4`) | uniform:4 |" in (root / "report.md").read_text()
    old = yaml.safe_load((root / "policies" / "uniform-4.yaml").read_text())
    for name in ("mixed@uniform-4", "uniform:4"):  # the old file, by its new name and by its budget
        path, _ = export_policy(root, name, "safetensors", tmp_path / f"{name}.safetensors")
        assert read_integer_file(path)[0]["policy"] == old
    with pytest.raises(MpqfxError, match="export/uniform-4.* files hold the mixed policy mixed@uniform-4; pass --out"):
        export_policy(root, "uniform-4", "safetensors")  # the report's files stay what it says they are
    path, _ = export_policy(root, "uniform-4", "safetensors", tmp_path / "u4.safetensors")
    assert {(layer["w_bits"], layer["a_bits"]) for layer in read_integer_file(path)[0]["layers"].values()} == {
        (8, 8), (4, 4)}  # the uniform policy, not the old file
    with pytest.raises(MpqfxError, match="the run's policies: mixed@bitops-uniform-6_size-6x, mixed@uniform-4, "
                                         "uniform-8, uniform-4, uniform-3"):
        export_policy(root, "mixed@uniform-9", "safetensors")


@pytest.mark.parametrize("args, message", [
    (["--policy", "mixed@uniform-9"], "the run's policies: mixed@bitops-uniform-6_size-6x, mixed@uniform-4, uniform-8, "
                                         "uniform-4, uniform-3"),
    (["--policy", "uniform-5"], "--policy 'uniform-5': 5 bits is not a candidate of every searchable layer"),
    (["--policy", "uniform-4", "--opset", "11"], "--opset 11: the QDQ form needs opset 13 to 20"),
    (["--format", "onnx"], "--format onnx needs --policy"),
])
def test_bad_export_requests_are_one_line_and_change_nothing(run, args, message):
    root, _ = run
    before = _snapshot(root)
    one_line_error(mpqfx_cli("export", "--run", root, *args), message)
    assert _snapshot(root) == before


def test_export_needs_a_trained_supernet_and_onnxruntime(run, tmp_path):
    root, _ = run
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    for name in ("run.json", "recipe.yaml"):
        (unfinished / name).write_bytes((root / name).read_bytes())
    (unfinished / "policies").mkdir()
    (unfinished / "policies" / "mixed@uniform-4.yaml").write_bytes((root / "policies" / "mixed@uniform-4.yaml").read_bytes())
    one_line_error(mpqfx_cli("export", "--run", unfinished, "--policy", "uniform-4"), "has no trained supernet")
    blocker = tmp_path / "no-ort"
    (blocker / "onnxruntime").mkdir(parents=True)
    (blocker / "onnxruntime" / "__init__.py").write_text("raise ImportError('blocked for the test')\n")
    before = _snapshot(root)
    proc = mpqfx_cli("export", "--run", root, "--policy", "uniform-4", env={**os.environ, "PYTHONPATH": str(blocker)})
    one_line_error(proc, "needs the onnxruntime package, which is not installed: pip install onnxruntime")
    assert _snapshot(root) == before



def test_export_to_openvino_writes_the_ir_and_measures_it_in_openvino(run, tmp_path):
    root, _ = run
    out = tmp_path / "ir" / "uniform-4.xml"
    proc = mpqfx_cli("export", "--run", root, "--policy", "uniform-4", "--format", "openvino", "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert out.is_file() and out.with_suffix(".bin").is_file()
    assert sorted(p.name for p in out.parent.iterdir()) == ["uniform-4.bin", "uniform-4.xml"]  # no staged leftovers
    layers = len(load_supernet(root)[0].layers)
    assert "openvino: top-1" in proc.stdout and "64 held-out images" in proc.stdout
    assert f"{layers}/{layers} convolution/fully connected nodes run in u8/i8" in proc.stdout
    blocker = tmp_path / "no-openvino"
    (blocker / "openvino").mkdir(parents=True)
    (blocker / "openvino" / "__init__.py").write_text("raise ImportError('blocked for the test')\n")
    before = _snapshot(root)
    proc = mpqfx_cli("export", "--run", root, "--policy", "uniform-4", "--format", "openvino",
                     env={**os.environ, "PYTHONPATH": str(blocker)})
    one_line_error(proc, "--format openvino needs the openvino package, which is not installed: pip install 'mpqfx[openvino]'")
    assert _snapshot(root) == before

@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
@pytest.mark.parametrize("command", [["compress", "--model", "test_resnet", "--out", "{tmp}/r"],
                                     ["search", "--run", "{run}", "--target", "uniform:4"], ["report", "--run", "{run}"],
                                     ["export", "--run", "{run}", "--policy", "uniform-4", "--out", "{tmp}/r.onnx"]])
def test_device_cuda_without_one_is_one_line_and_writes_nothing(run, command, tmp_path):
    root, _ = run
    before = _snapshot(root)
    args = [a.format(tmp=tmp_path, run=root) for a in command]
    one_line_error(mpqfx_cli(*args, "--device", "cuda"), "--device cuda: this machine has no CUDA device that torch")
    assert _snapshot(root) == before and not list(tmp_path.iterdir())


def test_a_finished_run_is_not_overwritten(run, fashion_dir):
    root, _ = run
    before = (root / "report.json").read_bytes()
    proc = mpqfx_cli("compress", "--model", "test_resnet", "--data-dir", fashion_dir, "--out", root)
    one_line_error(proc, "already holds a run; pass --resume")
    assert (root / "report.json").read_bytes() == before


@pytest.mark.parametrize("args,message", [
    (["--pretrained"], "--pretrained: cannot fetch timm's pretrained weights for 'test_resnet'"),
    (["--pretrained"], "offline, download them elsewhere and pass the file with --checkpoint PATH"),
    (["--checkpoint", "{tmp}/a-file"], "a-file' is corrupt or not a weights file"),
    (["--checkpoint", "/nonexistent.pt"], "--checkpoint: no file at '/nonexistent.pt'"),
    (["--target", "0.0000001G"], "below the minimum"),
    (["--recipe", "nope"], "no shipped recipe named 'nope'"),
    (["--data", "/nonexistent"], "data directory '/nonexistent' does not exist"),
    (["--data", "{tmp}/classless"], "has no class folders"),
    (["--model", "resnet181"], "unknown timm model 'resnet181'; close matches: resnet18"),
    (["--data-dir", "/nonexistent"], "Fashion-MNIST IDX files not found (looked in /nonexistent)"),
    (["--resume"], "holds no run to continue"),
    (["--out", "{tmp}/a-file/run"], "--out: cannot write to"),
])
def test_compress_errors_are_one_line(args, message, fashion_dir, tmp_path):
    (tmp_path / "classless" / "train").mkdir(parents=True)
    (tmp_path / "classless" / "val").mkdir()
    (tmp_path / "a-file").write_text("not a folder")
    args = [a.format(tmp=tmp_path) for a in args]
    proc = mpqfx_cli("compress", "--model", "test_resnet", "--data-dir", fashion_dir, "--out", tmp_path / "r", *args,
                     env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    one_line_error(proc, message)
    assert not (tmp_path / "r").exists()


def test_recipes_lists_every_shipped_recipe():
    proc = mpqfx_cli("recipes")
    assert proc.returncode == 0
    names = [line.split(":")[0].split(" ")[0] for line in proc.stdout.strip().splitlines()]
    assert names == ["bitmixer", "double_rounding", "imagenet", "limpq", "oneshot", "ptq", "quickstart"]
    assert "oneshot (the default of prepare, search --model and bitops; also loads as 'default')" in proc.stdout
    assert "quickstart (the default of compress)" in proc.stdout


def test_validate_prints_every_problem(tmp_path):
    assert mpqfx_cli("validate", "quickstart").returncode == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {epochs: 0, lr: -1}\nstrategy: {name: magic}\n")
    proc = mpqfx_cli("validate", bad)
    assert proc.returncode == 1
    assert "3 problem(s)" in proc.stderr
    assert "train.epochs: must be >= 1" in proc.stderr and "train.lr: must be > 0" in proc.stderr
    assert "strategy.name: unknown strategy 'magic'" in proc.stderr
