"""Packed b-bit integers round-trip and take ceil(n*b/8) bytes."""

from __future__ import annotations

import pytest
import torch

from mpqfx.export.packing import pack_ints, unpack_ints
from mpqfx.quant.lsq import int_range


@pytest.mark.parametrize("bits", range(2, 9))
def test_pack_unpack_round_trip(bits):
    qmin, qmax = int_range(bits, signed=True)
    values = torch.randint(qmin, qmax + 1, (7, 3, 5), generator=torch.Generator().manual_seed(bits))
    values[0, 0, 0], values[-1, -1, -1] = qmin, qmax  # both ends of the range
    packed = pack_ints(values, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == (values.numel() * bits + 7) // 8
    assert torch.equal(unpack_ints(packed, bits, tuple(values.shape)), values.to(torch.int8))


def test_out_of_range_values_and_wrong_sizes_are_refused():
    with pytest.raises(ValueError, match="outside the 3-bit range"):
        pack_ints(torch.tensor([4]), 3)
    with pytest.raises(ValueError, match="cannot hold"):
        unpack_ints(torch.zeros(2, dtype=torch.uint8), 4, (5,))
