"""Check one timm model as a new user would use it, in its own process; print one JSON line.

    python tests/graph/zoo_check.py MODEL_NAME

Checks, in order (the first that fails is the model's reason): ``mpqfx.prepare`` on the model's
default input size, bypass output equal to the float model within 1e-4 of the output range,
at least 99% of conv/linear weights quantized (counted from the float model's modules and by
``Supernet.coverage``), a finite uniform 4/4 forward, a uniform 8/8 error against the float
model between ``ERROR_8_BOUNDS`` (a quantizer that does nothing, or that destroys the signal,
fails; a random float model that already moves by ``f`` when only its input is rounded to 8 bits
may be off by up to the upper bound plus ``f``, but never as far as the best output that ignores
its input), then the deployment path a user takes: ``mpqfx.export.deploy`` at uniform 4/4 calibrated
on the test's images, ``export_onnx``, every quantized layer an integer kernel in onnxruntime's
optimized graph, and the ONNX file's top-1 agreement with the deployed module run in float64 on
``EXPORT_IMAGES`` other images not significantly below the noise floor (the float32 deployed
module against the same float64 reference): a one-sided exact sign test (McNemar's) on the images
where exactly one of the two agrees fails the model at p < ``AGREEMENT_ALPHA``. A random 4-bit
network sits near rounding boundaries (float32 and float64 already part on up to 7 of 8 images of
some), so a fixed margin of agreement fails models on chance alone; the paired test fails the
export that loses many images the float32 module keeps, and never on a difference chance explains.
Uniform w/a means every layer at the allowed bit-width nearest w/a (under the default recipe: 6/6
inside, 8/8 for the first and last layers). Each uniform policy's activation steps are fitted on
its own forward (``Supernet.refit_quantizers`` first): a step is fitted lazily by the first forward
that uses its bit-width, and the first and last layers keep 8 bits under every policy, so without
it the 8-bit steps of those layers would be those of whichever policy ran before (hardcorenas_c's
classifier input step fitted under 4/4 is 1/90 of the one 8/8 needs). Random-init timm models often zero
whole branches (layer scales, zero-init heads and last BNs), so parameters whose elements are
all equal are perturbed first: outputs that stay constant would make the bypass check vacuous.
"""

from __future__ import annotations

import json
import math
import os
import resource
import sys
import tempfile
import time
import traceback
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import timm  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

import mpqfx  # noqa: E402
from mpqfx.export import deploy, export_onnx, integer_kernels  # noqa: E402
from mpqfx.export.onnx_qdq import INTEGER_KERNELS, session  # noqa: E402
from mpqfx.prepare import default_example_input  # noqa: E402

BYPASS_TOLERANCE = 1e-4  # of the float output's range
MIN_COVERAGE = 0.99
# uniform 8/8 output against the float model: RMS difference / RMS deviation of the float output
ERROR_8_BOUNDS = (1e-3, 0.5)
MIN_ERROR_8 = 1e-6  # the lower bound for models that barely move (error_8_bounds)
CALIBRATION_IMAGES = 4  # the test's images: LSQ steps and the deployed module's 8-bit quantizers
EXPORT_IMAGES = 16  # other images the ONNX file and the deployed module are compared on
AGREEMENT_ALPHA = 0.05  # the sign test's level (module docstring)
CHUNK = 4  # images per forward of the float64 reference and of onnxruntime: the peak memory of large models
WEIGHT_MODULES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@torch.no_grad()
def perturb_constant_parameters(model: nn.Module, seed: int = 0) -> int:
    """Add seeded noise (10% of the value, at least 0.01) to every parameter whose elements are all equal."""
    gen = torch.Generator().manual_seed(seed)
    changed = 0
    for p in model.parameters():
        flat = p.detach().reshape(-1)
        if flat.numel() and bool((flat == flat[0]).all()):
            scale = max(abs(float(flat[0])), 0.1) * 0.1
            p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * scale)
            changed += 1
    return changed


def output_tensor(out: object) -> torch.Tensor:
    """All floating tensors of a model's output, flattened into one."""
    if isinstance(out, torch.Tensor):
        return out.float().reshape(-1)
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        return torch.cat([output_tensor(o) for o in out])
    return torch.zeros(0)


def round_to_8_bits(x: torch.Tensor) -> torch.Tensor:
    """``x`` on 256 levels over its range: a perturbation that involves no mpqfx quantizer."""
    step = float(x.max() - x.min()) / 255
    return torch.round(x / step) * step


