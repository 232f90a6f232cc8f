"""Exporting policies: the files of one policy (``compress``'s export phase) and ``mpqfx export``
on a finished run."""

from __future__ import annotations

import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import torch
from torch import nn

from mpqfx.errors import MpqfxError
from mpqfx.evaluate import recalibrated_bn
from mpqfx.export.deploy import deploy
from mpqfx.export.onnx_qdq import DEFAULT_OPSET, OnnxExportError, check_opset, export_onnx, onnx_modules
from mpqfx.quant.policy import Policy
from mpqfx.rundir import SEARCHED_PREFIX, UNIFORM_NAME
from mpqfx.supernet import Supernet

Batch = tuple[torch.Tensor, torch.Tensor]
FORMATS = ("onnx", "openvino", "safetensors", "double-rounding")
SUFFIX = {"onnx": ".onnx", "openvino": ".xml", "safetensors": ".safetensors", "double-rounding": ".dr8.safetensors"}
CHECK_IMAGES = 1000  # held-out images `mpqfx export` measures the ONNX file on (the whole split when smaller)


def _limited(batches: Iterable[Batch], images: int | None) -> list[Batch]:
    """The first ``images`` images of ``batches`` (all of them for None)."""
    if images is None:
        return list(batches)
    out, seen = [], 0
    for x, y in batches:
        if seen >= images:
            break
        out.append((x[: images - seen], y[: images - seen]))
        seen += len(out[-1][0])
    return out


@contextmanager
def on_cpu(net: Supernet) -> Iterator[None]:
    """``net`` on the CPU for the body, then back on its device: the integer module is built where the
    runtimes that check and run it are."""
    device = next(net.parameters()).device
    net.cpu()
    try:
        yield
    finally:
        net.to(device)


def export_policy_files(net: Supernet, policy: Policy, paths: Mapping[str, Path], calibration: Sequence[Batch],
                        check_batches: Iterable[Batch], opset: int = DEFAULT_OPSET, deployed: nn.Module | None = None,
                        reference: nn.Module | None = None) -> dict[str, Any]:
    """Write ``policy`` of ``net`` to ``paths`` (format -> file: ``safetensors``, ``onnx``, ``openvino``).

    BatchNorm statistics are re-estimated on ``calibration`` (training images, on the supernet's
    device) and folded into the convolutions, which also calibrate the 8-bit quantizers of the
    tensors the supernet keeps in float (on the CPU). The ONNX file is measured in onnxruntime on ``check_batches`` (held-out images)
    before it replaces an earlier file; the OpenVINO IR, converted from it, in OpenVINO. Returns
    what the report records of the files.

    ``deployed``: the integer module, already built (a fine-tuned policy's: the supernet's BatchNorm is
    then neither re-estimated nor used); ``reference``: the model the ONNX file is measured beside
    instead of the supernet at ``policy``.

    When torch's exporter cannot write the module, the integer safetensors file is written all the
    same (beside the ONNX path when it was not asked for) and :class:`OnnxExportError` says where,
    with what was written in its ``written`` attribute (the same keys as the returned dict).
    """
    from mpqfx.export.check import check_onnx, check_openvino
    from mpqfx.export.integer_file import save_integer_model
    from mpqfx.export.openvino_ir import export_openvino, openvino_module

    if "onnx" in paths or "openvino" in paths:
        onnx_modules()
        check_opset(opset)
    if "openvino" in paths:
        openvino_module()
    out: dict[str, Any] = {}
    with recalibrated_bn(net, policy, calibration if deployed is None else []):
        if deployed is not None:
            module = deployed
        else:
            with on_cpu(net):
                module = deploy(net, policy, calibration or [(net.example_input, None)])
        if "safetensors" in paths:
            path = save_integer_model(net, policy, paths["safetensors"], deployed=module)
            out.update(safetensors=str(path), safetensors_bytes=path.stat().st_size)
        if "onnx" in paths or "openvino" in paths:
            path = Path(paths.get("onnx", paths.get("openvino"))).with_suffix(".onnx")
            path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=path.parent, prefix=".export-") as tmp:
                try:
                    staged = export_onnx(module, calibration[0][0][:1] if calibration else net.example_input,
                                         Path(tmp) / path.name, opset=opset, bits={k: tuple(b) for k, b in policy.items()})
                except OnnxExportError as exc:
                    if "safetensors" not in out:  # the deployable integer weights, whatever the exporter says
                        kept = save_integer_model(net, policy, path.with_suffix(".safetensors"), deployed=module)
                        out.update(safetensors=str(kept), safetensors_bytes=kept.stat().st_size)
                    raise OnnxExportError(f"{exc}; the policy's integer weights are in {out['safetensors']}",
                                          written=out) from None
                check = check_onnx(staged, net, policy, module, check_batches, reference)
                if "openvino" in paths:
                    xml = export_openvino(staged, paths["openvino"])
                    out.update(openvino=str(xml), openvino_bytes=xml.stat().st_size + xml.with_suffix(".bin").stat().st_size,
                               **{f"openvino_{k}": v for k, v in check_openvino(xml, net, policy, check_batches).to_dict().items()})
                if "onnx" in paths:
                    staged.replace(path)
                    out.update(onnx=str(path), onnx_bytes=path.stat().st_size, opset=opset,
                               **{f"onnx_{k}": v for k, v in check.to_dict().items()})
    return out


