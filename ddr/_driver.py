"""The reduction driver: plan -> vinecore tasks -> streaming reduction.

Policy
------
* Work is pulled from each dataset's source only when the manager is hungry,
  so the manager never holds more than a few chunks per worker slot.
* Every processing task keeps its partial result on the worker (a vinecore
  temp). As soon as ``accumulation_size`` partials of a dataset exist, an
  accumulation task merges them on a worker into one new temp. When a dataset
  has no work left, its remaining partials are merged and the single final
  partial is fetched. Reducers are commutative and associative, so the result
  does not depend on completion order.
* Failures: a processing task that runs out of memory or time is split in
  halves (down to ``min_split`` events) and retried; an accumulation that runs
  out of memory is split by its inputs. Lost workers and transient read errors
  are retried with backoff. Permanent bad input stops the run, or with
  ``skip_bad_files`` is recorded and skipped. A processor that raises stops the
  run with its remote traceback and the chunk it failed on.
* Accounting: every partial carries its :class:`~ddr._ledger.Coverage`; merges
  refuse overlaps; a dataset is complete only if its final coverage equals the
  expected events and nothing failed.
"""

from __future__ import annotations

import copy
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

import vinecore

from . import _worker
from ._chunking import ChunkSizer
from ._ledger import Coverage, DatasetLedger
from ._planning import Chunk
from ._sources import CountRequest, FilesetSource, Work
from .exceptions import BadInputError, DDRError, ProcessorError

__all__ = ["Reduction", "DatasetProgress", "RunOptions"]

_ACCUM_PRIORITY = 1_000_000.0
_TRANSIENT_BACKOFF = (0.5, 2.0, 5.0, 10.0)


@dataclass(frozen=True)
class DatasetProgress:
    """A snapshot of one dataset's progress (see ``Reduction.progress()``)."""

    dataset: str
    events_done: int
    events_total: int | None
    chunks_done: int
    chunks_failed: int
    chunks_running: int
    events_per_second: float
    eta_seconds: float | None
    finished: bool


@dataclass
class RunOptions:
    accumulation_size: int = 8
    cores: int = 1
    memory: int | None = None
    time_max: float | None = None
    retries: int = 3
    skip_bad_files: bool = False
    min_split: int = 1
    lookahead: int = 4


@dataclass
class _Pending:
    kind: str  # "process" | "accum" | "count"
    dataset: str
    work: Work | None = None
    inputs: list[tuple[vinecore.File, Coverage]] | None = None
    request: CountRequest | None = None


def _pickle_job(job: _worker.Job) -> bytes:
    """The job's bytes for the workers, or a clear error naming what cannot be shipped."""
    try:
        return vinecore._serialize.dumps(job)
    except Exception as exc:  # noqa: BLE001 - cloudpickle raises many kinds
        culprit = "the postprocess or reducer callable"
        for name, proc in job.processors.items():
            try:
                vinecore._serialize.dumps(proc)
            except Exception:  # noqa: BLE001
                culprit = f"processor {name!r}"
                break
        raise DDRError(
            f"{culprit} cannot be pickled for the workers: {type(exc).__name__}: {exc}. Attributes that hold "
            "open files, locks, sockets, clients or generators cannot be shipped; create them inside "
            "process() (or keep only their settings as attributes).") from exc


