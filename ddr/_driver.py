"""The driver: the one loop that runs a reduction on a vinecore manager.

It carries out what :class:`~ddr._reduction.ReductionState` decides and feeds
it what happens, and does the I/O the state machine must not:

* ``Submit`` becomes a FunctionCall of the run's library (``process``,
  ``count`` or ``accumulate``) with the run's resources, priority and
  locality; partial results stay on the workers as vinecore temps;
* a task that comes back becomes a ``JobEnded`` event; its outcome is
  classified by type: a missing module or a full disk is a setup error (also
  when met reading a file: a BadInputError of kind ``setup``), another
  :class:`~ddr.exceptions.BadInputError` is bad input (transient or not, as
  the worker judged it), vinecore's results give exhaustion, time-outs, lost
  workers and unsatisfiable tasks, a ``MemoryError`` is exhaustion too (never
  bad input), anything else raised is a processor error (or, for an
  accumulation, a reducer error); the metrics the task reported travel with
  the event;
* ``Finalize`` fetches a dataset's final partial (merging on the manager when
  there are several) and keeps the value; ``Release`` drops temps;
* between steps it answers snapshots (``merged_so_far``, used by
  checkpoints and ``RunHandle.partial()``) and writes checkpoints when due.

Each step takes back at most ``DRAIN_MAX`` finished tasks before it submits
again, so a busy manager keeps its workers fed. With nothing in flight it
sleeps until the next retry may start (or until woken), never spinning; a state machine that neither has work in flight nor
anything to wait for is a bug and raises instead of hanging.
"""

from __future__ import annotations

import copy
import errno
import threading
import time
from typing import Any, Callable

import vinecore

from . import _worker
from ._reduction import (
    CancelJob, CancelRun, Capacity, DatasetProgress, Finalize, JobEnded, Kind, Notice, Outcome, Release,
    ReductionState, RunEnded, RunStatus, Submit,
)
from ._ledger import Coverage
from ._classify import out_of_memory
from .exceptions import BadInputError, ChunkResourceError, DDRError, ProcessorError, ReducerError, WorkerSetupError

__all__ = ["Driver", "DatasetProgress", "RunOptions", "pickle_job"]

# Tasks taken back per step at most. Without a bound, a manager slower than its workers' completion rate
# drains until everything in flight has finished (each wait(0) finds another task done) before it
# submits again: the workers run dry, and the partials pile up unmerged (memory grew with the cluster).
DRAIN_MAX = 256

# Top up the manager's queue once it lacks at least workers / TOPUP_SHARE tasks (or has nothing in flight).
# It keeps about one ready task per slot beyond the running ones (Manager.hungry), so workers never wait
# for this; on a large cluster each Capacity then plans a batch of chunks, not one chunk per step (each
# step handles one or two completions when the manager is mostly idle, and a top-up has a fixed cost).
TOPUP_SHARE = 16

# hot enum members as module constants: a member looked up on its enum class costs a metaclass attribute lookup
_PROCESS, _COUNT, _ACCUMULATE = Kind.PROCESS, Kind.COUNT, Kind.ACCUMULATE
_RUNNING, _SUCCESS = RunStatus.RUNNING, Outcome.SUCCESS

# task categories, as the transactions log and vinecore's per-category statistics show them
_CATEGORIES = {_PROCESS: "processing", _COUNT: "count", _ACCUMULATE: "accumulating"}

_OUTCOMES = {
    "resource exhaustion": Outcome.EXHAUSTED,
    "max wall time": Outcome.TIMED_OUT,
    "worker lost": Outcome.LOST,
    "cancelled": Outcome.CANCELLED,
    "unsatisfiable": Outcome.UNSATISFIABLE,
}


class RunOptions:
    """Resources of each processing task and the reduction's policy knobs."""

    def __init__(self, *, accumulation_size: int = 8, cores: int = 1, memory: int | None = None,
                 time_max: float | None = None, retries: int = 3, skip_bad_files: bool = False,
                 keep_going: bool = False, min_split: int = 1, lookahead: int = 4) -> None:
        self.accumulation_size, self.cores, self.memory, self.time_max = accumulation_size, cores, memory, time_max
        self.retries, self.skip_bad_files, self.keep_going = retries, skip_bad_files, keep_going
        self.min_split, self.lookahead = min_split, lookahead


