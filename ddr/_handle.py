"""The handle of a running reduction: ``DynamicDataReduction.submit()`` (and, through it, ``compute()``).

One background thread runs the driver loop and is the only one that touches the manager. Every
query is answered from copies taken by that thread, or handed to it as a request that it serves
between two steps: ``progress`` (refreshed ~5 times a second), ``partial()`` (a merge of what is
held, on the manager), ``cancel()``. On every way out (finished, failed, cancelled, interrupted) the
thread writes a last checkpoint if the run keeps any, takes the final snapshot of everything held,
builds the report, and only then lets the workers drop the run's temps and library.

A manager runs one reduction at a time: every run claims its manager, and a second run on a
manager in use is refused at once with an error naming the way out.
"""

from __future__ import annotations

import copy
import threading
import time
from typing import Any, Callable

from ._api import DynamicDataReduction
from ._driver import DatasetProgress, Driver
from ._gcpolicy import fewer_collections
from ._reduction import RunStatus
from ._report import build_report
from .exceptions import DDRError

__all__ = ["RunHandle"]


class RunHandle:
    """A reduction running in a background thread; returned by ``submit()``.

    ``progress`` (per-dataset :class:`DatasetProgress` snapshots), ``partial()``, ``outputs()``,
    ``result(timeout)``, ``cancel()``, ``done()``, ``cancelled()``, ``status``, ``report``;
    ``await handle`` inside a running event loop; ``show()`` for a live display.
    All are safe from any thread (a Jupyter kernel's included) and never block the run.
    """

    def __init__(self, ddr: DynamicDataReduction, *,
                 progress: Callable[[list[DatasetProgress]], None] | None = None,
                 progress_interval: float = 0.5) -> None:
        self._ddr = ddr
        self._progress_cb = progress
        self._progress_interval = progress_interval
        self._done = threading.Event()
        self._cancel_reason: str | None = None
        self._lock = threading.Lock()
        self._requests: list[tuple[threading.Event, list]] = []
        self._callbacks: list[Callable[["RunHandle"], Any]] = []
        self._closed = False  # no more partial requests are served by the thread (under _lock)
        self._progress: list[DatasetProgress] = []
        self._final: dict[str, tuple[Any, float]] = {}  # dataset -> ({processor: value}, fraction)
        self._result: Any = None
        self._error: BaseException | None = None
        self._status = RunStatus.RUNNING.value
        self._report: dict[str, Any] | None = None
        self._started = time.monotonic()
        self._ended: float | None = None
        self._driver: Driver | None = None
        self._claimed = ddr.manager
        if self._claimed is not None:
            _claim_manager(self._claimed, self)
        self._thread = threading.Thread(target=self._main, name="ddr-run", daemon=True)
        self._zygote = None
        try:
            self._zygote = ddr._prefork()  # before the run's thread exists (see ddr._api)
            self._thread.start()
        except BaseException:
            if self._zygote is not None:
                self._zygote.close()
            _release_manager(self._claimed, self)
            raise

    # ------------------------------------------------------------ queries
    @property
    def progress(self) -> list[DatasetProgress]:
        """Per dataset: events done/total, chunks done/failed/running, rate, ETA."""
        with self._lock:
            return list(self._progress)

    @property
    def status(self) -> str:
        """``running``, ``cancelling``, ``finished``, ``failed``, ``cancelled`` or ``interrupted``."""
        if not self._done.is_set():
            return "cancelling" if self._cancel_reason else "running"
        return self._status

    @property
    def elapsed(self) -> float:
        return (self._ended if self._ended is not None else time.monotonic()) - self._started

    @property
    def report(self) -> dict[str, Any] | None:
        """The run report (as ``ddr run --report`` writes it), once the run has ended."""
        return self._report if self._done.is_set() else None

    @property
    def notices(self) -> list[str]:
        """What the run told the user besides progress (e.g. a resume that started afresh)."""
        return list(self._ddr.notices)

    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the run has ended (at most ``timeout`` seconds); whether it has."""
        return self._done.wait(timeout)

    def cancelled(self) -> bool:
        return self._done.is_set() and self._status in ("cancelled", "interrupted")

    def cancel(self, timeout: float | None = 30, *, reason: str = "cancelled") -> bool:
        """Stop the run: nothing new starts and running tasks are stopped (their worker processes are
        replaced; the other workers stay warm). Returns whether it had stopped within ``timeout``.
        ``partial()`` and ``outputs()`` keep what was merged; the report says ``reason``
        (``cancelled``, or ``interrupted`` for a signal)."""
        if self._cancel_reason is None:
            self._cancel_reason = reason
        self._wake()
        return self._done.wait(timeout)

    def result(self, timeout: float | None = None) -> Any:
        """What ``compute()`` returns. Raises the run's error, ``TimeoutError``, or
        ``concurrent.futures.CancelledError`` after ``cancel()``."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"the reduction did not finish within {timeout} s (see handle.progress)")
        if self._error is not None:
            raise self._error
        if self.cancelled():
            from concurrent.futures import CancelledError

            raise CancelledError("the reduction was cancelled before it finished: handle.partial() and "
                                 "handle.outputs() have what was merged before it stopped, handle.report the rest")
        return self._result

    def partial(self, timeout: float | None = 60) -> dict[str, tuple[Any, float]]:
        """``{dataset: (result so far, fraction of the dataset's events it covers)}``.

        The result so far has the shape of ``result()`` per dataset (``None`` while nothing is merged;
        with several processors, ``{processor: value}``). After the run: what it ended with (final
        results; after a failure or cancel, also what was merged for unfinished datasets)."""
        snap = self._request(timeout)
        single = self._ddr._single
        out = {}
        for ds, (v, frac) in snap.items():
            if v is not None:
                v = {name: self._ddr._finalize(ds, value) for name, value in v.items()}  # dask-mode array pieces
            out[ds] = ((next(iter(v.values())) if single and v is not None else v), frac)
        return out

    def outputs(self, timeout: float | None = 60) -> Any:
        """Everything held now, in the shape of ``result()``, unfinished datasets included (see the
        report for which are complete); after a failure or cancel, what was merged before it stopped."""
        snap = self._request(timeout)
        return self._ddr._assemble({ds: v for ds, (v, _) in snap.items()})

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
                loop.call_soon_threadsafe(lambda: woken.done() or woken.set_result(None))

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

    # ------------------------------------------------------ requests
    def _wake(self) -> None:
        d = self._driver
        if d is not None:
            d.wake.set()

    def _request(self, timeout: float | None) -> dict[str, tuple[Any, float]]:
        ev, box = threading.Event(), []
        with self._lock:
            if self._closed:
                return {ds: (copy.deepcopy(v), f) for ds, (v, f) in self._final.items()}
            self._requests.append((ev, box))
        self._wake()
        if not ev.wait(timeout):
            with self._lock:
                self._requests = [r for r in self._requests if r[0] is not ev]
            raise TimeoutError(f"no partial result within {timeout} s")
        if isinstance(box[0], BaseException):
            raise box[0]
        return box[0]

    def _serve_requests(self, run: Driver) -> None:
        with self._lock:
            reqs, self._requests = self._requests, []
        if not reqs:
            return
        try:
            snap: Any = _snapshot(run, copy_final=True)
        except Exception as exc:  # noqa: BLE001 - a failed merge is the caller's error, not the run's
            snap = DDRError(f"merging the partial results on the manager failed: {type(exc).__name__}: {exc}")
        for ev, box in reqs:
            box.append(snap)
            ev.set()

    # ------------------------------------------------------ the run's thread
    def _main(self) -> None:
        ddr = self._ddr
        m, own, run = None, False, None
        try:
            m, own = ddr._open_manager(self._zygote)
            run = self._driver = ddr._start(m)
            with fewer_collections():  # thousands of tasks in flight: see ddr._gcpolicy
                self._loop(run)
        except BaseException as exc:  # noqa: BLE001 - handed to result()
            self._error = exc
        finally:
            self._finish(run)
            try:
                if own and m is not None:
                    m.close()
                elif run is not None:
                    run.close()
            except Exception as exc:  # noqa: BLE001
                if self._error is None:
                    self._error = exc
            if self._zygote is not None:
                self._zygote.close()  # (closed with the engine already, unless the manager was never made)
            _release_manager(self._claimed, self)
            self._ended = time.monotonic()
            with self._lock:
                self._closed = True
                reqs, self._requests = self._requests, []
                callbacks, self._callbacks = self._callbacks, []
                self._done.set()
            for ev, box in reqs:
                box.append({ds: (copy.deepcopy(v), f) for ds, (v, f) in self._final.items()})
                ev.set()
            for fn in callbacks:
                _call(fn, self)

    def _loop(self, run: Driver) -> None:
        last = last_callback = 0.0
        while True:
            if self._cancel_reason is not None and run.machine.status is RunStatus.RUNNING:
                run.cancel()
            fin = run.step(0.1)
            now = time.monotonic()
            if fin or now - last >= min(0.2, self._progress_interval):
                call_back = fin or now - last_callback >= self._progress_interval
                self._publish_progress(run, call_back)
                last = now
                last_callback = now if call_back else last_callback
            self._serve_requests(run)
            if fin:
                return

    def _publish_progress(self, run: Driver, call_back: bool) -> None:
        snaps = run.progress()
        with self._lock:
            self._progress = snaps
        if call_back and self._progress_cb is not None:
            self._progress_cb(snaps)

    def _finish(self, run: Driver | None) -> None:
        """Everything that must happen on every way out, before the workers drop the run's data."""
        if run is None:
            self._status = RunStatus.FAILED.value
            return
        ended = run.ended
        status = ended.status if ended is not None else RunStatus.FAILED
        if ended is not None and ended.error is not None and self._error is None:
            self._error = ended.error
        self._status = ("interrupted" if self._cancel_reason == "interrupted" and status is RunStatus.CANCELLED
                        else status.value)
        try:
            if run.checkpointer is not None:
                run.checkpoint()  # the last one: resume loses nothing whatever the way out
        except Exception as exc:  # noqa: BLE001
            if self._error is None:
                self._error = DDRError(f"writing the final checkpoint failed: {type(exc).__name__}: {exc}")
        try:
            self._final = _snapshot(run, copy_final=False)
        except Exception as exc:  # noqa: BLE001 - e.g. a dask cluster gone: keep what was finalised
            self._final = {ds: (v, 1.0) for ds, v in run.results.items()}
            if self._error is None:
                self._error = DDRError(f"collecting the partial results failed: {type(exc).__name__}: {exc}")
        try:
            self._publish_progress(run, True)
        except Exception:  # noqa: BLE001 - a display must not hide the run's outcome
            pass
        self._report = build_report(run, status=self._status)
        self._ddr.report = self._report
        if self._error is None and status is RunStatus.FINISHED:
            self._result = self._ddr._assemble(run.results)


