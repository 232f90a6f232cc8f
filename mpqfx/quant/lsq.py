"""LSQ fake quantization (Esser et al., ICLR'20) with one learnable step per candidate bit-width."""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.distributed as dist
from torch import nn

STEP_EPS = 1e-8


def int_range(bits: int, signed: bool) -> tuple[int, int]:
    """Integer range of a b-bit quantizer: [-2^(b-1), 2^(b-1)-1] signed, [0, 2^b-1] unsigned."""
    if signed:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def host_step(step: torch.Tensor) -> torch.Tensor | float:
    """On CPU a 0-dim step as a Python float: in-place ops by a 0-dim tensor take a slow path there
    (mul_ ~6x slower); per-channel steps, and steps on accelerators, as the tensor itself."""
    return float(step) if step.device.type == "cpu" and step.dim() == 0 else step


def _flat_in_memory_order(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``t`` flattened in the element order of ``like``'s memory: a view, no copy, when ``t`` is
    laid out like ``like`` (a channels_last tensor flattened as NCHW would be copied)."""
    if like.dim() == 4 and not like.is_contiguous() and like.is_contiguous(memory_format=torch.channels_last):
        t = t.permute(0, 2, 3, 1)
    return t.reshape(-1)


def _per_step_dot(a: torch.Tensor, b: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """<a, b> summed into ``step``'s shape: a scalar for a 0-dim step, one sum per output channel
    for a per-channel step shaped (C, 1, ...)."""
    if step.dim() == 0:
        return torch.dot(_flat_in_memory_order(a, like=a), _flat_in_memory_order(b, like=a))
    return (a * b).sum(dim=tuple(range(1, a.dim())), keepdim=True)


class OutputReuse:
    """For a quantizer whose output feeds exactly one op once per forward and backward (a
    layer's own weight): the next forward writes into the previous output once its backward
    has run, and the backward masks the incoming gradient (that op's fresh weight gradient) in
    place. Each saves a weight-sized allocation per pass, whose page faults on CPU cost about
    as much as the kernel writing it. A forward that comes before the last one's backward (two
    forwards, then their backwards) gets a new buffer: each buffer is lent with a ticket, and
    only the backward holding the newest ticket gives the buffer back."""

    def __init__(self) -> None:
        self.buffer: torch.Tensor | None = None
        self.ticket = 0
        self.free = False

    def take(self, x: torch.Tensor) -> tuple[torch.Tensor, int]:
        """A tensor shaped like ``x`` for this forward's output, and the ticket to give it back with."""
        b = self.buffer
        if not (self.free and b is not None and b.shape == x.shape and b.stride() == x.stride()
                and b.dtype == x.dtype and b.device == x.device):
            self.buffer = b = torch.empty_like(x)  # x's layout: a channels_last weight stays channels_last
        self.free = False
        self.ticket += 1
        return b, self.ticket

    def give_back(self, ticket: int) -> None:
        """End of the backward of the forward that took ``ticket``: its output is no longer needed
        (unless a double backward still records, or a later forward holds a newer buffer)."""
        if ticket == self.ticket and not torch.is_grad_enabled():
            self.free = True

    @staticmethod
    def may_overwrite(grad: torch.Tensor) -> bool:
        """Whether the backward may mask ``grad`` in place (not under double backward)."""
        return not grad.requires_grad and (grad.is_contiguous() or grad.is_contiguous(memory_format=torch.channels_last))

    def __deepcopy__(self, memo) -> "OutputReuse":
        return OutputReuse()


def save_for_lsq_backward(ctx, x: torch.Tensor, step: torch.Tensor, s: torch.Tensor | float, out: torch.Tensor,
                          qmin: int, qmax: int, grad_scale: float, reuse: OutputReuse | None, ticket: int) -> None:
    """Store what ``_LSQFunction.backward`` needs: out = q * step with integers q in [qmin, qmax];
    ``reuse``/``ticket``: the buffer lender and this forward's ticket. The Function's forward
    takes (input, step, four non-tensor arguments), as ``_LSQFunction.backward`` returns."""
    ctx.save_for_backward(x, step, out)
    ctx.consts = (qmin, qmax, grad_scale, s)
    ctx.reuse, ctx.ticket = reuse, ticket


class _LSQFunction(torch.autograd.Function):
    """round(clip(x/s, qmin, qmax)) * s with LSQ's straight-through gradients; ``s`` is 0-dim or
    one step per output channel, shaped (C, 1, ...) to broadcast against ``x``.

    Hand-written for speed on CPU, where quantizing 11M weights per step otherwise costs a third
    of a ResNet18 step: the output is built in place from one allocation (none with ``reuse``),
    only ``x`` and the output are saved, and the backward is one fused mask kernel
    (hardtanh_backward, in place with ``reuse``) plus two dot products.
    """

    @staticmethod
    def forward(ctx, x, step, qmin: int, qmax: int, grad_scale: float, reuse: OutputReuse | None):  # type: ignore[override]
        x = x.to(step.dtype)  # under autocast the input may arrive in half precision
        step = step.clamp(min=STEP_EPS)
        s = host_step(step)
        buffer, ticket = reuse.take(x) if reuse is not None else (None, 0)
        out = torch.div(x, step, out=buffer).clamp_(qmin, qmax).round_().mul_(s)
        save_for_lsq_backward(ctx, x, step, s, out, qmin, qmax, grad_scale, reuse, ticket)
        return out

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x, step, out = ctx.saved_tensors
        qmin, qmax, grad_scale, s = ctx.consts
        grad_step = None
        if ctx.needs_input_grad[1]:  # <grad, out> before the mask may overwrite grad
            grad_out = _per_step_dot(grad, out, step)
        # d x_hat / d x = 1 where qmin < x/s < qmax, else 0 (STE through round, LSQ Eq. 5)
        if isinstance(s, float):  # compare x against the scaled bounds: no x/s pass
            compared, lo, hi = x, qmin * s, qmax * s
        else:
            compared, lo, hi = x / step, qmin, qmax
        if ctx.reuse is not None and OutputReuse.may_overwrite(grad):
            grad_x = torch.ops.aten.hardtanh_backward.grad_input(grad, compared, lo, hi, grad_input=grad)
        else:
            grad_x = torch.ops.aten.hardtanh_backward(grad, compared, lo, hi)
        if ctx.needs_input_grad[1]:
            # d x_hat / d s = round(x/s) - x/s inside the range, qmin/qmax outside (LSQ Eq. 3):
            # sum(grad * q) - sum(grad_x * x/s) = (<grad, out> - <grad_x, x>) / s
            grad_step = (grad_out - _per_step_dot(grad_x, x, step)) * (grad_scale / s)
        if ctx.reuse is not None:
            ctx.reuse.give_back(ctx.ticket)
        return grad_x if ctx.needs_input_grad[0] else None, grad_step, None, None, None, None


def lsq_quantize(x: torch.Tensor, step: torch.Tensor, qmin: int, qmax: int, grad_scale: float,
                 reuse: OutputReuse | None = None) -> torch.Tensor:
    """Fake-quantize ``x`` with step ``step`` (0-dim, or (C, 1, ...) for one step per output
    channel; clamped to >= 1e-8) to integers in [qmin, qmax].

    The step's gradient is multiplied by ``grad_scale`` (LSQ uses 1/sqrt(N * qmax), N the values
    one step quantizes).
    ``reuse``: the output feeds one op once per forward and backward (see ``OutputReuse``).
    """
    return _LSQFunction.apply(x, step, qmin, qmax, grad_scale, reuse)


CHANNEL_SAMPLE = 1024  # values per output channel a per-channel fit reads at most
FIT_CHUNK = 1 << 23  # grid elements (ranges x rows x points x values) evaluated at once


def mse_init_steps(x: torch.Tensor, ranges: Sequence[tuple[int, int]], points: int = 32,
                   sample: int = 1 << 14, per_channel: bool = False) -> torch.Tensor:
    """For each integer range (qmin, qmax), the step minimising ||Q(x) - x||^2: shape [ranges],
    or [ranges, C] with ``per_channel`` (one step per slice ``x[c]``).

    A log grid from max|x|/qmax down to 1/64 of it is searched for every range at once, then
    three least-squares refinements s = <x, q> / <q, q> follow. Fitting to the error instead of
    LSQ's 2*mean|x|/sqrt(qmax) matters at high bit-widths (8-bit weight error drops ~4x). At most
    ``sample`` values (``CHANNEL_SAMPLE`` per channel) drawn at random (a fixed seed, so fits
    repeat) keep it cheap; a strided subsample would alias with the layout (an NCHW activation
    read every C-th value samples a few pixel positions only).
    """
    rows = x.detach().float().reshape(x.shape[0] if per_channel else 1, -1)
    limit = CHANNEL_SAMPLE if per_channel else sample
    if rows.shape[1] > limit:
        draw = torch.Generator(device=rows.device).manual_seed(0)
        rows = rows[:, torch.randint(rows.shape[1], (limit,), generator=draw, device=rows.device)]
    lo = torch.tensor([float(r[0]) for r in ranges], device=rows.device)[:, None, None]  # [ranges, 1, 1]
    hi = torch.tensor([float(r[1]) for r in ranges], device=rows.device)[:, None, None]
    chunk = max(1, FIT_CHUNK // (len(ranges) * points * rows.shape[1]))
    steps = [_fit_rows(part, lo, hi, points) for part in rows.split(chunk)]
    out = torch.cat(steps, dim=1)  # [ranges, C]
    return out if per_channel else out[:, 0]


def _fit_rows(rows: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, points: int) -> torch.Tensor:
    """``mse_init_steps`` for the rows [G, n] and ranges lo/hi [R, 1, 1]: steps [R, G]."""
    top = rows.amax(1)[None, :, None] / hi  # unsigned: only the positive side; signed: the wider side
    top = torch.where(lo < 0, torch.maximum(top, rows.amin(1)[None, :, None] / lo), top).clamp(min=STEP_EPS * 1e3)
    grid = top * torch.logspace(-6, 0, points, base=2.0, device=rows.device)  # [R, G, points]
    values = rows[None, :, None, :]  # [1, G, 1, n]
    scaled = (values / grid[..., None]).clamp(lo[..., None], hi[..., None]).round_()
    err = (scaled * grid[..., None] - values).square_().sum(-1)  # [R, G, points]
    step = grid.gather(2, err.argmin(2, keepdim=True))  # [R, G, 1]
    values = rows[None]  # [1, G, n]
    for _ in range(3):
        q = (values / step).clamp(lo, hi).round_()
        norm = q.square().sum(2, keepdim=True)
        step = torch.where(norm > 0, (values * q).sum(2, keepdim=True) / norm.clamp(min=1), step)
    return step.squeeze(2).clamp(min=STEP_EPS)


def bit_key(bits: int) -> str:
    return f"b{bits}"


class MultiBitLSQ(nn.Module):
    """One learnable LSQ step per candidate bit-width for one tensor (a weight or an input).

    ``forward(x, bits)`` quantizes with that bit-width's step; ``bits=None`` passes ``x`` through.
    Steps are fitted by ``mse_init_steps``: weight quantizers by ``init_steps(weight)`` when the
    layer is built, activation quantizers lazily, for each bit-width, from the first batch that
    bit-width sees (averaged over ranks under DDP).
    ``per_sample``: LSQ's gradient scale counts the features of one sample (activations) rather
    than every element (weights). ``step_shape``: () for one step per bit-width, or (C, 1, ...)
    for one per output channel of a weight (its gradient scale then counts one channel's values).
    """

    def __init__(self, bits: Sequence[int], signed: bool, per_sample: bool, step_shape: tuple[int, ...] = ()):
        super().__init__()
        self.bits = tuple(sorted(bits))
        self.signed = signed
        self.per_sample = per_sample
        self.step_shape = tuple(step_shape)
        self.steps = nn.ParameterDict({bit_key(b): nn.Parameter(torch.ones(self.step_shape)) for b in self.bits})
        self.register_buffer("initialized", torch.zeros(len(self.bits), dtype=torch.bool))
        self._ready: set[int] = set()  # mirrors `initialized` without a device sync per forward
        self._reuse = OutputReuse()

    @property
    def per_channel(self) -> bool:
        return bool(self.step_shape)

    def step(self, bits: int) -> nn.Parameter:
        return self.steps[bit_key(bits)]

    @torch.no_grad()
    def init_step(self, bits: int, x: torch.Tensor) -> None:
        """Set the step of ``bits`` from ``x``; under DDP, activation steps are averaged over ranks."""
        value = mse_init_steps(x, [int_range(bits, self.signed)], per_channel=self.per_channel)[0]
        if self.per_sample and dist.is_available() and dist.is_initialized():
            dist.all_reduce(value)
            value /= dist.get_world_size()
        self.step(bits).copy_(value.view(self.step_shape))
        self.initialized[self.bits.index(bits)] = True
        self._ready.add(bits)

    @torch.no_grad()
    def init_steps(self, x: torch.Tensor) -> None:
        """Fit the step of every candidate bit-width to ``x`` at once (weight quantizers, at build time)."""
        steps = mse_init_steps(x, [int_range(b, self.signed) for b in self.bits], per_channel=self.per_channel)
        for bits, value in zip(self.bits, steps):
            self.step(bits).copy_(value.view(self.step_shape))
        self.initialized.fill_(True)
        self._ready.update(self.bits)

    @torch.no_grad()
    def integers(self, x: torch.Tensor, bits: int) -> torch.Tensor:
        """The integers (as float values) that ``forward(x, bits)`` multiplies by the step."""
        step = self.step(bits).clamp(min=STEP_EPS)
        return torch.div(x, step).clamp_(*int_range(bits, self.signed)).round_()

    @torch.no_grad()
    def reset(self) -> None:
        """Forget every fitted step: each bit-width is fitted again from the next input it sees."""
        self.initialized.fill_(False)
        self._ready.clear()

    def forward(self, x: torch.Tensor, bits: int | None, exclusive: bool = False) -> torch.Tensor:
        """``x`` fake-quantized at ``bits`` (None: ``x`` itself); ``exclusive``: the output feeds
        one op once per forward and backward, so its buffers are reused (``OutputReuse``)."""
        if bits is None:
            return x
        if bits not in self._ready:
            if bool(self.initialized[self.bits.index(bits)]):
                self._ready.add(bits)
            else:
                self.init_step(bits, x)
        qmin, qmax = int_range(bits, self.signed)
        numel = x[0].numel() if self.per_sample or self.per_channel else x.numel()
        return lsq_quantize(x, self.step(bits), qmin, qmax, 1.0 / math.sqrt(numel * qmax),
                            self._reuse if exclusive and torch.is_grad_enabled() else None)

    def _load_from_state_dict(self, *args, **kwargs):
        self._ready.clear()
        super()._load_from_state_dict(*args, **kwargs)

    def extra_repr(self) -> str:
        return f"bits={list(self.bits)}, signed={self.signed}"
