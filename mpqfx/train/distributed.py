"""Joining the process group that ``torchrun`` describes in the environment, and the few
collectives a whole job needs around training (rank 0 alone writes the run directory, searches,
evaluates and exports while the other ranks wait)."""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Callable, TypeVar

import torch
import torch.distributed as dist

from mpqfx.errors import MpqfxError

T = TypeVar("T")
SOLO_TIMEOUT = timedelta(days=7)  # how long the other ranks wait for rank 0's search, evaluation and export


def resolve_device(device: torch.device | str | None = None) -> torch.device:
    """``device`` as a torch device (None: CUDA when available, else the CPU); one line when CUDA is
    asked for and there is none."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except RuntimeError:
        raise MpqfxError(f"--device {device!r}: expected cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MpqfxError(f"--device {device}: this machine has no CUDA device that torch {torch.__version__} can use")
    return device


def init_from_env(device: torch.device | str | None = None) -> torch.device:
    """Initialise ``torch.distributed`` when launched by torchrun (WORLD_SIZE > 1) and return this
    rank's device: ``cuda:LOCAL_RANK`` with NCCL when CUDA is available, else the CPU with gloo."""
    device = resolve_device(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if world > 1 and dist.is_available() and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda" and world > 1:
        return torch.device(f"cuda:{local_rank}")  # one GPU per process
    return device


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def is_main() -> bool:
    """Whether this process is rank 0 (or the only process)."""
    return not is_distributed() or dist.get_rank() == 0


def on_main(fn: Callable[[], T]) -> T:
    """``fn()`` run by rank 0 alone; every rank gets its result, or raises its error as one line."""
    if not is_distributed():
        return fn()
    box: list = [None]
    if dist.get_rank() == 0:
        try:
            box[0] = (True, fn())
        except Exception as exc:
            dist.broadcast_object_list([(False, str(exc))], src=0)
            raise
    dist.broadcast_object_list(box, src=0)
    done, value = box[0]
    if not done:
        raise MpqfxError(value)
    return value


def barrier() -> None:
    """Wait until every rank is here (nothing to do in a single process)."""
    if is_distributed():
        dist.barrier()


def solo_group() -> dist.ProcessGroup | None:
    """A gloo group whose barrier waits days, not the default minutes: the ranks that finished training
    wait on it while rank 0 works on alone (every rank must call this, at the same point)."""
    return dist.new_group(backend="gloo", timeout=SOLO_TIMEOUT) if is_distributed() else None