def error_8_bounds(input_rounding_error: float, ref: torch.Tensor) -> tuple[float, float]:
    """[low, high) for the uniform 8/8 error of a model whose float output ``ref`` moves by
    ``input_rounding_error`` when its input is rounded to 8 bits (random deep nets can be chaotic:
    efficientnetv2_s moves by 0.69): the upper bound grows by it, but stays below the error of the
    best output that ignores the input (each output element's mean over the images)."""
    low, high = ERROR_8_BOUNDS
    input_free = relative_error(ref.mean(0, keepdim=True).expand_as(ref), ref)
    # an insensitive model (vit_pe_core_tiny_patch16_384 moves by 7.6e-6, its 8/8 error is 1.9e-4): at
    # least ten times what rounding the input does, never zero, so a quantizer that does nothing still fails
    low = max(min(low, 10 * input_rounding_error), MIN_ERROR_8)
    return low, min(high + input_rounding_error, input_free)


def relative_error(got: torch.Tensor, ref: torch.Tensor) -> float:
    """RMS of ``got - ref`` over the RMS deviation of ``ref`` from its mean."""
    return float((got - ref).pow(2).mean().sqrt() / (ref - ref.mean()).pow(2).mean().sqrt())


def first_output(out: object) -> torch.Tensor:
    """The logits: the output tensor, or the first of a tuple/list (what ONNX's first output holds)."""
    return out if isinstance(out, torch.Tensor) else first_output(out[0])


