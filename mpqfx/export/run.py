"""Exporting a policy of a finished run (``mpqfx export``)."""

from __future__ import annotations

from pathlib import Path

from mpqfx.data.spec import DataSpec, fixed_batches
from mpqfx.errors import MpqfxError
from mpqfx.evaluate import recalibrated_bn
from mpqfx.export.deploy import deploy
from mpqfx.export.double_rounding_file import save_double_rounding
from mpqfx.export.integer_file import save_integer_model
from mpqfx.export.onnx_qdq import export_onnx
from mpqfx.models import create_model
from mpqfx.quant.policy import Policy
from mpqfx.rundir import RunDir
from mpqfx.store import load_supernet

SUFFIX = {"onnx": ".onnx", "safetensors": ".safetensors", "double-rounding": ".dr8.safetensors"}


def export_policy(run_dir: str | Path, policy_path: str | Path, fmt: str, out: str | Path | None = None) -> tuple[Path, str]:
    """Write ``policy_path``'s policy of the run's supernet as ``fmt`` (onnx, safetensors or
    double-rounding) after BatchNorm re-estimation on the run's training images; (path, details)."""
    run = RunDir(run_dir)
    if fmt not in SUFFIX:
        raise MpqfxError(f"--format: {fmt!r} is not one of {', '.join(SUFFIX)}")
    net, _ = load_supernet(run.root)
    net.eval()
    if fmt == "double-rounding":
        path = Path(out) if out else run.export / f"supernet{SUFFIX[fmt]}"
        return save_double_rounding(net, path), "every policy's weights derive from its 8-bit integers"
    policy = Policy.load(policy_path).validate(net.layers)
    spec = DataSpec.from_dict(run.meta()["data"])
    evaluate = net.recipe.evaluate
    float_model = create_model(net.model_spec.name, **net.model_spec.kwargs)
    calibration = fixed_batches(spec.split("train", float_model, train=False), evaluate.bn_images,
                                evaluate.batch_size, seed=2) if evaluate.bn_images else []
    path = Path(out) if out else run.export / f"{Path(policy_path).stem}{SUFFIX[fmt]}"
    with recalibrated_bn(net, policy, calibration):
        if fmt == "safetensors":
            return save_integer_model(net, policy, path), ""
        module = deploy(net, policy)
    check_input = calibration[0][0][:16] if calibration else net.example_input
    check = export_onnx(module, check_input, path)
    return path, f"onnxruntime vs PyTorch max |diff| {check.max_abs_diff:.2e}, {check.relative:.1e} of the output range"
