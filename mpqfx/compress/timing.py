"""Wall and CPU seconds per ``compress`` phase, kept in run.json so that a resumed run reports
what the whole run took, not only its last part.

A phase whose results a resumed run reuses (warm start, supernet training, search) adds this
process's time to the time recorded when it finished; a training phase cut off mid-way adds the
time its checkpoint recorded (``Trainer.carried``). Evaluation and export run again in full on
resume, so they report this process's time only.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from mpqfx.rundir import RunDir
from mpqfx.train.loop import Elapsed

PHASES = ("warm start", "supernet training", "search", "evaluation", "export")
KEPT = ("warm start", "supernet training", "search")


class PhaseTimes:
    """Per-phase wall and CPU seconds of one run, saved to run.json when each phase ends."""

    def __init__(self, run: RunDir, resume: bool, record: bool = True):
        self.run, self.record = run, record  # record=False: time without writing run.json (ranks other than 0)
        recorded = run.meta().get("seconds", {}) if resume else {}
        self.finished = [phase for phase in recorded.get("wall", {}) if phase in KEPT]
        self.spent = {phase: Elapsed(recorded["wall"][phase], recorded["cpu"][phase]) if phase in self.finished
                      else Elapsed() for phase in PHASES}
        self.current: str | None = None  # the phase running now

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the block as part of phase ``name``; record it in run.json once the block completes."""
        start = Elapsed.now()
        self.current = name
        yield
        self.add(name, Elapsed.now().since(start))
        if name not in self.finished:
            self.finished.append(name)
        if not self.record:
            return
        meta = self.run.meta()
        meta["seconds"] = {kind: {phase: getattr(self.spent[phase], kind) for phase in self.finished}
                           for kind in ("wall", "cpu")}
        self.run.write_meta(meta)

    def add(self, name: str, spent: Elapsed) -> None:
        self.spent[name] = self.spent.get(name, Elapsed()) + spent  # a phase only some runs have (fine-tune)

    @property
    def wall(self) -> dict[str, float]:
        return {phase: spent.wall for phase, spent in self.spent.items()}

    @property
    def cpu(self) -> dict[str, float]:
        return {phase: spent.cpu for phase, spent in self.spent.items()}
