"""The handle of a reduction running in the background: ``DynamicDataReduction.submit()``.

Live progress and partial results for notebooks, ``result()``/``cancel()``/``await``, and the
snapshots behind ``partial()``: copies of the partials held for each dataset merged on the manager,
with the fraction of the dataset's events they cover.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

from ._api import DynamicDataReduction, build_report
from ._driver import DatasetProgress, Reduction
from .exceptions import DDRError

__all__ = ["RunHandle"]


class RunHandle:
    """A reduction running in a background thread; returned by ``submit()``.

    ``progress`` (per-dataset :class:`DatasetProgress` snapshots), ``partial()``,
    ``result(timeout)``, ``cancel()``, ``done()``, ``cancelled()``; ``await handle``
    inside a running event loop; ``show()`` for a live display.

    Threading: the manager is touched only by the background thread. ``progress``
    is a copy taken under a lock; ``partial()`` hands a request to the background
    thread, which merges a snapshot between two driver steps. Both are safe from
    any thread (the Jupyter kernel's included) and never block the run.
    A manager passed with ``manager=`` runs one reduction at a time: submitting a
    second one while the first runs is refused with an error.
    """

    def __init__(self, ddr: DynamicDataReduction) -> None:
        self._ddr = ddr
        self._done = threading.Event()
        self._cancel = threading.Event()
        self._lock = threading.Lock()
        self._partial_requests: list[tuple[threading.Event, list]] = []
        self._callbacks: list[Callable[["RunHandle"], Any]] = []
        self._closed = False  # no more partial requests are served by the thread (under _lock)
        self._progress: list[DatasetProgress] = []
        self._final_partial: dict[str, tuple[Any, float]] = {}
        self._result: Any = None
        self._error: BaseException | None = None
        self._cancelled = False
        self._started = time.monotonic()
        self._ended: float | None = None
        self._claimed = ddr.manager
        if self._claimed is not None:
            _claim_manager(self._claimed, self)
        self._thread = threading.Thread(target=self._main, name="ddr-run", daemon=True)
        try:
            self._thread.start()
        except BaseException:
            _release_manager(self._claimed, self)
            raise

    # ------------------------------------------------------------ queries
    @property
    def progress(self) -> list[DatasetProgress]:
        """Per dataset: events done/total, chunks done/failed/running, rate, ETA (refreshed ~5 times a second)."""
        with self._lock:
            return list(self._progress)

    @property
    def status(self) -> str:
        """``running``, ``cancelling``, ``finished``, ``cancelled`` or ``failed``."""
        if not self._done.is_set():
            return "cancelling" if self._cancel.is_set() else "running"
        if self._error is not None:
            return "failed"
        return "cancelled" if self._cancelled else "finished"

    @property
    def elapsed(self) -> float:
        return (self._ended if self._ended is not None else time.monotonic()) - self._started

    @property
    def report(self) -> dict[str, Any] | None:
        """The run report (as ``ddr run --report`` writes it) once the run has finished or was cancelled."""
        return self._ddr.report if self._done.is_set() else None

    def done(self) -> bool:
        return self._done.is_set()

    def cancelled(self) -> bool:
        return self._done.is_set() and self._cancelled

    def cancel(self, timeout: float | None = 30) -> bool:
        """Stop the run: queued chunks are dropped and running ones stopped (their worker processes
        are restarted; the other workers stay warm). Returns whether it had stopped within ``timeout``.
        ``partial()`` keeps what was merged before the cancel."""
        self._cancel.set()
        return self._done.wait(timeout)

    def result(self, timeout: float | None = None) -> Any:
        """The same as ``compute()`` would return. Raises the run's error, ``TimeoutError``, or
        ``concurrent.futures.CancelledError`` after ``cancel()``."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"the reduction did not finish within {timeout} s (see handle.progress)")
        if self._error is not None:
            raise self._error
        if self._cancelled:
            from concurrent.futures import CancelledError

            raise CancelledError("the reduction was cancelled before it finished: handle.partial() has what was "
                                 "merged before the cancel, handle.report what was processed")
        return self._result

    def partial(self, timeout: float | None = 60) -> dict[str, tuple[Any, float]]:
        """``{dataset: (result so far, fraction of the dataset's events it covers)}``.

        The result so far has the shape of ``result()`` per dataset (``None`` while nothing is
        merged yet; with several processors, ``{processor: value}``). After the run: the final
        result (fraction 1.0 for complete datasets); after ``cancel()``: what was merged before it.
        """
        ev, box = threading.Event(), []
        with self._lock:
            if self._closed:
                return dict(self._final_partial)
            self._partial_requests.append((ev, box))
        if not ev.wait(timeout):
            with self._lock:
                self._partial_requests = [r for r in self._partial_requests if r[0] is not ev]
            raise TimeoutError(f"no partial result within {timeout} s")
        return box[0]

    def add_done_callback(self, fn: Callable[["RunHandle"], Any]) -> None:
        """Call ``fn(handle)`` once the run has ended (at once if it has), from the run's thread."""
        with self._lock:
            if not self._done.is_set():
                self._callbacks.append(fn)
                return
        _call(fn, self)

    def __await__(self):
        return self._wait_async().__await__()

    async def _wait_async(self) -> Any:
        import asyncio

        if not self._done.is_set():
            loop = asyncio.get_running_loop()
            woken = loop.create_future()

            def wake(_handle: "RunHandle") -> None:
                def set_() -> None:
                    if not woken.done():
                        woken.set_result(None)

                loop.call_soon_threadsafe(set_)

            self.add_done_callback(wake)
            await woken
        return self.result(0)

    # ------------------------------------------------------------ display
    def show(self, interval: float = 0.5, *, wait: bool = False, stream: Any = None) -> None:
        """Live progress until the run ends: a table refreshed in place in Jupyter, rich bars on a
        terminal (plain lines when ``stream`` is not a terminal). Returns at once unless ``wait``."""
        from .progress import show_live

        show_live(self._view, self.done, interval=interval, wait=wait, stream=stream)

    def _view(self):
        from .progress import ProgressView

        return ProgressView(self.progress, self.status, self.elapsed)

    def _repr_html_(self) -> str:
        return self._view()._repr_html_()

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self._view()))

    def __repr__(self) -> str:
        done = sum(p.events_done for p in self.progress)
        return f"<ddr.RunHandle {self.status}, {done:,} events processed, {self.elapsed:.1f} s>"

    # ------------------------------------------------------ background thread
    def _set_progress(self, run: Reduction) -> None:
        snaps = run.progress()
        with self._lock:
            self._progress = snaps

    def _answer_partials(self, run: Reduction) -> None:
        with self._lock:
            reqs, self._partial_requests = self._partial_requests, []
        if not reqs:
            return
        snap = _partial_snapshot(self._ddr, run)
        for ev, box in reqs:
            box.append(snap)
            ev.set()

    def _main(self) -> None:
        ddr = self._ddr
        m = None
        own = False
        run = None
        try:
            m, own = ddr._open_manager()
            run = ddr._start(m)
            last = 0.0
            while True:
                if self._cancel.is_set():
                    try:  # keep what was merged so far: partial() returns it after the cancel
                        self._final_partial = _partial_snapshot(ddr, run)
                    except Exception:  # noqa: BLE001 - a failed snapshot must not stop the cancel
                        self._final_partial = {}
                    run.cancel()
                    break
                fin = run.step(0.1)
                now = time.monotonic()
                if fin or now - last > 0.2:
                    self._set_progress(run)
                    last = now
                self._answer_partials(run)
                if fin:
                    break
            self._set_progress(run)
            if run.error is not None:
                self._error = run.error
            elif run.cancelled:
                self._cancelled = True
                ddr.report = dict(build_report(run), cancelled=True)
            else:
                self._result = ddr._assemble(run)
                self._final_partial = _final_partials(ddr, run, self._result)
        except BaseException as exc:  # noqa: BLE001 - handed to result()
            self._error = exc
        finally:
            try:
                if own and m is not None:
                    m.close()
                elif run is not None:
                    run.close()
            except Exception as exc:  # noqa: BLE001
                if self._error is None and not self._cancelled:
                    self._error = exc
            _release_manager(self._claimed, self)
            self._ended = time.monotonic()
            with self._lock:
                self._closed = True
                reqs, self._partial_requests = self._partial_requests, []
                final = dict(self._final_partial)
                callbacks, self._callbacks = self._callbacks, []
                self._done.set()
            for ev, box in reqs:
                box.append(final)
                ev.set()
            for fn in callbacks:
                _call(fn, self)