def pickle_job(job: _worker.Job) -> bytes:
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


class Driver:
    """One run of a reduction on ``manager``. Call :meth:`step` until it returns True."""

    def __init__(self, manager: vinecore.Manager, job: _worker.Job, machine: ReductionState,
                 options: RunOptions, *, library_name: str, seeds: dict[str, Any] | None = None,
                 checkpointer: Any = None, clock: Callable[[], float] = time.monotonic,
                 on_notice: Callable[[Notice], None] | None = None) -> None:
        self.m = manager
        self.job = job
        self.machine = machine
        self.opt = options
        self.lib = library_name
        self.clock = clock
        self.checkpointer = checkpointer
        self.on_notice = on_notice or (lambda notice: None)
        self.started = clock()
        self.first_result_at: float | None = None
        self.ended: RunEnded | None = None
        self.results: dict[str, Any] = {}
        self.wake = threading.Event()  # set from other threads to end a sleep early
        self._temps: dict[int, vinecore.File] = {}  # partial -> temp on the workers
        self._local: dict[int, Any] = {}  # partial -> value held here (resumed seeds)
        self._jobs: dict[int, Submit] = {}  # vinecore task id -> its Submit (which names the job)
        self._task_of: dict[int, int] = {}  # job -> vinecore task id
        self._outstanding: set[int] = set()  # vinecore tasks not back yet (cancelled ones included)
        for ds, value in (seeds or {}).items():
            pid = machine.seed_partial(ds)
            if pid is not None:
                self._local[pid] = value
        lib = manager.create_library_from_functions(
            library_name, _worker.process, _worker.accumulate, _worker.count,
            library_context_info=[_worker.build_context, [pickle_job(job)], {}])
        manager.install_library(lib)
        self._library_removed = False
        self._apply(machine.handle())  # datasets with nothing to do finish at once

    # ----------------------------------------------------------- driving
    @property
    def finished(self) -> bool:
        return self.ended is not None

    def step(self, timeout: float = 0.1) -> bool:
        """Submit what the engine can take, wait up to ``timeout`` for tasks, hand them over."""
        if self.ended is not None:
            return True
        now = self.clock()
        hungry = self.m.hungry() if self.machine.status is _RUNNING else 0
        if hungry > 0:
            workers = self.m.workers_connected()
            if hungry * TOPUP_SHARE >= workers or not self._outstanding:
                self._apply(self.machine.handle(Capacity(hungry, now, workers)))
        if self._outstanding:
            events = []
            t = self.m.wait(timeout)
            n = 0
            while t is not None:
                ev = self._event_of(t)
                if ev is not None:
                    events.append(ev)
                n += 1
                if n >= DRAIN_MAX:  # hand these over and submit more before taking the rest
                    break
                t = self.m.wait(0)
            if events:
                self._apply(self.machine.handle(*events))
        elif self.ended is None:
            wake_at = self.machine.next_wakeup()
            if wake_at is None and self.machine.status is _RUNNING and hungry > 0:
                raise DDRError("internal error: the reduction has nothing in flight and nothing to wait for, but "
                               f"it has not finished ({self.progress()}); please report this with the run directory")
            delay = timeout if wake_at is None else min(timeout, max(0.0, wake_at - now))
            if delay > 0 and self.wake.wait(delay):
                self.wake.clear()
        if self.checkpointer is not None and self.ended is None and self.checkpointer.due():
            self.checkpoint()
        return self.ended is not None

    def cancel(self) -> None:
        """Stop the run: nothing new starts, running tasks are cancelled (``status`` becomes cancelled)."""
        self._apply(self.machine.handle(CancelRun()))

    def drain(self, timeout: float = 30.0) -> None:
        """Wait (at most ``timeout``) for cancelled tasks to come back, so the library can be removed."""
        deadline = time.monotonic() + timeout
        while self._outstanding and time.monotonic() < deadline:
            t = self.m.wait(min(1.0, max(0.0, deadline - time.monotonic())))
            if t is not None:
                ev = self._event_of(t)
                if ev is not None:
                    self._apply(self.machine.handle(ev))

    def close(self) -> None:
        """Drop this run's temps and library from the workers (their open files, processors). Idempotent."""
        if self._library_removed:
            return
        self._library_removed = True
        try:
            self.drain()
            for f in self._temps.values():
                self.m.undeclare_file(f)
            self._temps.clear()
            self.m.remove_library(self.lib)
        except (vinecore.TaskSubmissionError, vinecore.ManagerClosedError):
            pass

    # ------------------------------------------------------------ queries
    def progress(self) -> list[DatasetProgress]:
        return self.machine.progress(max(1e-9, self.clock() - self.started))

    def merged_so_far(self, ds: str) -> tuple[Any, Coverage, bool]:
        """``(value, coverage, final)`` of dataset ``ds`` now: its final result once it has one, else a
        merge, on the manager, of copies of every partial held for it. Between two steps the coverage is
        exactly what the value holds; ``value`` is None while nothing is merged."""
        led = self.machine.datasets[ds].ledger
        if ds in self.results:
            return self.results[ds], led.final or Coverage(), True
        parts, cov = self.machine.held(ds)
        values = [self._value(p, copy_local=True) for p in parts]
        return (_worker.merge_parts(self.job, values) if values else None), cov, False

    def checkpoint(self) -> None:
        """Write every dataset's merged partials and their exact coverage (see ddr._journal)."""
        self.checkpointer.write({ds: self.merged_so_far(ds) for ds in self.machine.datasets})

    # ---------------------------------------------------------- internals
    def _value(self, partial: int, copy_local: bool = False) -> Any:
        if partial in self._local:
            v = self._local[partial]
            return copy.deepcopy(v) if copy_local else v  # a reducer may update its first argument
        return self.m.fetch_value(self._temps[partial])

    def _apply(self, actions: list) -> None:
        batch: list[tuple[vinecore.FunctionCall, Submit]] = []  # consecutive Submits go to the manager at once
        for a in actions:
            if isinstance(a, Submit):
                batch.append((self._task(a), a))
                continue
            if batch:
                self._submit(batch)
                batch = []
            if isinstance(a, Release):
                f = self._temps.pop(a.partial, None)
                if f is not None:
                    self.m.undeclare_file(f)
                self._local.pop(a.partial, None)
            elif isinstance(a, CancelJob):
                tid = self._task_of.pop(a.job, None)
                if tid is not None:
                    self._jobs.pop(tid, None)
                    self.m.cancel_by_task_id(tid)
            elif isinstance(a, Finalize):
                self._finalize(a)
            elif isinstance(a, Notice):
                self.on_notice(a)
            elif isinstance(a, RunEnded):
                self.ended = a
        if batch:
            self._submit(batch)

    def _task(self, a: Submit) -> vinecore.FunctionCall:
        if a.kind is _PROCESS:
            t = vinecore.FunctionCall(self.lib, "process", a.work.item)
            t.enable_temp_output()
            t.set_cores(self.opt.cores)
            if self.opt.time_max:
                t.set_time_max(self.opt.time_max)
        elif a.kind is _ACCUMULATE:
            t = vinecore.FunctionCall(self.lib, "accumulate", *(self._temps[p] for p in a.inputs))
            t.enable_temp_output()
            t.set_cores(1)
        else:
            t = vinecore.FunctionCall(self.lib, "count", *a.count.args)
            t.set_cores(1)
        if self.opt.memory and a.kind is not _COUNT:
            t.set_memory(self.opt.memory)
        t.set_category(_CATEGORIES[a.kind])
        t.set_priority(a.priority)
        if a.locality is not None:
            t.set_locality(a.locality)
        return t

    def _submit(self, batch: list[tuple[vinecore.FunctionCall, Submit]]) -> None:
        try:
            self.m.submit_many([t for t, _ in batch])
        finally:  # also the tasks submitted before one that could not be
            for t, a in batch:
                tid = t.id
                if tid is None:
                    break
                self._jobs[tid] = a
                self._task_of[a.job] = tid
                self._outstanding.add(tid)

    def _event_of(self, t: vinecore.Task) -> JobEnded | None:
        self._outstanding.discard(t.id)
        sub = self._jobs.pop(t.id, None)
        if sub is None:
            return None  # cancelled by the state machine
        job = sub.job
        self._task_of.pop(job, None)
        m = t.resources_measured
        wall, mem = (m.wall_time, m.memory) if m is not None else (0.0, None)
        metrics = tuple(sorted(t.metrics.items())) if t.metrics else ()
        now = self.clock()
        if t.successful:
            if t.output_file is not None:
                self._temps[job] = t.output_file
            if sub.kind is _PROCESS and self.first_result_at is None:
                self.first_result_at = now
            return JobEnded(job, _SUCCESS, now, value=t.output, wall=wall, memory=mem, metrics=metrics)
        err = t.output if isinstance(t.output, BaseException) else RuntimeError(str(t.output))
        outcome = _OUTCOMES.get(t.result)
        transient = False
        if outcome is None:  # "exception": classified by the type of what was raised
            if _setup_problem(err):
                outcome = Outcome.SETUP
            elif isinstance(err, BadInputError):
                outcome, transient = Outcome.BAD_INPUT, not err.permanent
            elif out_of_memory(err):  # a MemoryError that reached us as an exception: never bad input
                outcome = Outcome.EXHAUSTED
            else:
                outcome = Outcome.ERROR
        return JobEnded(job, outcome, now, error=self._error(sub, outcome, err), transient=transient,
                        wall=wall, memory=mem, metrics=metrics)

    def _error(self, sub: Submit, outcome: Outcome, err: BaseException) -> BaseException:
        """The error the user sees, naming the dataset and the chunk."""
        if outcome is Outcome.BAD_INPUT or outcome is Outcome.CANCELLED:
            return err
        if outcome is Outcome.SETUP:
            return _setup_error(err, self.m.run_dir)
        if sub.kind is _ACCUMULATE:
            if isinstance(err, vinecore.TempLostError):
                return DDRError(f"dataset {sub.dataset!r}: a partial result was lost with every worker that held "
                                f"a copy of it ({err}); the events it covered are missing from this run. Run it "
                                "again (with --resume if checkpoints were on) to redo them")
            if outcome is Outcome.ERROR:
                return ReducerError(str(err), sub.dataset, getattr(err, "remote_traceback", ""))
            return DDRError(f"dataset {sub.dataset!r}: merging {len(sub.inputs)} partial results ended with "
                            f"{outcome.value}: {err}")
        item = sub.work.item if sub.work is not None else (sub.count.file.path if sub.count else None)
        if outcome is Outcome.ERROR:
            if sub.kind is _COUNT:
                return DDRError(f"dataset {sub.dataset!r}: counting the entries of {item} failed: "
                                f"{type(err).__name__}: {err}")
            return ProcessorError.from_task(sub.dataset, item, err)
        return ChunkResourceError(outcome.value, sub.dataset, item, f"{type(err).__name__}: {err}")

    def _finalize(self, a: Finalize) -> None:
        values = [self._value(p) for p in a.partials]
        if not values:
            value = None
        elif len(values) == 1:
            value = values[0]
        else:
            value = _worker.merge_parts(self.job, values)
        self.results[a.dataset] = value


