"""Packing b-bit integers into a byte stream (b bits each, little-endian bit order) and back."""

from __future__ import annotations

import numpy as np
import torch

from mpqfx.quant.lsq import int_range


def pack_ints(values: torch.Tensor, bits: int, signed: bool = True) -> torch.Tensor:
    """``values`` (integers within the b-bit range) as a flat uint8 tensor of ceil(n*b/8) bytes."""
    qmin, qmax = int_range(bits, signed)
    ints = values.detach().cpu().to(torch.int64).flatten().numpy()
    if ints.size and (ints.min() < qmin or ints.max() > qmax):
        raise ValueError(f"values outside the {bits}-bit range [{qmin}, {qmax}]")
    codes = (ints - qmin).astype(np.uint8)[:, None]  # offset binary: 0 .. 2^b - 1
    stream = np.unpackbits(codes, axis=1, bitorder="little")[:, :bits]
    return torch.from_numpy(np.packbits(stream.reshape(-1), bitorder="little"))


def unpack_ints(packed: torch.Tensor, bits: int, shape: tuple[int, ...], signed: bool = True) -> torch.Tensor:
    """The int8 tensor of ``shape`` that :func:`pack_ints` packed."""
    count = int(np.prod(shape))
    if packed.numel() != (count * bits + 7) // 8:
        raise ValueError(f"{packed.numel()} bytes cannot hold {count} {bits}-bit values")
    stream = np.unpackbits(packed.cpu().numpy(), bitorder="little")[: count * bits].reshape(count, bits)
    codes = stream.astype(np.int64) @ (1 << np.arange(bits, dtype=np.int64))
    return torch.from_numpy((codes + int_range(bits, signed)[0]).astype(np.int8)).reshape(shape)