def _call(fn: Callable[[RunHandle], Any], handle: RunHandle) -> None:
    try:
        fn(handle)
    except Exception:  # noqa: BLE001 - a display or a closed event loop must not break the run
        import logging

        logging.getLogger("ddr").exception("a RunHandle done-callback failed")


_managers_lock = threading.Lock()
_managers_in_use: dict[int, tuple[Any, RunHandle]] = {}  # id(manager) -> (manager, the handle running on it)


def _claim_manager(manager: Any, handle: RunHandle) -> None:
    with _managers_lock:
        held = _managers_in_use.get(id(manager))
        if held is not None and held[0] is manager and not held[1].done():
            raise DDRError("this vinecore.Manager is already running a reduction submitted earlier: a manager "
                           "runs one reduction at a time. Wait for it (handle.result()) or stop it "
                           "(handle.cancel()) first, or pass another manager.")
        _managers_in_use[id(manager)] = (manager, handle)


def _release_manager(manager: Any, handle: RunHandle) -> None:
    if manager is None:
        return
    with _managers_lock:
        held = _managers_in_use.get(id(manager))
        if held is not None and held[1] is handle:
            del _managers_in_use[id(manager)]


def _by_dataset(result: Any, single: bool) -> dict[str, Any]:
    if single:
        return dict(result)
    out: dict[str, dict[str, Any]] = {}
    for proc, per_ds in result.items():
        for ds, v in per_ds.items():
            out.setdefault(ds, {})[proc] = v
    return out