def resolve_policy(run_root: Path, policy: str | Path) -> tuple[str, Path | int]:
    """A policy of a run: (name, file) for a file path, a searched policy's name (``mixed@uniform-4``, a
    later search's ``SEARCH/mixed@uniform-4``) or its budget (``uniform:4``); (name, bits) for a uniform
    policy (``uniform-4``)."""
    from mpqfx.rundir import RunDir, searched_name, searched_policy_path

    path = Path(policy)
    if path.is_file():
        return path.stem, path
    search, _, name = str(policy).removesuffix(".yaml").rpartition("/")
    uniform = UNIFORM_NAME.fullmatch(name)
    if uniform and not search:
        return name, int(uniform[1])
    folder = RunDir(run_root).root / "searches" / search if search else RunDir(run_root).policies
    target = name.removeprefix(SEARCHED_PREFIX)
    found = searched_policy_path(folder, target)
    if found.is_file():
        return "/".join(filter(None, (search, searched_name(target)))), found
    listing = policy_names(run_root)
    listing = f"the run's policies: {', '.join(listing)}" if listing else "the run has no policies yet"
    raise MpqfxError(f"--policy {str(policy)!r}: no such file or policy of {str(run_root)!r} ({listing})")


def policy_names(run_root: Path) -> list[str]:
    """The names of a run's policies: its searched ``mixed@...`` ones (those of runs before that name
    included) and the uniform ones its report measures."""
    from mpqfx.recipe import Recipe
    from mpqfx.rundir import RunDir, uniform_name

    run = RunDir(run_root)
    searched = {p.stem if p.stem.startswith(SEARCHED_PREFIX) else SEARCHED_PREFIX + p.stem
                for p in run.policies.glob("*.yaml")} if run.policies.is_dir() else set()
    recipe = Recipe.load(run.recipe) if run.recipe.is_file() else None
    uniform = [uniform_name(b) for b in recipe.evaluate.uniform_bits
               if b in recipe.quant.w_bits and b in recipe.quant.a_bits] if recipe else []
    return sorted(searched) + uniform


def named_policy(net: Supernet, source: Path | int, name: str) -> Policy:
    """The policy ``resolve_policy`` found: the file's, validated against ``net``, or the uniform one."""
    from mpqfx.compress.evaluation import uniform_policies

    if isinstance(source, Path):
        return Policy.load(source).validate(net.layers)
    found = uniform_policies(net, [source])
    if not found:
        raise MpqfxError(f"--policy {name!r}: {source} bits is not a candidate of every searchable layer "
                         f"(candidates: weights {sorted(set().union(*(l.w_bits for l in net.layers)))}, "
                         f"activations {sorted(set().union(*(l.a_bits for l in net.layers)))})")
    return found[0][1]


def export_policy(run_dir: str | Path, policy: str | Path | None, fmt: str, out: str | Path | None = None,
                  opset: int = DEFAULT_OPSET, check_images: int | None = CHECK_IMAGES,
                  device: str | torch.device | None = "cpu") -> tuple[Path, dict[str, Any]]:
    """Write one policy of a finished run (a file path or a policy name of the run) as ``fmt``
    (onnx, openvino, safetensors), or the whole Double Rounding supernet (``double-rounding``, no policy);
    (path, what was measured). ``device`` runs the supernet (BatchNorm re-estimation, its side of
    the check; None: CUDA when available); the integer module is built on the CPU."""
    from mpqfx.data.spec import DataSpec, fixed_batches
    from mpqfx.export.double_rounding_file import save_double_rounding
    from mpqfx.models import create_model
    from mpqfx.rundir import RunDir
    from mpqfx.store import load_supernet
    from torch.utils.data import DataLoader

    from mpqfx.train.distributed import resolve_device

    if fmt not in FORMATS:
        raise MpqfxError(f"--format: {fmt!r} is not one of {', '.join(FORMATS)}")
    device = resolve_device(device)
    run = RunDir(run_dir)
    if not run.root.is_dir():
        raise MpqfxError(f"--run: {str(run.root)!r} is not a directory")
    if fmt in ("onnx", "openvino"):
        onnx_modules()
        check_opset(opset)
    if fmt == "openvino":
        from mpqfx.export.openvino_ir import openvino_module

        openvino_module()
    if fmt != "double-rounding":
        if policy is None:
            raise MpqfxError(f"--format {fmt} needs --policy (a policy file or one of the run's policy names)")
        name, source = resolve_policy(run.root, policy)
        if out is None and isinstance(source, int) and (run.policies / f"{name}.yaml").is_file():
            raise MpqfxError(f"--policy {name}: this run was made before the mixed@ names, and its "
                             f"export/{name}.* files hold the mixed policy mixed@{name}; pass --out FILE")
    if not run.supernet.is_file():
        raise MpqfxError(f"--run: {str(run.root)!r} has no trained supernet (supernet.pt); "
                         f"finish the run with `mpqfx compress --resume --out {run.root}`")
    net, _ = load_supernet(run.supernet, device=device)
    net.eval()
    if fmt == "double-rounding":
        path = Path(out) if out else run.export / f"supernet{SUFFIX[fmt]}"
        return save_double_rounding(net, path), {}
    chosen = named_policy(net, source, name)
    spec = DataSpec.from_dict(run.meta()["data"])
    evaluate = net.recipe.evaluate
    float_model = create_model(net.model_spec.name, **net.model_spec.kwargs)
    calibration = fixed_batches(spec.split("train", float_model, train=False), evaluate.bn_images,
                                evaluate.batch_size, seed=2) if evaluate.bn_images else []
    held_out = DataLoader(spec.split("val", float_model, train=False), batch_size=evaluate.batch_size, shuffle=False)
    path = Path(out) if out else run.export / f"{name.replace('/', '-')}{SUFFIX[fmt]}"
    return path, export_policy_files(net, chosen, {fmt: path}, calibration, _limited(held_out, check_images), opset)
