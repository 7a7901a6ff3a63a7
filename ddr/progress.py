"""Progress displays: rich bars on a terminal, plain periodic lines otherwise, tables in Jupyter.

All take the per-dataset snapshots of ``Reduction.progress()`` and nothing
else, so they work the same for the CLI, notebooks and any engine.
``RunHandle.show()`` uses :func:`show_live`; ``display(handle)`` and
``repr(handle)`` use :class:`ProgressView`.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import IO, Any, Callable

from ._driver import DatasetProgress

__all__ = ["RichProgress", "PlainProgress", "make_progress", "format_rate", "format_table", "format_html",
           "ProgressView", "in_jupyter", "show_live"]


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

    def __init__(self, stream: IO[str] | None = None, interval: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream or sys.stderr
        self.interval = interval
        self.clock = clock
        self._last: float | None = None  # nothing printed yet: the first call always prints
        self._unprinted: list[DatasetProgress] | None = None

    def __enter__(self) -> "PlainProgress":
        return self

    def __exit__(self, *exc) -> None:
        if self._unprinted is not None:  # the final state always reaches the log
            self(self._unprinted, force=True)

    def __call__(self, snaps: list[DatasetProgress], force: bool = False) -> None:
        now = self.clock()
        if not force and self._last is not None and now - self._last < self.interval:
            self._unprinted = snaps
            return
        self._last = now
        self._unprinted = None
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


# ------------------------------------------------------------------ tables (notebooks, repr)
def _row(s: DatasetProgress) -> dict[str, str]:
    total = s.events_total
    frac = (s.events_done / total) if total else (1.0 if s.finished else None)
    chunks = f"{s.chunks_done}"
    if s.chunks_failed:
        chunks += f" ({s.chunks_failed} failed)"
    if s.chunks_running:
        chunks += f", {s.chunks_running} running"
    return {
        "dataset": s.dataset,
        "events": f"{s.events_done:,}/{'?' if total is None else f'{total:,}'}",
        "done": "?" if frac is None else f"{frac:.1%}",
        "chunks": chunks,
        "rate": format_rate(s.events_per_second),
        "eta": "done" if s.finished else _eta(s.eta_seconds),
        "fraction": "" if frac is None else f"{min(1.0, frac):.4f}",
    }


_COLUMNS = ("dataset", "events", "done", "chunks", "rate", "eta")


def format_table(snaps: list[DatasetProgress], status: str = "", elapsed: float | None = None) -> str:
    """A fixed-width text table of per-dataset progress (what ``repr`` and plain displays show)."""
    head = "ddr run" + (f": {status}" if status else "") + ("" if elapsed is None else f" ({elapsed:.1f} s)")
    if not snaps:
        return head + "\n(no progress yet: the run is starting)"
    rows = [_row(s) for s in snaps]
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in _COLUMNS}
    lines = [head, "  ".join(c.upper().ljust(widths[c]) for c in _COLUMNS).rstrip()]
    for r in rows:
        lines.append("  ".join(r[c].ljust(widths[c]) for c in _COLUMNS).rstrip())
    return "\n".join(lines)


def format_html(snaps: list[DatasetProgress], status: str = "", elapsed: float | None = None) -> str:
    """The same table as HTML, with a bar per dataset (for Jupyter)."""
    import html

    head = html.escape("ddr run" + (f": {status}" if status else "")
                       + ("" if elapsed is None else f" ({elapsed:.1f} s)"))
    if not snaps:
        return f"<div><b>{head}</b><br><i>no progress yet: the run is starting</i></div>"
    cells = "".join(f"<th style='text-align:left'>{c}</th>" for c in ("dataset", "progress", *_COLUMNS[1:]))
    body = []
    for s in snaps:
        r = _row(s)
        bar = (f"<progress value='{r['fraction']}' max='1' style='width:10em'></progress>" if r["fraction"]
               else "<progress style='width:10em'></progress>")
        tds = [html.escape(r["dataset"]), bar] + [html.escape(r[c]) for c in _COLUMNS[1:]]
        body.append("<tr>" + "".join(f"<td style='text-align:left'>{x}</td>" for x in tds) + "</tr>")
    return f"<div><b>{head}</b><table><thead><tr>{cells}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"


class ProgressView:
    """A snapshot that IPython displays as an HTML table (text elsewhere)."""

    def __init__(self, snaps: list[DatasetProgress], status: str = "", elapsed: float | None = None) -> None:
        self.snaps, self.status, self.elapsed = list(snaps), status, elapsed

    def _repr_html_(self) -> str:
        return format_html(self.snaps, self.status, self.elapsed)

    def __repr__(self) -> str:
        return format_table(self.snaps, self.status, self.elapsed)


def in_jupyter() -> bool:
    """True inside a Jupyter (ipykernel) kernel; never imports IPython itself."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    try:
        shell = ipython.get_ipython()
    except Exception:  # noqa: BLE001 - a broken IPython is not a notebook
        return False
    return shell is not None and getattr(shell, "kernel", None) is not None


def show_live(view: Callable[[], ProgressView], done: Callable[[], bool], *, interval: float = 0.5,
              wait: bool = False, stream: IO[str] | None = None) -> None:
    """Keep a progress display up to date until ``done()``.

    In Jupyter: one table (HTML) refreshed in place through a display id. Elsewhere: rich bars on a
    terminal, plain lines (every ``max(interval, 5)`` s) on other streams. With ``wait=False`` the
    refreshing happens in a daemon thread and this returns at once; updates are read from ``view()``
    only, so nothing here touches the run itself.
    """
    interval = max(0.05, float(interval))
    if stream is None and in_jupyter():
        from IPython.display import display

        handle = display(view(), display_id=True)

        def loop() -> None:
            while not done():
                time.sleep(interval)
                handle.update(view())
            handle.update(view())
    else:
        stream = stream or sys.stderr
        if stream.isatty():
            from rich.console import Console

            bars: Any = RichProgress(Console(file=stream))
        else:
            bars = PlainProgress(stream, interval=max(interval, 5.0))

        def loop() -> None:
            with bars:
                while not done():
                    bars(view().snaps)
                    time.sleep(interval)
                bars(view().snaps, force=True)
    if wait:
        loop()
    else:
        threading.Thread(target=loop, name="ddr-progress", daemon=True).start()
