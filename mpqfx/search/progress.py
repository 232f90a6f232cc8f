"""Progress of a search on the terminal: one row per target and kind of measurement, with the
count measured / total, the time spent and the time left."""

from __future__ import annotations

from types import TracebackType

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)


class SearchProgress:
    """A context manager that backends report to (``SearchContext.report``): ``progress(what, done, total)``.

    Example:
        >>> with SearchProgress() as progress:
        ...     for target in targets:
        ...         progress.target = target
        ...         mpqfx.search(net, target, data=batches, report=progress)
    """

    def __init__(self, enabled: bool = True, console: Console | None = None):
        self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), TimeRemainingColumn(), console=console, disable=not enabled,
                            transient=False)
        self.target = ""
        self._tasks: dict[tuple[str, str], TaskID] = {}

    def __enter__(self) -> "SearchProgress":
        self.bar.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.bar.stop()

    def __call__(self, what: str, done: int, total: int) -> None:
        key = (self.target, what)
        if key not in self._tasks:
            label = f"search {self.target}: {what}" if self.target else f"search: {what}"
            self._tasks[key] = self.bar.add_task(label, total=total)
        self.bar.update(self._tasks[key], completed=done, total=total)
