"""Ops torch's TorchScript ONNX exporter cannot write, rewritten in the deployed graph into ops it can.

``Tensor.unfold(dim, size, step)`` (sliding windows, as timm's HaloAttn cuts its key/value
blocks) exports only when the exporter knows the size of ``dim``, which it loses after a
``Pad`` whose amounts are graph inputs (``Unsupported: ONNX export of operator Unfold, input
size not accessible``). With the size known from the example run it is a gather of fixed
indices: window ``i`` holds elements ``i * step .. i * step + size - 1`` of ``dim``, so

    x.unfold(d, k, s) == x.index_select(d, idx).unflatten(d, (n, k)).movedim(d + 1, -1),
    idx = [i * s + j for i in range(n) for j in range(k)],  n = (x.shape[d] - k) // s + 1

which ONNX writes as Gather -> Reshape -> Transpose. The rewrite moves no values and keeps the
quantizers around it, so onnxruntime fuses the layers before and after as before.
"""

from __future__ import annotations

import torch
import torch.fx as fx


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
