"""Training metrics: a JSON-lines log in the run directory and a rich progress bar."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from mpqfx.io import atomic_write_text


class MetricsLog:
    """Appends one JSON object per line to ``metrics.jsonl``; ``truncate_after`` drops lines past a step."""

    def __init__(self, path: Path | None):
        self.path = path

    def append(self, record: dict[str, Any]) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, sort_keys=True) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def records(self) -> list[dict[str, Any]]:
        """Every complete record (a line cut short by a crash is skipped)."""
        if self.path is None or not self.path.exists():
            return []
        out = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out

    def truncate_after(self, step: int) -> None:
        """Keep the records up to ``step`` (a resumed run rewrites what came after its checkpoint)."""
        if self.path is None or not self.path.exists():
            return
        kept = [json.dumps(r, sort_keys=True) for r in self.records() if r.get("step", 0) <= step]
        atomic_write_text(self.path, "".join(line + "\n" for line in kept))


def progress_bar(enabled: bool) -> Progress:
    """Per-epoch bar with loss, learning rate and images/s fields (silent when disabled)."""
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("lr {task.fields[lr]:.2e}"),
        TextColumn("{task.fields[ips]:.0f} img/s"), TimeElapsedColumn(), TimeRemainingColumn(),
        disable=not enabled, transient=False)


def phase_bar(enabled: bool) -> Progress:
    """A plain bar for the phases after training (evaluation, export)."""
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    disable=not enabled, transient=False)
