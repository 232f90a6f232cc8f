"""Machine description printed at the top of every benchmark's output."""

from __future__ import annotations

import datetime
import os
import platform

import torch


def header(title: str) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(l.split(":", 1)[1].strip() for l in fh if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"### {title}\n\n{datetime.date.today().isoformat()}, {cpu}, {os.cpu_count()} cores, "
            f"torch {torch.__version__} ({torch.get_num_threads()} threads), Python {platform.python_version()}\n")