def _setup_problem(err: BaseException) -> bool:
    """Would every task fail like this one, whatever its chunk? (A full disk, a missing module; also met
    while reading a file: a BadInputError of kind ``setup``, see ddr._classify.)"""
    if isinstance(err, BadInputError):
        return err.kind == "setup"
    return isinstance(err, ImportError) or (isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT))


def _setup_error(err: BaseException, run_dir: str) -> WorkerSetupError:
    tb = getattr(err, "remote_traceback", "")
    if isinstance(err, BadInputError):  # e.g. fsspec-xrootd missing on the workers: named, with its pip line
        return WorkerSetupError(f"the workers cannot read {err.file}: {err.what}", err.cause, err.hint, tb)
    cause = f"{type(err).__name__}: {err}"
    if isinstance(err, ImportError):
        name = getattr(err, "name", None) or "a module"
        return WorkerSetupError(f"the workers cannot import {name}", cause,
                                f"install it where the workers run (pip install {name.split('.')[0]}), or, if it "
                                "is a module beside your analysis, keep it in the analysis file's folder", tb)
    return WorkerSetupError("the disk is full on a worker (no space left on device)", cause,
                            f"free some space: partial results are kept under {run_dir} (--run-dir) and in the "
                            "temporary folder; then continue with --resume", tb)
