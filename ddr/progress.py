"""Progress displays: rich bars on a terminal, plain periodic lines otherwise.

Both take the per-dataset snapshots of ``Reduction.progress()`` and nothing
else, so they work the same for the CLI, notebooks and any engine.
"""

from __future__ import annotations

import sys
import time
from typing import IO

from ._driver import DatasetProgress

__all__ = ["RichProgress", "PlainProgress", "make_progress", "format_rate"]


def format_rate(rate: float) -> str:
    for unit, scale in (("MHz", 1e6), ("kHz", 1e3)):
        if rate >= scale:
            return f"{rate / scale:.2f} {unit}"
    return f"{rate:.0f} Hz"


def _eta(s: float | None) -> str:
    if s is None:
        return "?"
    s = int(s)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class PlainProgress:
    """One line per dataset every ``interval`` seconds (for logs and batch jobs)."""

    def __init__(self, stream: IO[str] | None = None, interval: float = 5.0) -> None:
        self.stream = stream or sys.stderr
        self.interval = interval
        self._last = 0.0

    def __enter__(self) -> "PlainProgress":
        return self

    def __exit__(self, *exc) -> None:
        pass

    def __call__(self, snaps: list[DatasetProgress], force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self.interval:
            return
        self._last = now
        for s in snaps:
            total = "?" if s.events_total is None else f"{s.events_total}"
            state = "done" if s.finished else f"eta {_eta(s.eta_seconds)}"
            print(f"[ddr] {s.dataset}: {s.events_done}/{total} events, {s.chunks_done} chunks"
                  f" ({s.chunks_failed} failed, {s.chunks_running} running), {format_rate(s.events_per_second)},"
                  f" {state}", file=self.stream, flush=True)


class RichProgress:
    """A rich progress bar per dataset: events done/total, chunks, rate, ETA."""

    def __init__(self, console=None) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        self._progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(),
            TextColumn("{task.completed:,.0f}/{task.fields[total_text]} ev"),
            TextColumn("{task.fields[chunks]} chunks"), TextColumn("{task.fields[rate]}"),
            TimeRemainingColumn(), console=console, transient=False)
        self._ids: dict[str, int] = {}

    def __enter__(self) -> "RichProgress":
        self._progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._progress.__exit__(*exc)

    def __call__(self, snaps: list[DatasetProgress], force: bool = False) -> None:
        for s in snaps:
            tid = self._ids.get(s.dataset)
            fields = dict(total_text="?" if s.events_total is None else f"{s.events_total:,}",
                          chunks=f"{s.chunks_done}" + (f" ({s.chunks_failed} failed)" if s.chunks_failed else ""),
                          rate=format_rate(s.events_per_second))
            if tid is None:
                tid = self._ids[s.dataset] = self._progress.add_task(s.dataset, total=s.events_total, **fields)
            self._progress.update(tid, completed=s.events_done, total=s.events_total, **fields)


def make_progress(quiet: bool = False, stream: IO[str] | None = None):
    """Rich bars on a terminal, plain lines otherwise, nothing when quiet."""
    if quiet:
        return None
    stream = stream or sys.stderr
    if stream.isatty():
        from rich.console import Console

        return RichProgress(Console(file=stream))
    return PlainProgress(stream)