def _snapshot(run: Driver, *, copy_final: bool) -> dict[str, tuple[Any, float]]:
    """``{dataset: ({processor: value} or None, fraction of its events covered)}`` merged on the manager.

    Taken between two driver steps, so the partials held (pooled, or inputs of a running
    accumulation) are exactly what the ledger says was processed: value and fraction agree, and
    never decrease from one call to the next."""
    out = {}
    for ds, d in run.machine.datasets.items():
        value, cov, final = run.merged_so_far(ds)
        if final and copy_final:
            value = copy.deepcopy(value)  # the final value: the caller may not alter it
        total = d.planner.events_expected
        if total:
            frac = cov.events / total
        else:
            frac = 1.0 if final and d.ledger.complete else 0.0
        out[ds] = (value, frac)
    return out


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
            raise DDRError("this vinecore.Manager is already running a reduction: a manager runs one reduction "
                           "at a time. Wait for the first (handle.result()) or stop it (handle.cancel()), or "
                           "pass another manager.")
        _managers_in_use[id(manager)] = (manager, handle)


def _release_manager(manager: Any, handle: RunHandle) -> None:
    if manager is None:
        return
    with _managers_lock:
        held = _managers_in_use.get(id(manager))
        if held is not None and held[1] is handle:
            del _managers_in_use[id(manager)]
