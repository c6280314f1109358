"""Progress for people: a rich bar on a terminal, a plain line every N steps in batch logs, nothing on other ranks."""

from __future__ import annotations

import logging
import sys
import time
from contextlib import contextmanager
from typing import Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

log = logging.getLogger("tl")
console = Console(stderr=True)  # progress and diagnostics; a command's answer goes to out_console()
PIPED_WIDTH = 10_000  # wider than any path: piped, a table row stays one line that grep and cut can read


def out_console() -> Console:
    """A command's answer (its table, summary or line), on whatever ``sys.stdout`` is now: test runners and notebooks
    swap it. No highlighting, markup or emoji codes, so a file name such as ``[1]:cat:.jpg`` prints as it is and piped
    output is plain text; piped, rows are not wrapped at 80 columns."""
    out = Console(file=sys.stdout, highlight=False, markup=False, emoji=False, soft_wrap=True)
    if not out.is_terminal and not out.is_jupyter:
        out.width = PIPED_WIDTH
    return out


class _CurrentStderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (test runners and notebooks swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


_quiet = False


@contextmanager
def quiet(enabled: bool = True) -> Iterator[None]:
    """No progress, plan or summary while inside (``tl.train(progress=False)``); warnings and errors still show."""
    global _quiet
    before, _quiet = _quiet, enabled or _quiet
    try:
        yield
    finally:
        _quiet = before


def is_quiet() -> bool:
    return _quiet


def setup_logging(is_main: bool) -> None:
    """One plain line per message on the main process; warnings only elsewhere."""
    logger = logging.getLogger("tl")
    # Found by a mark, not by class: a notebook's %autoreload makes a new _CurrentStderr class, and a second handler.
    if not any(getattr(h, "tl_stderr", False) for h in logger.handlers):
        handler = _CurrentStderr()
        handler.tl_stderr = True  # type: ignore[attr-defined]
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.propagate = False  # tl prints its own lines: a root handler (logging.basicConfig) would print each twice
    logger.setLevel(logging.INFO if is_main and not _quiet else logging.WARNING)


class EpochProgress:
    """Reports one epoch's steps. ``update`` is cheap; values are only formatted when shown."""

    def __init__(self, *, description: str, total: int, enabled: bool, every: int) -> None:
        self.description = description
        self.total = total
        self.every = every
        self.enabled = enabled and not _quiet
        self.start = time.perf_counter()
        self.bar: Progress | None = None
        if self.enabled and console.is_terminal:
            self.bar = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[stats]}"),
                TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=True,
            )
            self.task = self.bar.add_task(description, total=total, stats="")
            self.bar.start()

    def wants_stats(self, step: int) -> bool:
        """Whether step ``step`` (1-based) will be shown: the caller syncs with the device only then."""
        return self.enabled and (step % self.every == 0 or step == self.total)

    def update(self, step: int, stats: str = "") -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(self.task, completed=step, stats=stats if stats else self.bar.tasks[0].fields["stats"])
        elif stats:
            elapsed = time.perf_counter() - self.start
            log.info(f"{self.description} {step}/{self.total} {stats} ({elapsed:.0f}s)")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