def top1_same(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per image: do ``a`` and ``b`` pick the same top-1 class."""
    return a.reshape(len(a), -1).argmax(1) == b.reshape(len(b), -1).argmax(1)


def sign_test_p(worse: int, better: int) -> float:
    """P(at least ``worse`` of the ``worse + better`` discordant images go against the ONNX file when
    each is a fair coin): the one-sided exact sign test of McNemar's paired comparison."""
    n = worse + better
    return sum(math.comb(n, k) for k in range(worse, n + 1)) / 2 ** n


def agrees(result: dict) -> bool:
    """The ONNX file's top-1 agreement is not significantly below the float32 module's (module docstring)."""
    return sign_test_p(result["worse"], result["better"]) >= AGREEMENT_ALPHA


def chunked(run, x: torch.Tensor) -> torch.Tensor:
    return torch.cat([first_output(run(part)) for part in x.split(CHUNK)])


@torch.no_grad()
def check_export(net: mpqfx.Supernet, images: torch.Tensor, held_out: torch.Tensor, result: dict) -> str | None:
    """Deploy at uniform 4/4, export, count integer kernels, compare top-1 with the noise floor;
    the reason of a failure, or None."""
    policy = mpqfx.Policy.uniform(net, 4)
    net.refit_quantizers()  # the activation steps of this policy, fitted on its own forward (module docstring)
    net.set_policy(policy)
    net(images)
    start = time.perf_counter()
    module = deploy(net, policy, calibration=[(images, None)])
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(module, images[:1], os.path.join(tmp, "model.onnx"))
        kernels = integer_kernels(path)
        ort = session(path)
        onnx_out = chunked(lambda part: torch.from_numpy(ort.run(None, {"input": part.numpy()})[0]), held_out)
        del ort
    result["export_s"] = round(time.perf_counter() - start, 2)
    floating = {w.removesuffix(".weight_int"): op for w, op in kernels.items() if op not in INTEGER_KERNELS}
    result["quantized_layers"], result["integer_layers"] = len(kernels), len(kernels) - len(floating)
    float32 = chunked(module, held_out)
    reference = chunked(module.double(), held_out.double())  # the module is not used after this
    same_32, same_onnx = top1_same(float32, reference), top1_same(onnx_out, reference)
    result["noise_floor"], result["agreement"] = float(same_32.double().mean()), float(same_onnx.double().mean())
    result["worse"], result["better"] = int((same_32 & ~same_onnx).sum()), int((same_onnx & ~same_32).sum())
    if len(kernels) != len(net.layers) or floating:
        first = next(iter(floating.items()), ("?", "?"))
        return (f"{result['integer_layers']} of {len(net.layers)} quantized layers run as integer kernels in "
                f"onnxruntime (first in float: {first[0]!r} as {first[1]})")
    if not agrees(result):
        return (f"ONNX top-1 agreement with the float64 deployed module {result['agreement']:.1%} is significantly "
                f"below the float32 module's {result['noise_floor']:.1%} ({result['worse']} images lost, "
                f"{result['better']} won; sign test p = {sign_test_p(result['worse'], result['better']):.3g} < {AGREEMENT_ALPHA})")
    return None


def check(name: str, result: dict) -> dict:
    """Run the checks on ``name``, filling ``result`` as they pass (its ``stage`` is the current one)."""
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False).eval()
    result["params"] = sum(p.numel() for p in model.parameters())
    result["perturbed"] = perturb_constant_parameters(model)
    size = default_example_input(model, mpqfx.Recipe.load("default")).shape[1:]
    result["input_size"] = list(size)
    x = torch.randn(CALIBRATION_IMAGES, *size, generator=torch.Generator().manual_seed(1))

    result["stage"] = "prepare"
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = mpqfx.prepare(model, example_input=x[:1]).eval()
    result["prepare_s"] = round(time.perf_counter() - start, 2)
    result["layers"] = len(net.layers)
    result["skipped"] = [[s.name, s.module_type, s.params, s.reason] for s in net.skipped]

    result["stage"] = "bypass"
    with torch.no_grad():
        ref, got = output_tensor(model(x)), output_tensor(net(x))
    out_range = float(ref.max() - ref.min()) if ref.numel() else 0.0
    result["out_range"] = out_range
    result["max_diff"] = float((ref - got).abs().max()) if ref.shape == got.shape else float("inf")
    if not out_range > 0 or not torch.isfinite(ref).all():
        return {**result, "reason": f"degenerate float output (range {out_range:.3g})"}
    if result["max_diff"] > BYPASS_TOLERANCE * out_range:
        return {**result, "reason": f"bypass differs from float by {result['max_diff']:.3g} (output range {out_range:.3g})"}

    result["stage"] = "coverage"
    total = sum(m.weight.numel() for m in model.modules() if isinstance(m, WEIGHT_MODULES))
    quantized = sum(l.params for l in net.layers)
    result["coverage_modules"] = quantized / max(total, 1)
    result["coverage"] = net.coverage()
    if min(result["coverage_modules"], result["coverage"]) < MIN_COVERAGE:
        floats = ", ".join(f"{s.name} ({s.module_type}: {s.reason})" for s in net.skipped[:3])
        return {**result, "reason": f"coverage {result['coverage']:.1%} (of modules' weights "
                                    f"{result['coverage_modules']:.1%}); float: {floats}"}

    result["stage"] = "uniform 4/4"
    net.refit_quantizers()
    net.set_policy(mpqfx.Policy.uniform(net, 4))
    with torch.no_grad():
        q = output_tensor(net(x))
    if not torch.isfinite(q).all():
        return {**result, "reason": "uniform 4/4 output is not finite"}
    result["bitops_4"] = mpqfx.bitops(net, net.policy).total

    result["stage"] = "uniform 8/8"
    net.refit_quantizers()
    net.set_policy(mpqfx.Policy.uniform(net, 8))
    with torch.no_grad():
        result["error_8"] = relative_error(output_tensor(net(x)), ref)
        result["input_rounding_error"] = relative_error(output_tensor(model(round_to_8_bits(x))), ref)
    low, high = error_8_bounds(result["input_rounding_error"], ref)
    if not low <= result["error_8"] < high:
        return {**result, "reason": f"uniform 8/8 output differs from float by {result['error_8']:.3g} (RMS over the "
                                    f"float output's RMS deviation), outside [{low:g}, {high:.3g}) for a float model "
                                    f"that moves by {result['input_rounding_error']:.3g} when its input is rounded to 8 bits"}

    result["stage"] = "export"
    del model  # not needed any more: the memory goes to the export of large models
    held_out = torch.randn(EXPORT_IMAGES, *size, generator=torch.Generator().manual_seed(2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reason = check_export(net, x, held_out, result)
    if reason is not None:
        return {**result, "reason": reason}
    result["stage"] = "done"
    result["ok"] = True
    return result


def main() -> None:
    name = sys.argv[1]
    torch.set_num_threads(int(os.environ.get("MPQFX_ZOO_THREADS", "2")))
    start = time.perf_counter()
    result: dict = {"model": name, "ok": False, "stage": "create"}
    try:
        result = check(name, result)
    except Exception as exc:  # noqa: BLE001 - every failure is a result to report
        where = traceback.extract_tb(exc.__traceback__)[-1]
        result.update(error=type(exc).__name__, reason=f"{type(exc).__name__}: {' '.join(str(exc).split())[:400]}",
                      at=f"{os.path.basename(where.filename)}:{where.lineno}")
    result["time_s"] = round(time.perf_counter() - start, 1)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result["cpu_s"] = round(usage.ru_utime + usage.ru_stime, 1)  # all threads: the time on an idle machine's cores
    result["peak_rss_mb"] = usage.ru_maxrss // 1024  # Linux reports KiB
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
