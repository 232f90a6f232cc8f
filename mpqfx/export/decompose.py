"""Ops torch's TorchScript ONNX exporter cannot write, rewritten into ops it can.

``Tensor.unfold(dim, size, step)`` (sliding windows, as timm's HaloAttn cuts its key/value
blocks) exports only when the exporter knows the size of ``dim``, which it loses after a
``Pad`` whose amounts are graph inputs (``Unsupported: ONNX export of operator Unfold, input
size not accessible``). With the size known from the example run it is a gather of fixed
indices: window ``i`` holds elements ``i * step .. i * step + size - 1`` of ``dim``, so

    x.unfold(d, k, s) == x.index_select(d, idx).unflatten(d, (n, k)).movedim(d + 1, -1),
    idx = [i * s + j for i in range(n) for j in range(k)],  n = (x.shape[d] - k) // s + 1

which ONNX writes as Gather -> Reshape -> Transpose. The rewrite moves no values and keeps the
quantizers around it, so onnxruntime fuses the layers before and after as before.

``F.adaptive_max_pool2d`` / ``F.adaptive_avg_pool2d`` to an output size other than 1x1 export
only when the exporter knows the input's height and width, which it loses after a reshape to
sizes computed from the batch (timm's BilinearAttnTransform, in bat_resnext26ts, after another
one). These often run inside a leaf module, out of the graph's reach, so they are rewritten while
the exporter traces (:func:`static_adaptive_pools`): when the size ``n`` of a pooled dimension is
a multiple of its output size ``m``, bin ``i`` is elements ``i * n / m`` to ``(i + 1) * n / m - 1``,
so the pool is ``max_pool2d`` / ``avg_pool2d`` with kernel = stride = ``n / m``, whose sizes are
constants of the file.

``aten::rms_norm`` (``F.rms_norm``, timm's ``RmsNorm``) has no TorchScript symbolic below opset
23, which that exporter does not reach. :func:`register_rms_norm` gives it one from the definition
``x / sqrt(mean(x^2 over the normalized dims) + eps) * weight`` (Mul, ReduceMean, Add, Sqrt, Div,
Mul), registered once for every opset the QDQ form uses; float ops between quantizers, so the
layers around it fuse as before.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import torch
import torch.fx as fx
import torch.nn.functional as F


def unfold_index(length: int, size: int, step: int) -> torch.Tensor:
    """Indices along the unfolded dimension of every window, window after window."""
    windows = (length - size) // step + 1
    return (torch.arange(windows)[:, None] * step + torch.arange(size)).reshape(-1)


def _unfold_args(node: fx.Node) -> tuple[int, int, int, int] | None:
    """(dim, its length, size, step) of a ``Tensor.unfold`` call with constant arguments and a known input shape."""
    if node.op != "call_method" or node.target != "unfold":
        return None
    names = ("dimension", "size", "step")
    args = dict(zip(names, node.args[1:])) | dict(node.kwargs)
    dim, size, step = (args.get(n) for n in names)
    meta = node.args[0].meta.get("tensor_meta") if isinstance(node.args[0], fx.Node) else None
    if meta is None or not all(isinstance(v, int) for v in (dim, size, step)):
        return None
    dim = dim % len(meta.shape)
    return (dim, meta.shape[dim], size, step) if dim > 0 else None  # the batch size is the export's dynamic axis


def decompose_unfolds(gm: fx.GraphModule) -> int:
    """Rewrite every ``Tensor.unfold`` with constant arguments (shapes from ``node.meta['tensor_meta']``)
    as the gather in the module docstring; returns how many were rewritten."""
    matches = [(node, args) for node in gm.graph.nodes if (args := _unfold_args(node)) is not None]
    for k, (node, (dim, length, size, step)) in enumerate(matches):
        x, index = node.args[0], unfold_index(length, size, step)  # x: an earlier unfold's replacement, if chained
        name = f"unfold_index_{k}"
        gm.register_buffer(name, index, persistent=False)  # a constant of the graph, not part of the weight file
        with gm.graph.inserting_before(node):
            idx = gm.graph.get_attr(name)
            gathered = gm.graph.call_method("index_select", (x, dim, idx))
            split = gm.graph.call_method("unflatten", (gathered, dim, (len(index) // size, size)))
            windows = gm.graph.call_method("movedim", (split, dim + 1, -1))
        windows.meta = dict(node.meta)
        node.replace_all_uses_with(windows)
        gm.graph.erase_node(node)
    if matches:
        gm.graph.lint()
        gm.recompile()
    return len(matches)


def _pool_kernel(x: torch.Tensor, output_size: int | tuple[int | None, int | None]) -> tuple[int, int] | None:
    """Kernel (= stride) of the plain pool equal to an adaptive pool of ``x`` to ``output_size``; None
    for a global pool (the exporter writes GlobalMaxPool / GlobalAveragePool) and when a dimension
    is not a multiple of its output size."""
    sizes = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
    if sizes == (1, 1):
        return None
    kernel = []
    for n, m in zip(x.shape[-2:], sizes):
        m = int(n) if m is None else int(m)  # None keeps the input's size
        if m <= 0 or int(n) % m:
            return None
        kernel.append(int(n) // m)
    return kernel[0], kernel[1]


@contextlib.contextmanager
def static_adaptive_pools() -> Iterator[None]:
    """While the exporter traces: ``F.adaptive_max_pool2d`` and ``F.adaptive_avg_pool2d`` whose
    input sizes are multiples of their output sizes run as ``max_pool2d`` / ``avg_pool2d`` with
    constant kernels (module docstring); others, and max pools returning indices, as before."""
    adaptive_max, adaptive_avg = F.adaptive_max_pool2d, F.adaptive_avg_pool2d

    def max_pool(x, output_size, return_indices=False):
        kernel = None if return_indices else _pool_kernel(x, output_size)
        return adaptive_max(x, output_size, return_indices) if kernel is None else F.max_pool2d(x, kernel, kernel)

    def avg_pool(x, output_size):
        kernel = _pool_kernel(x, output_size)
        return adaptive_avg(x, output_size) if kernel is None else F.avg_pool2d(x, kernel, kernel)

    F.adaptive_max_pool2d, F.adaptive_avg_pool2d = max_pool, avg_pool
    try:
        yield
    finally:
        F.adaptive_max_pool2d, F.adaptive_avg_pool2d = adaptive_max, adaptive_avg


def _rms_norm_symbolic(g, x, normalized_shape, weight, eps):
    """ONNX ops for ``rms_norm(x, normalized_shape, weight, eps)`` (module docstring); ``eps`` None is
    torch's default, the machine epsilon of float32."""
    from torch.onnx import symbolic_helper

    axes = list(range(-len(symbolic_helper._get_const(normalized_shape, "is", "normalized_shape")), 0))
    eps = torch.finfo(torch.float32).eps if symbolic_helper._is_none(eps) else symbolic_helper._get_const(eps, "f", "eps")
    square = g.op("Mul", x, x)
    if g.opset >= 18:  # ReduceMean's axes became an input in opset 18
        mean = g.op("ReduceMean", square, g.op("Constant", value_t=torch.tensor(axes)), keepdims_i=1)
    else:
        mean = g.op("ReduceMean", square, axes_i=axes, keepdims_i=1)
    rms = g.op("Sqrt", g.op("Add", mean, g.op("Constant", value_t=torch.tensor(eps, dtype=torch.float32))))
    normalized = g.op("Div", x, rms)
    return normalized if symbolic_helper._is_none(weight) else g.op("Mul", normalized, weight)


@functools.cache
def register_rms_norm(opset: int) -> None:
    """Let torch's TorchScript exporter write ``aten::rms_norm`` from ``opset`` on (module docstring)."""
    torch.onnx.register_custom_op_symbolic("aten::rms_norm", _rms_norm_symbolic, opset)
