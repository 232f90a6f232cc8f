"""What ships is what is reported: the exported files measured in their runtimes.

:func:`check_onnx` runs the ONNX file with every onnxruntime optimization (integer kernels, as a
deployment runs it) on held-out images, next to the supernet at the same policy (what the
report's accuracy was measured on) and the deployed PyTorch module (what the integer
safetensors file holds), and reads the runtime's optimized graph to count the layers that run
as integer kernels. :func:`check_openvino` does the same for the OpenVINO IR in OpenVINO's CPU
plugin, counting the layers it executes in u8/i8.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import nn

from mpqfx.errors import MpqfxError
from mpqfx.export.onnx_qdq import INTEGER_KERNELS, integer_kernels, session
from mpqfx.quant.policy import Policy
from mpqfx.supernet import Supernet

Batch = tuple[torch.Tensor, torch.Tensor]
MODULE_IMAGES = 256  # images the deployed PyTorch module runs on (a fault check; the runtime sees them all)


@dataclass(frozen=True)
class OnnxCheck:
    """onnxruntime (all optimizations) on ``images`` held-out images against the supernet and the
    deployed PyTorch module; accuracies are top-1 (None without labels)."""

    images: int
    accuracy: float | None
    supernet_accuracy: float | None
    top1_agreement: float  # onnxruntime vs the supernet at the policy
    module_agreement: float  # onnxruntime vs the deployed PyTorch module in float64 (the integer safetensors file), first 256 images
    integer_kernels: int  # quantized layers onnxruntime runs as integer kernels
    layers: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class OpenVinoCheck:
    """OpenVINO's CPU plugin on ``images`` held-out images against the supernet; accuracies are
    top-1 (None without labels)."""

    images: int
    accuracy: float | None
    supernet_accuracy: float | None
    top1_agreement: float  # OpenVINO vs the supernet at the policy
    integer_layers: int  # convolution / fully connected nodes executed in u8/i8
    layers: int  # convolution / fully connected nodes of the compiled model

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _top1(logits: Iterable[np.ndarray]) -> np.ndarray:
    return np.concatenate([np.asarray(l).argmax(-1) for l in logits])


def _beside_supernet(run: Callable[[torch.Tensor], np.ndarray], net: Supernet, policy: Policy,
                     batches: Iterable[Batch], reference: nn.Module | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-1 of ``run`` and of the supernet at ``policy`` (or of ``reference``) on ``batches``, and the labels."""
    model = net if reference is None else reference
    device = next(model.parameters()).device
    runtime, supernet, labels = [], [], []
    with net.use_policy(policy) if reference is None else contextlib.nullcontext():
        for x, y in batches:
            runtime.append(run(x))
            supernet.append(model(x.to(device)).cpu().numpy())
            labels.append(np.asarray(y))
    return _top1(runtime), _top1(supernet), np.concatenate(labels) if labels else np.zeros(0)


def _accuracy(predicted: np.ndarray, truth: np.ndarray) -> float | None:
    return float((predicted == truth).mean()) if len(truth) else None


@torch.no_grad()
def check_onnx(path: str | Path, net: Supernet, policy: Policy, deployed: nn.Module,
               batches: Iterable[Batch], reference: nn.Module | None = None) -> OnnxCheck:
    """Measure the ONNX file at ``path`` on ``batches`` (see the module docstring); ``net`` runs with
    the BatchNorm statistics it has now (re-estimate them first, as the report's evaluation does).
    ``reference`` (eval mode) takes the supernet's place, e.g. the fine-tuned model the file comes from.

    Raises MpqfxError when a quantized layer does not run as an integer kernel. The agreement with
    the deployed module is recorded, not enforced: in a network far from trained (near-equal
    logits), the runtime's fixed-point requantization and exact sums part ways on many images.
    """
    ort_session = session(path)
    # in float64 the module's sums of integer products are exact, as in integer kernels; float32
    # sums round, and a rounding on a quantization step's boundary moves an integer downstream
    exact = copy.deepcopy(deployed).double()
    module = []

    def run(x: torch.Tensor) -> np.ndarray:
        if sum(len(m) for m in module) < MODULE_IMAGES:
            module.append(exact(x.cpu().double()).numpy())
        return ort_session.run(None, {"input": x.cpu().numpy()})[0]

    ours, theirs, truth = _beside_supernet(run, net, policy, batches, reference)
    reference = _top1(module)
    kernels = integer_kernels(path)
    check = OnnxCheck(images=len(ours), accuracy=_accuracy(ours, truth), supernet_accuracy=_accuracy(theirs, truth),
                      top1_agreement=float((ours == theirs).mean()),
                      module_agreement=float((ours[: len(reference)] == reference).mean()),
                      integer_kernels=sum(op in INTEGER_KERNELS for op in kernels.values()), layers=len(kernels))
    floating = [w.removesuffix(".weight_int") for w, op in kernels.items() if op not in INTEGER_KERNELS]
    if floating:
        raise MpqfxError(f"ONNX export {str(path)!r}: onnxruntime runs {len(floating)} quantized layer(s) in float "
                         f"(first: {floating[0]!r}, as {kernels[floating[0] + '.weight_int']})")
    return check


@torch.no_grad()
def check_openvino(path: str | Path, net: Supernet, policy: Policy, batches: Iterable[Batch]) -> OpenVinoCheck:
    """Measure the OpenVINO IR at ``path`` in OpenVINO's CPU plugin on ``batches`` beside the
    supernet (BatchNorm statistics as they are now), and count the layers it runs in u8/i8."""
    from mpqfx.export.openvino_ir import INTEGER_PRECISIONS, compiled_model, executed_precisions

    compiled = compiled_model(path)
    request = compiled.create_infer_request()
    ours, theirs, truth = _beside_supernet(lambda x: request.infer({0: x.cpu().numpy()})[0].copy(), net, policy, batches)
    precisions = executed_precisions(compiled)
    return OpenVinoCheck(images=len(ours), accuracy=_accuracy(ours, truth), supernet_accuracy=_accuracy(theirs, truth),
                         top1_agreement=float((ours == theirs).mean()),
                         integer_layers=sum(n for (_, p), n in precisions.items() if p in INTEGER_PRECISIONS),
                         layers=sum(precisions.values()))
