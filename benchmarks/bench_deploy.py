"""Deployed latency and file size: the float ONNX model, onnxruntime's own int8 quantization of it
(``quantize_static``, QDQ, per-channel weights: the yardstick) and the mpqfx ONNX export at a
policy, in onnxruntime (CPU, 1 thread, all graph optimizations) and, when installed, OpenVINO
(CPU, 1 thread; mpqfx as the IR ``mpqfx export --format openvino`` writes, and its ONNX file as
OpenVINO reads it), at batch 1 and 32, 224x224. Goals: mpqfx <= 1.1x the onnxruntime int8 latency
and <= 0.75x the float latency.

The variants take turns: each round times every variant (``--iters`` runs after a warm-up) and
the table gives the median time and the medians over rounds of the per-round ratios, so that machine drift cancels.
The models are timm's random initialisation with every BatchNorm's scale, shift and statistics
redrawn (timm zero-initialises the last BatchNorm of a residual block: those branches would be
all-zero weights, which exporters deduplicate and which make the files unrepresentative); the
float, onnxruntime int8 and mpqfx files are made from the same weights. The mpqfx policy is a searched one from a run (``--policy MODEL=FILE``, e.g. a run's
policies/mixed@uniform-4.yaml) or, without one, uniform 4/4. For OpenVINO it also reads the compiled
model's executed precision of every convolution / fully connected layer (u8/i8 is integer).

Usage: python benchmarks/bench_deploy.py [--models resnet18 mobilenetv2_100 efficientnet_lite0]
       [--policy resnet18=runs/r18/policies/mixed@uniform-4.yaml] [--rounds 7] [--iters 16] [--json out.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import timm
import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
import mpqfx  # noqa: E402
from _machine import header  # noqa: E402
from mpqfx.export import deploy, export_onnx, save_integer_model  # noqa: E402
from mpqfx.export.onnx_qdq import session  # noqa: E402
from mpqfx.export.openvino_ir import compiled_model, executed_precisions, export_openvino  # noqa: E402
from mpqfx.recipe import Recipe  # noqa: E402
from mpqfx.supernet import ModelSpec  # noqa: E402

SIZE = 224
CALIBRATION_IMAGES = 32


def model_with_live_branches(name: str) -> torch.nn.Module:
    """timm's ``name`` at random weights with every BatchNorm's affine parameters and statistics redrawn."""
    torch.manual_seed(0)
    model = timm.create_model(name).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module.affine:
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.1, 0.1)
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return model


def float_onnx(model: torch.nn.Module, path: Path) -> Path:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (torch.randn(1, 3, SIZE, SIZE),), str(path), opset_version=13, dynamo=False,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    return path


def ort_int8(float_path: Path, path: Path, images: np.ndarray) -> Path:
    """onnxruntime's static QDQ quantization of the float model, per-channel int8 weights."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"input": images[i:i + 8]} for i in range(0, len(images), 8)])

        def get_next(self):
            return next(self.batches, None)

    prepared = path.with_name("float-prepared.onnx")
    quant_pre_process(str(float_path), str(prepared))
    quantize_static(str(prepared), str(path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return path


def mpqfx_export(model: torch.nn.Module, name: str, policy_file: str | None, folder: Path,
                 images: torch.Tensor) -> tuple[Path, Path, str]:
    spec = ModelSpec(name, {})
    run_recipe = Path(policy_file).resolve().parent.parent / "recipe.yaml" if policy_file else None
    recipe = Recipe.load(str(run_recipe)) if run_recipe and run_recipe.is_file() else "default"  # the run's bits
    net = mpqfx.prepare(model, recipe, example_input=images[:1], model_spec=spec).eval()
    with torch.no_grad():
        for bits in sorted({b for layer in net.layers for b in layer.a_bits}):  # fit every activation step
            net.set_policy(mpqfx.Policy.uniform(net, bits))
            net(images[:8])
    policy = mpqfx.Policy.load(policy_file).validate(net.layers) if policy_file else mpqfx.Policy.uniform(net, 4)
    batches = [(images[i:i + 8], None) for i in range(0, len(images), 8)]
    module = deploy(net, policy, calibration=batches)
    onnx_path = export_onnx(module, images[:1], folder / "mpqfx.onnx", bits={k: tuple(v) for k, v in policy.items()})
    integer = save_integer_model(net, policy, folder / "mpqfx.safetensors", deployed=module)
    bits = mpqfx.bitops(net, policy)
    return onnx_path, integer, f"{Path(policy_file).name if policy_file else 'uniform 4/4'} ({bits.total / 1e9:.2f} GBitOPs)"


def ort_runner(path: Path, x: np.ndarray):
    sess = session(path, threads=1)
    return lambda: sess.run(None, {"input": x})


def openvino_runner(path: Path, x: np.ndarray):
    request = compiled_model(path, threads=1).create_infer_request()
    return lambda: request.infer({0: x})


def time_rounds(runners: dict, rounds: int, iters: int) -> dict[str, list[float]]:
    """Seconds per run of every variant, per round, the variants taking turns."""
    for run in runners.values():
        for _ in range(2):
            run()
    times = {k: [] for k in runners}
    for _ in range(rounds):
        for key, run in runners.items():
            start = time.perf_counter()
            for _ in range(iters):
                run()
            times[key].append((time.perf_counter() - start) / iters)
    return times


def median_ratio(a: list[float], b: list[float]) -> float:
    return statistics.median(x / y for x, y in zip(a, b))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet18", "mobilenetv2_100", "efficientnet_lite0"])
    parser.add_argument("--policy", action="append", default=[], metavar="MODEL=FILE")
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--iters", type=int, default=16, help="runs per variant and round at batch 1 (batch b: iters/b, at least 2)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    policies = dict(p.split("=", 1) for p in args.policy)
    try:
        import openvino  # noqa: F401
        runtimes = ["onnxruntime", "openvino"]
    except ImportError:
        runtimes = ["onnxruntime"]
    torch.set_num_threads(1)
    print(header("Deployed latency: float ONNX vs onnxruntime int8 (quantize_static) vs mpqfx ONNX, 1 thread"))
    rows = []
    for name in args.models:
        images = torch.randn(CALIBRATION_IMAGES, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            model = model_with_live_branches(name)
            paths = {"float": float_onnx(copy.deepcopy(model), folder / "float.onnx")}
            paths["ort int8"] = ort_int8(paths["float"], folder / "ort-int8.onnx", images.numpy())
            paths["mpqfx"], integer, policy = mpqfx_export(model, name, policies.get(name), folder, images)
            sizes = {k: p.stat().st_size / 1e6 for k, p in paths.items()} | {"mpqfx safetensors": integer.stat().st_size / 1e6}
            if "openvino" in runtimes:
                ir = export_openvino(paths["mpqfx"], folder / "ir" / "mpqfx.xml")
                sizes["mpqfx IR"] = (ir.stat().st_size + ir.with_suffix(".bin").stat().st_size) / 1e6
                precisions = executed_precisions(compiled_model(ir, threads=1))
            for runtime in runtimes:
                make = ort_runner if runtime == "onnxruntime" else openvino_runner
                # in OpenVINO, mpqfx is the IR `mpqfx export --format openvino` writes; its ONNX file as read is timed too
                variants = paths if runtime == "onnxruntime" else {**paths, "mpqfx": ir, "mpqfx onnx": paths["mpqfx"]}
                for batch in args.batches:
                    x = np.random.default_rng(batch).standard_normal((batch, 3, SIZE, SIZE)).astype(np.float32)
                    times = time_rounds({k: make(p, x) for k, p in variants.items()}, args.rounds, max(2, args.iters // batch))
                    row = {"model": name, "policy": policy, "runtime": runtime, "batch": batch,
                           "ms": {k: 1e3 * statistics.median(v) for k, v in times.items()},
                           "mpqfx / float": median_ratio(times["mpqfx"], times["float"]),
                           "mpqfx / ort int8": median_ratio(times["mpqfx"], times["ort int8"]),
                           "ort int8 / float": median_ratio(times["ort int8"], times["float"]), "MB": sizes}
                    if runtime == "openvino":
                        row["openvino mpqfx precisions"] = {f"{k} {p}": n for (k, p), n in sorted(precisions.items())}
                        row["mpqfx onnx / ort int8"] = median_ratio(times["mpqfx onnx"], times["ort int8"])
                    rows.append(row)
                    print(f"{name} {runtime} batch {batch}: " + ", ".join(f"{k} {v:.2f} ms" for k, v in row["ms"].items())
                          + f"; mpqfx/float {row['mpqfx / float']:.2f}x, mpqfx/ort-int8 {row['mpqfx / ort int8']:.2f}x",
                          flush=True)
    print("\n| model | runtime | batch | float (ms) | ort int8 (ms) | mpqfx (ms) | mpqfx / float | mpqfx / ort int8 | "
          "mpqfx ONNX as read / ort int8 |\n|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        ms = r["ms"]
        as_read = f"{r['mpqfx onnx / ort int8']:.2f}x" if "mpqfx onnx / ort int8" in r else "-"
        print(f"| {r['model']} | {r['runtime']} | {r['batch']} | {ms['float']:.2f} | {ms['ort int8']:.2f} | "
              f"{ms['mpqfx']:.2f} | {r['mpqfx / float']:.2f}x | {r['mpqfx / ort int8']:.2f}x | {as_read} |")
    print("\n| model | policy | float ONNX (MB) | ort int8 ONNX (MB) | mpqfx ONNX (MB) | mpqfx IR (MB) | mpqfx safetensors (MB) | "
          "OpenVINO precision of mpqfx convs |\n|---|---|---:|---:|---:|---:|---:|---|")
    for r in rows:
        if r["batch"] == args.batches[0] and r["runtime"] == runtimes[-1]:
            mb = r["MB"]
            ov_prec = ", ".join(f"{k}: {n}" for k, n in r.get("openvino mpqfx precisions", {}).items()) or "-"
            ir_mb = f"{mb['mpqfx IR']:.2f}" if "mpqfx IR" in mb else "-"
            print(f"| {r['model']} | {r['policy']} | {mb['float']:.2f} | {mb['ort int8']:.2f} | {mb['mpqfx']:.2f} | "
                  f"{ir_mb} | {mb['mpqfx safetensors']:.2f} | {ov_prec} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
