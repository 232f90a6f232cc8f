"""Joining the process group that ``torchrun`` describes in the environment."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def init_from_env(device: torch.device | str | None = None) -> torch.device:
    """Initialise ``torch.distributed`` when launched by torchrun (WORLD_SIZE > 1) and return this
    rank's device: ``cuda:LOCAL_RANK`` with NCCL when CUDA is available, else the CPU with gloo."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if world > 1 and dist.is_available() and not dist.is_initialized():
        if cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    if device is not None and torch.device(device).type != "cuda":
        return torch.device(device)
    return torch.device(f"cuda:{local_rank}") if cuda else torch.device("cpu")
