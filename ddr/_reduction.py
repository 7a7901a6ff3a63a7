"""The reduction core: a pure state machine (events in, actions out).

``ReductionState.handle(*events) -> list[Action]`` is the only way a run's
state changes. It knows nothing of vinecore's tasks or engines, threads, clocks
or files (its messages, in :mod:`ddr._reduction_messages`, borrow only
``vinecore._frozen.fast_init``, a faster constructor): the driver
(:mod:`ddr._driver`) turns finished tasks into events, carries out the actions,
and passes the time in. Every policy below is therefore tested with events alone
(``tests/ddr/test_reduction.py``).

Jobs and partials
    A job is one task the driver runs: *process* a work item, *count* a
    file's entries, or *accumulate* partial results. A job that succeeds with
    a result leaves a *partial* on the workers, named by the job's number.
    Resumed datasets also hold a *seed* partial (the checkpoint's value, kept
    by the driver).
Submission
    On :class:`Capacity` (the engine wants ``slots`` more tasks) work is
    pulled from the datasets' planners in dataset order: earlier datasets
    first, so their results complete first. Priorities: accumulations, then
    counts, then processing (earlier datasets higher).
Reduction
    As soon as ``accumulation_size`` partials of a dataset are pooled, an
    accumulation job merges them on a worker. When a dataset has no work left
    and nothing running, its partials are merged into one and it is
    finalised (:class:`Finalize`); the driver fetches and keeps the value.
    A dataset that produced no partial at all (files with zero entries) runs
    its planner's empty item once, so its result has the processor's shape.
Failures (per outcome of a job)
    ======================  =================================================
    process exhausted       split in halves (``Planner.split``) and requeued;
    (memory or time)        unsplittable: a failed chunk (fatal unless
                            ``keep_going``)
    worker lost             retried at once up to ``retries``, then failed
                            like an exhausted chunk
    bad input, transient    retried with backoff (``backoff`` seconds) up to
                            ``retries``, then permanent
    bad input, permanent    a failed chunk / bad file; fatal unless
                            ``skip_bad_files``
    processor error         a failed chunk; fatal unless ``keep_going``
    unsatisfiable           fatal (no worker can run the task)
    setup error             fatal (a full disk, a missing module: every task
                            would fail the same way), with ``skip_bad_files``
                            too; its file is not called bad
    accumulation exhausted  split by inputs; with two inputs the dataset is
                            merged on the manager at the end instead
    accumulation error      fatal (the reducer raised; the error names the key)
    ======================  =================================================
Stopping
    A fatal error (status ``failed``) or :class:`CancelRun` (``cancelled``)
    stops the run: no new work, running processing and counting jobs are
    cancelled (their late reports are ignored), and cancelled accumulations
    give their inputs back to the pool. After a fatal error, datasets whose
    processing is already complete still reduce to their final result;
    after a cancel nothing runs. :class:`RunEnded` comes once nothing is in
    flight. A finished run (every dataset finalised) ends ``finished``.
Accounting
    Between two ``handle`` calls every successful process job's events are
    in exactly one held partial (pooled, an input of a running accumulation,
    or the final result), so :meth:`held` is always consistent with the
    ledger: a checkpoint of it loses nothing and counts nothing twice.
    The metrics a job reports (``JobEnded.metrics``, whatever its outcome)
    are summed into its dataset's ledger (the report's ``bytes_read``).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from ._ledger import Coverage, DatasetLedger
from ._planner import CountRequest, Planner, Work
from ._reduction_messages import (
    Action, CancelJob, CancelRun, Capacity, DatasetProgress, Event, Finalize, JobEnded, Kind, Notice, Outcome,
    Release, RunEnded, RunStatus, Submit,
)

__all__ = ["ReductionState", "RunStatus", "Kind", "Outcome", "Capacity", "JobEnded", "CancelRun",
           "Submit", "CancelJob", "Release", "Finalize", "Notice", "RunEnded", "DatasetProgress"]

ACCUMULATE_PRIORITY = 1_000_000.0
COUNT_PRIORITY = 500_000.0

# hot enum members as module constants: a member looked up on its enum class costs a metaclass attribute lookup
_PROCESS, _COUNT, _ACCUMULATE = Kind.PROCESS, Kind.COUNT, Kind.ACCUMULATE
_RUNNING, _SUCCESS = RunStatus.RUNNING, Outcome.SUCCESS


# ------------------------------------------------------------------ state
@dataclass(eq=False, slots=True)
class _Job:
    kind: Kind
    dataset: str
    work: Work | None = None
    count: CountRequest | None = None
    inputs: tuple[tuple[int, Coverage], ...] = ()
    attempts: int = 1


@dataclass(eq=False)
class _Dataset:
    name: str
    rank: int
    planner: Planner
    ledger: DatasetLedger
    pool: deque = field(default_factory=deque)  # (partial, coverage)
    seed: tuple[int, Coverage] | None = None
    working: int = 0  # process and count jobs in flight
    accumulating: int = 0
    merge_on_manager: bool = False
    broken: bool = False  # its reducer failed: no more merging
    tried_empty: bool = False
    final: bool = False


class ReductionState:
    """One run's reduction state. Feed :meth:`handle`; carry out what it returns."""

    def __init__(self, planners: dict[str, Planner], *, accumulation_size: int = 8, retries: int = 3,
                 skip_bad_files: bool = False, keep_going: bool = False,
                 backoff: tuple[float, ...] = (0.5, 2.0, 5.0, 10.0),
                 seed: dict[str, Coverage] | None = None) -> None:
        if accumulation_size < 2:
            raise ValueError(f"accumulation_size must be at least 2, got {accumulation_size}")
        self.k = accumulation_size
        self.retries = retries
        self.skip_bad_files = skip_bad_files
        self.keep_going = keep_going
        self.backoff = backoff or (0.0,)
        self.status = _RUNNING
        self.error: BaseException | None = None
        self.stopping = False
        self._next = 1
        self.jobs: dict[int, _Job] = {}
        self.datasets: dict[str, _Dataset] = {}
        self._dirty: set[str] = set()  # datasets an event touched: only they can need reducing
        for rank, (name, planner) in enumerate(planners.items()):
            d = _Dataset(name, rank, planner, DatasetLedger(name))
            cov = (seed or {}).get(name)
            if cov is not None:
                d.seed = (self._new_id(), cov)
                d.ledger.events_processed = d.ledger.events_resumed = cov.events
            self.datasets[name] = d
        self._live = list(self.datasets.values())  # not finalised, in rank order
        self._dirty.update(self.datasets)

    # -------------------------------------------------------------- queries
    def seed_partial(self, dataset: str) -> int | None:
        d = self.datasets[dataset]
        return None if d.seed is None else d.seed[0]

    def held(self, dataset: str) -> tuple[tuple[int, ...], Coverage]:
        """Every partial now holding this dataset's results, and what they cover together."""
        d = self.datasets[dataset]
        parts = list(d.pool)
        for job in self.jobs.values():
            if job.kind is _ACCUMULATE and job.dataset == dataset:
                parts.extend(job.inputs)
        if d.seed is not None:
            parts.append(d.seed)
        cov = Coverage()
        for _, c in parts:
            cov = cov.merge(c)
        return tuple(p for p, _ in parts), cov

    def next_wakeup(self) -> float | None:
        """When a retry waiting for its backoff may start (for a driver with nothing in flight)."""
        times = [t for d in self._live for t in [d.planner.next_ready_at()] if t is not None]
        return min(times, default=None)

    def progress(self, elapsed: float) -> list[DatasetProgress]:
        out = []
        for d in self.datasets.values():
            led = d.ledger
            total = d.planner.events_expected
            rate = (led.events_processed - led.events_resumed) / elapsed if elapsed > 0 else 0.0
            eta = max(0.0, (total - led.events_processed) / rate) if total is not None and rate > 0 else None
            out.append(DatasetProgress(d.name, led.events_processed, total, led.chunks_done, led.chunks_failed,
                                       led.chunks_running, rate, eta, d.final))
        return out

    # --------------------------------------------------------------- events
    def handle(self, *events: Event) -> list[Action]:
        out: list[Action] = []
        for ev in events:
            if isinstance(ev, JobEnded):
                self._on_ended(ev, out)
            elif isinstance(ev, Capacity):
                self._on_capacity(ev, out)
            elif isinstance(ev, CancelRun):
                self._stop(RunStatus.CANCELLED, None, out)
            else:
                raise TypeError(f"ReductionState cannot handle {type(ev).__name__}")
        dirty = self._dirty
        if len(dirty) == 1:  # the usual case: no sorting
            self._reduce(self.datasets[dirty.pop()], out)
        elif dirty:
            for d in sorted((self.datasets[n] for n in dirty), key=lambda d: d.rank):
                self._reduce(d, out)
            dirty.clear()
        if self.status is _RUNNING:
            if not self._live:
                self.status = RunStatus.FINISHED
                out.append(RunEnded(RunStatus.FINISHED))
        elif self.stopping and not self.jobs:
            self.stopping = False
            out.append(RunEnded(self.status, self.error))
        return out

    def _new_id(self) -> int:
        n = self._next
        self._next += 1
        return n

    def _on_capacity(self, ev: Capacity, out: list[Action]) -> None:
        if self.status is not _RUNNING:
            return
        budget = ev.slots
        for d in self._live:
            if budget <= 0:
                return
            d.planner.spread = max(1, ev.workers)
            self._dirty.add(d.name)  # pulling may exhaust its planner
            while budget > 0:
                got = d.planner.next(ev.now)
                if got is None:
                    break
                budget -= 1
                if isinstance(got, CountRequest):
                    self._submit(_COUNT, d, out, count=got)
                else:
                    self._submit(_PROCESS, d, out, work=got)

    def _submit(self, kind: Kind, d: _Dataset, out: list[Action], *, work: Work | None = None,
                count: CountRequest | None = None, inputs: tuple[tuple[int, Coverage], ...] = (),
                attempts: int = 1) -> None:
        job = self._new_id()
        self.jobs[job] = _Job(kind, d.name, work, count, inputs, attempts)
        if kind is _ACCUMULATE:
            d.accumulating += 1
            prio = ACCUMULATE_PRIORITY - d.rank
        elif kind is _COUNT:
            d.working += 1
            prio = COUNT_PRIORITY - d.rank
        else:
            d.working += 1
            work.attempts += 1
            d.ledger.chunks_running += 1
            d.ledger.chunk_sizes.append(work.size)
            prio = -float(d.rank)
        locality = d.planner.locality(work) if work is not None else (
            count.file.path if count is not None else None)
        out.append(Submit(job, kind, d.name, prio, work, count, tuple([p for p, _ in inputs]) if inputs else (),
                          locality))

    def _job_done(self, job: _Job) -> _Dataset:
        d = self.datasets[job.dataset]
        self._dirty.add(d.name)
        if job.kind is _ACCUMULATE:
            d.accumulating -= 1
        else:
            d.working -= 1
            if job.kind is _PROCESS:
                d.ledger.chunks_running -= 1
        return d

    def _on_ended(self, ev: JobEnded, out: list[Action]) -> None:
        job = self.jobs.pop(ev.job, None)
        if job is None:
            return  # cancelled by us: its late report is ignored
        d = self._job_done(job)
        for name, value in ev.metrics:  # e.g. bytes read remotely / from the node cache (ddr._remote)
            d.ledger.metrics[name] = d.ledger.metrics.get(name, 0) + value
        if job.kind is _PROCESS:
            self._process_ended(d, job, ev, out)
        elif job.kind is _COUNT:
            self._count_ended(d, job, ev, out)
        else:
            self._accumulate_ended(d, job, ev, out)

    # -------------------------------------------------------------- process
    def _process_ended(self, d: _Dataset, job: _Job, ev: JobEnded, out: list[Action]) -> None:
        work = job.work
        assert work is not None
        led = d.ledger
        o = ev.outcome
        if o is _SUCCESS:
            led.chunks_done += 1
            led.events_processed += work.size
            d.planner.observe(work, ev.wall, ev.memory)
            d.pool.append((ev.job, Coverage.of(work.item, work.size)))
            return
        if self.stopping and o is Outcome.CANCELLED:
            return
        if o in (Outcome.EXHAUSTED, Outcome.TIMED_OUT):
            halves = d.planner.split(work)
            if halves is not None:
                d.planner.shrink_after_exhaustion(work.size)
                led.splits.append({**_describe(work.item), "reason": o.value,
                                   "into": [_describe(h.item) for h in halves]})
                for h in reversed(halves):
                    d.planner.requeue(h)
                out.append(Notice("split", d.name, f"{_label(work.item)}: {o.value}, split in {len(halves)}"))
                return
            splittable = hasattr(work.item, "split") and hasattr(work.item, "size") or d.planner.splitter
            why = ("cannot be split further" if splittable or work.size < 2 * d.planner.min_split
                   else "its type has no split() and no splitter was given")
            self._chunk_failed(d, work, o.value, f"{o.value} ({why}): {ev.error}", ev.error,
                               fatal=not self.keep_going, out=out)
            return
        if o in (Outcome.LOST, Outcome.CANCELLED) or (o is Outcome.BAD_INPUT and ev.transient):
            if work.attempts <= self.retries:
                delay = 0.0 if o is not Outcome.BAD_INPUT else self.backoff[min(work.attempts - 1,
                                                                                 len(self.backoff) - 1)]
                work.history += (o.value,)
                d.planner.requeue(work, ev.now + delay)
                return
            if o is not Outcome.BAD_INPUT:
                self._chunk_failed(d, work, o.value, f"worker lost {work.attempts} times: {ev.error}", ev.error,
                                   fatal=not self.keep_going, out=out)
                return
        if o is Outcome.BAD_INPUT:
            self._chunk_failed(d, work, "bad input", str(ev.error), ev.error, fatal=not self.skip_bad_files,
                               out=out)
            return
        if o in (Outcome.UNSATISFIABLE, Outcome.SETUP):
            self._chunk_failed(d, work, o.value, str(ev.error), ev.error, fatal=True, out=out)
            return
        self._chunk_failed(d, work, "processor error", str(ev.error), ev.error, fatal=not self.keep_going,
                           out=out)

    def _chunk_failed(self, d: _Dataset, work: Work, kind: str, desc: str, error: BaseException | None, *,
                      fatal: bool, out: list[Action]) -> None:
        d.ledger.fail_chunk(work.item, work.size, desc, kind)
        out.append(Notice("chunk_failed", d.name, f"{_label(work.item)}: {kind}"))
        if fatal:
            self._stop(RunStatus.FAILED, error if error is not None else RuntimeError(desc), out)

    # ---------------------------------------------------------------- count
    def _count_ended(self, d: _Dataset, job: _Job, ev: JobEnded, out: list[Action]) -> None:
        req = job.count
        assert req is not None
        planner: Any = d.planner
        o = ev.outcome
        if o is _SUCCESS:
            entries, uuid = ev.value
            planner.counted(req, int(entries), uuid)
            return
        if self.stopping and o is Outcome.CANCELLED:
            planner.count_failed(req)
            return
        retry = o in (Outcome.LOST, Outcome.CANCELLED) or (o is Outcome.BAD_INPUT and ev.transient)
        if retry and req.attempts < self.retries:
            delay = 0.0 if o is not Outcome.BAD_INPUT else self.backoff[min(req.attempts, len(self.backoff) - 1)]
            planner.count_retry(req, ev.now + delay)
            return
        planner.count_failed(req)
        desc = str(ev.error) if ev.error is not None else o.value
        if o in (Outcome.UNSATISFIABLE, Outcome.SETUP):  # not the file's fault: stop, without calling it bad
            self._stop(RunStatus.FAILED, ev.error if ev.error is not None else RuntimeError(desc), out)
            return
        d.ledger.files_bad.append({"file": req.file.path, "tree": req.file.tree, "error": desc})
        out.append(Notice("bad_file", d.name, f"{req.file.path}: {desc.splitlines()[0] if desc else o.value}"))
        if not (self.skip_bad_files and o is Outcome.BAD_INPUT):
            self._stop(RunStatus.FAILED, ev.error if ev.error is not None else RuntimeError(desc), out)

    # ----------------------------------------------------------- accumulate
    def _accumulate_ended(self, d: _Dataset, job: _Job, ev: JobEnded, out: list[Action]) -> None:
        o = ev.outcome
        if o is _SUCCESS:
            cov = Coverage()
            for p, c in job.inputs:
                cov = cov.merge(c)
                out.append(Release(p))
            d.pool.append((ev.job, cov))
        elif o in (Outcome.EXHAUSTED, Outcome.TIMED_OUT) and len(job.inputs) > 2:
            half = len(job.inputs) // 2
            d.ledger.splits.append({"accumulation_inputs": len(job.inputs), "into": [half, len(job.inputs) - half]})
            self._submit(_ACCUMULATE, d, out, inputs=job.inputs[:half])
            self._submit(_ACCUMULATE, d, out, inputs=job.inputs[half:])
        elif o in (Outcome.EXHAUSTED, Outcome.TIMED_OUT):
            d.pool.extend(job.inputs)  # still held on the workers: nothing is lost
            d.merge_on_manager = True
            out.append(Notice("merge_on_manager", d.name, f"merging two partial results on a worker: {o.value}; "
                              "this dataset's final merge happens on the manager"))
        elif o in (Outcome.LOST, Outcome.CANCELLED) and job.attempts <= self.retries:
            self._submit(_ACCUMULATE, d, out, inputs=job.inputs, attempts=job.attempts + 1)
        else:
            d.pool.extend(job.inputs)
            d.broken = True
            self._stop(RunStatus.FAILED, ev.error if ev.error is not None else RuntimeError(
                f"dataset {d.name!r}: merging {len(job.inputs)} partial results ended with {o.value}"), out)

    def _reduce(self, d: _Dataset, out: list[Action]) -> None:
        if d.final or d.broken:
            return
        if self.stopping and (self.status is RunStatus.CANCELLED or not self._processing_complete(d)):
            return
        if not d.merge_on_manager:
            while len(d.pool) >= self.k:
                self._submit(_ACCUMULATE, d, out, inputs=tuple(d.pool.popleft() for _ in range(self.k)))
        if d.working or d.accumulating or not d.planner.exhausted:
            return
        if not d.pool and d.seed is None and not d.tried_empty and self.status is _RUNNING:
            d.tried_empty = True
            empty = d.planner.empty_item()
            if empty is not None and not d.ledger.failed and not d.ledger.files_bad:
                self._submit(_PROCESS, d, out, work=empty)
                return
        if len(d.pool) > 1 and not d.merge_on_manager:
            self._submit(_ACCUMULATE, d, out, inputs=tuple(d.pool))
            d.pool.clear()
            return
        parts = list(d.pool) + ([d.seed] if d.seed is not None else [])
        cov = Coverage()
        for _, c in parts:
            cov = cov.merge(c)
        d.pool.clear()
        d.final = True
        self._live.remove(d)
        led = d.ledger
        led.final = cov
        led.events_expected = d.planner.events_expected
        led.complete = (not led.failed and not led.files_bad
                        and (led.events_expected is None or cov.events == led.events_expected))
        out.append(Finalize(d.name, tuple(p for p, _ in parts), cov, led.complete))
        for p, _ in parts:
            if d.seed is None or p != d.seed[0]:
                out.append(Release(p))
        out.append(Notice("dataset_done", d.name, "complete" if led.complete else "incomplete"))

    def _processing_complete(self, d: _Dataset) -> bool:
        return (d.planner.exhausted and not d.working and not d.broken and not d.ledger.failed
                and not d.ledger.files_bad)

    # ------------------------------------------------------------- stopping
    def _stop(self, status: RunStatus, error: BaseException | None, out: list[Action]) -> None:
        if self.status is not _RUNNING:
            return
        self.status, self.error, self.stopping = status, error, True
        self._dirty.update(self.datasets)
        for job_id, job in list(self.jobs.items()):
            d = self.datasets[job.dataset]
            if job.kind is _ACCUMULATE and status is RunStatus.FAILED and self._processing_complete(d):
                continue  # this dataset can still finish
            del self.jobs[job_id]
            self._job_done(job)
            if job.kind is _ACCUMULATE:
                d.pool.extend(job.inputs)
            elif job.kind is _COUNT:
                d.planner.count_failed(job.count)  # type: ignore[attr-defined]
            out.append(CancelJob(job_id))


def _label(item: Any) -> str:
    label = getattr(item, "label", None)
    return label() if callable(label) else repr(item)[:120]


def _describe(item: Any) -> dict[str, Any]:
    if hasattr(item, "path") and hasattr(item, "start"):
        return {"file": item.path, "start": item.start, "stop": item.stop}
    return {"item": repr(item)[:120]}