class Reduction:
    """One run of a DynamicDataReduction over a manager. Drive it with ``step``."""

    def __init__(self, manager: vinecore.Manager, job: _worker.Job, sources: dict[str, Any],
                 sizers: dict[str, ChunkSizer], options: RunOptions, *, library_name: str,
                 on_event: Callable[[str, dict], None] | None = None) -> None:
        self.m = manager
        self.job = job
        self.sources = sources
        self.sizers = sizers
        self.opt = options
        self.lib = library_name
        self.on_event = on_event or (lambda kind, info: None)
        self.ledgers = {ds: DatasetLedger(ds) for ds in sources}
        self.pools: dict[str, deque[tuple[vinecore.File, Coverage]]] = {ds: deque() for ds in sources}
        self.inflight: dict[int, _Pending] = {}
        self.busy: dict[str, int] = {ds: 0 for ds in sources}
        self.results: dict[str, Any] = {}
        self.order = list(sources)
        self.rank = {ds: i for i, ds in enumerate(self.order)}  # earlier datasets first
        self.started = time.monotonic()
        self.first_result_at: float | None = None
        self.error: BaseException | None = None
        self.cancelled = False
        self.seed: dict[str, tuple[Any, Coverage]] = {}  # resumed from a checkpoint
        self.checkpointer: Any = None  # a ddr._journal.Checkpointer, or None
        payload = _pickle_job(job)
        lib = manager.create_library_from_functions(
            library_name, _worker.process, _worker.accumulate, _worker.count,
            library_context_info=[_worker.build_context, [payload], {}])
        manager.install_library(lib)
        self._library_removed = False

    # ----------------------------------------------------------- driving
    @property
    def finished(self) -> bool:
        return self.error is not None or self.cancelled or len(self.results) == len(self.sources)

    def step(self, timeout: float = 0.25) -> bool:
        """Submit what can be submitted, wait up to ``timeout`` for one task, handle it."""
        if self.finished:
            return True
        self._fill()
        self._reduce()
        if self.finished:
            return True
        t = self.m.wait(timeout)
        while t is not None:
            self._on_task(t)
            if self.error is not None:
                break
            t = self.m.wait(0)
        self._reduce()
        if self.checkpointer is not None and self.error is None and not self.cancelled:
            if self.checkpointer.due() or (self.finished and self.checkpointer.written == 0):
                self.checkpoint()
        return self.finished

    def resume_from(self, seed: dict[str, tuple[Any, Coverage]]) -> None:
        """Start from checkpointed partial results (their ranges must be skipped by the sources)."""
        for ds, (value, cov) in seed.items():
            if ds in self.ledgers:
                self.seed[ds] = (value, cov)
                self.ledgers[ds].events_processed += cov.events
                self.ledgers[ds].events_resumed = cov.events

    def merged_so_far(self, ds: str) -> tuple[Any, Coverage, bool]:
        """``(value, coverage, final)`` of dataset ``ds`` now: its final result once it has one, else a
        merge, on the manager, of copies of every partial held for it (pooled, inputs of running
        accumulations, the checkpoint it resumed from). Between two ``step`` calls the coverage is
        exactly what the value holds; ``value`` is None while nothing is merged."""
        if ds in self.results:
            return self.results[ds], self.ledgers[ds].final or Coverage(), True
        seed_value, cov = self.seed.get(ds, (None, Coverage()))
        values = [] if seed_value is None else [copy.deepcopy(seed_value)]  # a reducer may update in place
        held = list(self.pools[ds]) + [inp for p in self.inflight.values()
                                       if p.kind == "accum" and p.dataset == ds for inp in p.inputs]
        for f, c in held:
            values.append(self.m.fetch_value(f))
            cov = cov.merge(c)
        return (_worker.merge_parts(self.job, values) if values else None), cov, False

    def checkpoint(self) -> None:
        """Write every dataset's merged live partials and their exact coverage (see ddr._journal)."""
        self.checkpointer.write({ds: self.merged_so_far(ds) for ds in self.sources})

    def close(self) -> None:
        """Uninstall this run's library: the workers drop its context (open files, schemas, the
        processors), so a manager kept for more runs does not hold every earlier run's. Idempotent;
        a no-op if calls are still in flight or the manager is closed."""
        if self._library_removed:
            return
        self._library_removed = True
        try:
            self.m.remove_library(self.lib)
        except (vinecore.TaskSubmissionError, vinecore.ManagerClosedError):
            pass

    def cancel(self) -> None:
        self.cancelled = True
        for tid in list(self.inflight):
            self.m.cancel_by_task_id(tid)
        while not self.m.empty():
            t = self.m.wait(5)
            if t is not None:
                self.inflight.pop(t.id, None)
        self._release_all()

    def abort(self, error: BaseException) -> None:
        self.error = error
        for tid in list(self.inflight):
            self.m.cancel_by_task_id(tid)
        while not self.m.empty():
            if self.m.wait(5) is None:
                break
        self.inflight.clear()
        self._release_all()

    def _release_all(self) -> None:
        for pool in self.pools.values():
            while pool:
                self.m.undeclare_file(pool.popleft()[0])

    # --------------------------------------------------------- submission
    def _fill(self) -> None:
        budget = self.m.hungry()
        if budget <= 0:
            return
        now = time.monotonic()
        workers = self.m.statistics().workers
        for ds in self.order:
            src = self.sources[ds]
            if hasattr(src, "spread"):
                src.spread = max(1, workers)  # cut as many files at once as there are workers
            while budget > 0:
                got = src.next(now)
                if got is None:
                    break
                budget -= 1
                if isinstance(got, CountRequest):
                    self._submit_count(got)
                else:
                    self._submit_process(got)
            if budget <= 0:
                return

    def _resources(self, t: vinecore.Task, priority: float) -> None:
        t.set_cores(self.opt.cores)
        if self.opt.memory:
            t.set_memory(self.opt.memory)
        if self.opt.time_max:
            t.set_time_max(self.opt.time_max)
        t.set_priority(priority)

    def _submit_process(self, work: Work) -> None:
        t = vinecore.FunctionCall(self.lib, "process", work.item)
        t.enable_temp_output()
        t.set_category("processing")
        self._resources(t, -self.rank[work.dataset])
        if isinstance(work.item, Chunk):
            t.set_locality(work.item.path)
        work.attempts += 1
        self.m.submit(t)
        self.inflight[t.id] = _Pending("process", work.dataset, work=work)
        self.busy[work.dataset] += 1
        self.ledgers[work.dataset].chunks_running += 1
        self.ledgers[work.dataset].chunk_sizes.append(work.size)

    def _submit_count(self, req: CountRequest) -> None:
        t = vinecore.FunctionCall(self.lib, "count", req.file.path, req.file.tree)
        t.set_category("count")
        t.set_retries(self.opt.retries)
        t.set_priority(_ACCUM_PRIORITY / 2)
        t.set_locality(req.file.path)
        self.m.submit(t)
        self.inflight[t.id] = _Pending("count", req.dataset, request=req)
        self.busy[req.dataset] += 1

    def _submit_accum(self, ds: str, inputs: list[tuple[vinecore.File, Coverage]]) -> None:
        t = vinecore.FunctionCall(self.lib, "accumulate", *(f for f, _ in inputs))
        t.enable_temp_output()
        t.set_category("accumulating")
        t.set_retries(self.opt.retries)
        t.set_priority(_ACCUM_PRIORITY - self.rank[ds])
        if self.opt.memory:
            t.set_memory(self.opt.memory)
        self.m.submit(t)
        self.inflight[t.id] = _Pending("accum", ds, inputs=inputs)
        self.busy[ds] += 1

    def _reduce(self) -> None:
        k = max(2, self.opt.accumulation_size)
        for ds, pool in self.pools.items():
            if ds in self.results:
                continue
            while len(pool) >= k:
                self._submit_accum(ds, [pool.popleft() for _ in range(k)])
            if self.busy[ds] or not self.sources[ds].exhausted:
                continue
            if len(pool) > 1:
                self._submit_accum(ds, [pool.popleft() for _ in range(len(pool))])
            elif len(pool) == 1:
                f, cov = pool.popleft()
                value = self.m.fetch_value(f)
                self.m.undeclare_file(f)
                self._finish_dataset(ds, value, cov)
            else:
                self._finish_dataset(ds, None, Coverage())

    def _finish_dataset(self, ds: str, value: Any, cov: Coverage) -> None:
        if ds in self.seed:
            seed_value, seed_cov = self.seed[ds]
            cov = seed_cov.merge(cov)
            if seed_value is not None:
                value = seed_value if value is None else _worker.merge_parts(self.job, [seed_value, value])
        led = self.ledgers[ds]
        src = self.sources[ds]
        led.final = cov
        led.events_expected = src.events_expected
        led.complete = (not led.failed and not led.files_bad and led.lost_events == 0
                        and (led.events_expected is None or cov.events == led.events_expected))
        self.results[ds] = value
        self.on_event("dataset_done", {"dataset": ds, "complete": led.complete})

    # ----------------------------------------------------------- outcomes
    def _on_task(self, t: vinecore.Task) -> None:
        p = self.inflight.pop(t.id, None)
        if p is None:
            return
        self.busy[p.dataset] -= 1
        metrics = self.ledgers[p.dataset].metrics  # issue 12: per-dataset sums of what tasks reported
        for name, value in t.metrics.items():
            metrics[name] = metrics.get(name, 0) + value
        if t.result == "cancelled":
            return
        getattr(self, f"_on_{p.kind}")(t, p)

    def _on_count(self, t: vinecore.Task, p: _Pending) -> None:
        src: FilesetSource = self.sources[p.dataset]
        req = p.request
        led = self.ledgers[p.dataset]
        if t.successful:
            n, uuid = t.output
            src.counted(req.file, n, uuid)
            return
        err = t.output
        if isinstance(err, BadInputError) or t.result != "exception":
            src.count_failed(req.file)
            desc = str(err) if isinstance(err, BadInputError) else f"{t.result}: {err}"
            if self.opt.skip_bad_files and getattr(err, "kind", None) != "setup":  # issue 12: not the file's fault
                led.files_bad.append({"file": req.file.path, "tree": req.file.tree, "error": desc})
                self.on_event("bad_file", {"dataset": p.dataset, "file": req.file.path, "error": desc})
            else:
                self.abort(err if isinstance(err, BadInputError) else
                           BadInputError(p.dataset, req.file.path, req.file.tree, None, None, desc, True))
            return
        self.abort(err)

    def _on_process(self, t: vinecore.Task, p: _Pending) -> None:
        work = p.work
        led = self.ledgers[p.dataset]
        led.chunks_running -= 1
        src = self.sources[p.dataset]
        if t.successful:
            led.chunks_done += 1
            led.events_processed += work.size
            m = t.resources_measured
            sizer = self.sizers.get(p.dataset)
            if sizer is not None and m is not None:
                sizer.observe(work.size, m.wall_time, m.memory)
            self.pools[p.dataset].append((t.output_file, Coverage.of(work.item, work.size)))
            if self.first_result_at is None:
                self.first_result_at = time.monotonic()
            return
        if t.result in ("resource exhaustion", "max wall time"):
            if isinstance(work.item, Chunk) and work.size >= 2 * max(1, self.opt.min_split):
                halves = work.item.split(2)
                led.splits.append({"file": work.item.path, "start": work.item.start, "stop": work.item.stop,
                                   "reason": t.result, "into": [[h.start, h.stop] for h in halves]})
                sizer = self.sizers.get(p.dataset)
                if sizer is not None:
                    sizer.shrink_after_exhaustion(work.size)
                for h in reversed(halves):
                    src.requeue(Work(p.dataset, h, h.size, history=work.history + [t.result]))
                self.on_event("split", {"dataset": p.dataset, "chunk": work.item.label(), "reason": t.result})
                return
            self._chunk_failed(p.dataset, work, f"{t.result} at the smallest chunk size: {t.output}",
                               permanent_bad_input=False)
            return
        err = t.output
        if t.result == "worker lost" or (isinstance(err, BadInputError) and not err.permanent):
            if work.attempts <= self.opt.retries:
                delay = _TRANSIENT_BACKOFF[min(work.attempts - 1, len(_TRANSIENT_BACKOFF) - 1)]
                work.not_before = time.monotonic() + (delay if t.result != "worker lost" else 0.0)
                work.history.append(t.result)
                src.requeue(work)
                return
        if isinstance(err, BadInputError):
            self._chunk_failed(p.dataset, work, str(err), permanent_bad_input=True, error=err)
            return
        if t.result == "worker lost":
            self._chunk_failed(p.dataset, work, f"worker lost {work.attempts} times: {err}", permanent_bad_input=False)
            return
        self.abort(ProcessorError.from_task(p.dataset, work.item, err))

    def _chunk_failed(self, ds: str, work: Work, desc: str, *, permanent_bad_input: bool,
                      error: BaseException | None = None) -> None:
        led = self.ledgers[ds]
        if permanent_bad_input and (not self.opt.skip_bad_files or getattr(error, "kind", None) == "setup"):
            self.abort(error or DDRError(desc))  # issue 12: a missing package is never skipped as a bad file
            return
        led.fail_chunk(work.item, work.size, desc)
        self.on_event("chunk_failed", {"dataset": ds, "error": desc})
        if not permanent_bad_input and not self.opt.skip_bad_files:
            self.abort(DDRError(f"dataset {ds!r}: a chunk failed and cannot be retried: {desc}"))

    def _on_accum(self, t: vinecore.Task, p: _Pending) -> None:
        ds = p.dataset
        if t.successful:
            cov = p.inputs[0][1]
            for _, c in p.inputs[1:]:
                cov = cov.merge(c)
            for f, _ in p.inputs:
                self.m.undeclare_file(f)
            self.pools[ds].append((t.output_file, cov))
            return
        if t.result == "resource exhaustion" and len(p.inputs) > 2:
            half = len(p.inputs) // 2
            self.ledgers[ds].splits.append({"accumulation_inputs": len(p.inputs), "into": [half, len(p.inputs) - half]})
            self._submit_accum(ds, p.inputs[:half])
            self._submit_accum(ds, p.inputs[half:])
            return
        self.abort(DDRError(f"dataset {ds!r}: merging {len(p.inputs)} partial results failed with "
                            f"{t.result}: {t.output}\n{getattr(t.output, 'remote_traceback', '')}"))

    # ------------------------------------------------------------ queries
    def progress(self) -> list[DatasetProgress]:
        now = time.monotonic()
        out = []
        elapsed = max(1e-9, now - self.started)
        for ds, led in self.ledgers.items():
            src = self.sources[ds]
            total = src.events_expected
            done = led.events_processed
            rate = done / elapsed
            eta = None
            if total is not None and rate > 0:
                eta = max(0.0, (total - done) / rate)
            out.append(DatasetProgress(ds, done, total, led.chunks_done, led.chunks_failed, led.chunks_running,
                                       rate, eta, ds in self.results))
        return out