def _fraction(run: Reduction, ds: str, events: int) -> float:
    total = run.sources[ds].events_expected
    if total:
        return events / total
    led = run.ledgers[ds]
    return 1.0 if ds in run.results and led.complete else 0.0


def _final_partials(ddr: DynamicDataReduction, run: Reduction, result: Any) -> dict[str, tuple[Any, float]]:
    """The final result per dataset with the fraction its coverage really has (< 1 if chunks failed)."""
    values = _by_dataset(result, ddr._single)
    out = {}
    for ds in run.ledgers:
        final = run.ledgers[ds].final
        out[ds] = (values.get(ds), _fraction(run, ds, final.events if final is not None else 0))
    return out


def _partial_snapshot(ddr: DynamicDataReduction, run: Reduction) -> dict[str, tuple[Any, float]]:
    """Merge, on the manager, copies of every partial currently held per dataset.

    Runs in the handle's thread between two driver steps, so the set of held partials (pooled, or
    inputs of a running accumulation) is exactly what the ledger says has been processed: the
    fraction and the value always agree, and never decrease from one call to the next.
    """
    import copy

    out = {}
    for ds in run.ledgers:
        value, cov, final = run.merged_so_far(ds)
        value = ddr._finalize(ds, value)  # dask-mode array pieces joined (a new object)
        if final:
            value = copy.deepcopy(value)  # the final value: the caller may not alter it
        if value is not None and ddr._single:
            value = next(iter(value.values()))
        out[ds] = (value, _fraction(run, ds, cov.events))
    return out
