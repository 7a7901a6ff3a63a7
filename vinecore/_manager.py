"""The Manager: the user's handle on a run.

It owns the pure :class:`~vinecore._state.Scheduler` and one engine, and moves
events and actions between them: ``submit`` and ``cancel_by_task_id`` feed
events in; ``wait`` polls the engine, feeds what happened to the scheduler,
carries out the actions (dispatch, kill) and hands back finished tasks.
Nothing happens between calls: like TaskVine, the manager works inside
``wait``.
"""

from __future__ import annotations

import enum
import os
import shutil
import tempfile
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from . import _serialize
from ._events import (
    CancelRequested,
    Complete,
    Dispatch,
    FileForgotten,
    Kill,
    Result,
    TaskState,
    TaskSubmitted,
    Transition,
)
from ._files import File, dumps_collecting_files, file_from_buffer, file_from_path, file_from_url, new_temp
from ._frozen import fast_init
from ._log import TransactionLog
from ._runtime import Outcome, TaskSpec
from ._state import Scheduler
from ._tasks import FunctionCall, Library, PythonTask, ResourcesMeasured, Task
from .exceptions import FileFetchError, ManagerClosedError, TaskSubmissionError, UnsatisfiableTaskError

__all__ = ["Manager", "Statistics", "ManagerState"]

_STATE_NAMES = {s: s.value for s in TaskState}  # the log's state names, without the enum's property lookup
_RESULT_NAMES = {r: r.value for r in Result}


class ManagerState(enum.Enum):
    RUNNING = "running"  # engine started; accepts tasks
    CLOSED = "closed"  # engine stopped; every call but close() raises


_CLOSED = ManagerState.CLOSED  # module constants: a member looked up on its enum class costs a metaclass lookup
_SUCCESS = Result.SUCCESS


@fast_init  # built every step of a ddr run
@dataclass(frozen=True, slots=True)
class Statistics:
    """A snapshot of the manager; ``Manager.statistics()`` returns a new one each call."""

    tasks_submitted: int
    tasks_waiting: int  # waiting for inputs or for a free worker
    tasks_running: int
    tasks_done: int  # finished, successfully or not
    tasks_failed: int  # finished without success
    workers: int
    cores: int
    engine: str


def _make_engine(engine: Any, workers: int | None, run_dir: str, options: dict[str, Any]):
    if not isinstance(engine, str):
        if type(engine).__name__ == "Client" and type(engine).__module__.startswith("distributed"):
            from .engines.dask import DaskEngine

            return DaskEngine(client=engine, workers=workers, run_dir=run_dir, **options)
        return engine  # an engine object
    if engine == "local":
        from .engines.local import LocalEngine

        return LocalEngine(workers, run_dir=run_dir, **options)
    if engine == "sync":
        from .engines.sync import SyncEngine

        return SyncEngine(workers, run_dir=run_dir, **options)
    if engine == "dask":
        from .engines.dask import DaskEngine

        return DaskEngine(workers=workers, run_dir=run_dir, **options)
    raise ValueError(f"unknown engine {engine!r}; choose 'local' (default), 'sync' or 'dask', "
                     "or pass a distributed.Client")


class Manager:
    """Submit tasks, wait for them, keep data on the workers.

    Parameters
    ----------
    engine:
        ``"local"`` (worker processes on this machine, the default), ``"sync"``
        (in this process, for tests and pdb), ``"dask"``, or a
        ``distributed.Client``.
    workers:
        Number of workers; ``None`` means one per core for ``local``.
    run_dir:
        Where the transactions log and the local store go. ``None``: a
        temporary directory removed by ``close()``.
    **engine_options:
        Passed to the engine (e.g. ``cores_per_worker``; for dask ``scheduler``).
    """

    def __init__(self, engine: Any = "local", workers: int | None = None, run_dir: str | os.PathLike | None = None,
                 **engine_options: Any) -> None:
        self._own_run_dir = run_dir is None
        self.run_dir = tempfile.mkdtemp(prefix="vinecore-") if run_dir is None else os.fspath(run_dir)
        os.makedirs(self.run_dir, exist_ok=True)
        self._log = TransactionLog(os.path.join(self.run_dir, "transactions.jsonl"))
        self._scheduler = Scheduler()
        self._tasks: dict[int, Task] = {}
        self._specs: dict[int, tuple] = {}  # task id -> the TaskSpec fields of its attempts (see _spec_of)
        self._done: deque[Task] = deque()
        self._libraries: dict[str, Library] = {}
        self._next_id = 1
        self._submitted = 0
        self.state = ManagerState.RUNNING
        try:
            self._engine = _make_engine(engine, workers, self.run_dir, engine_options)
            self._apply(self._scheduler.handle(*self._engine.start()))
        except BaseException:
            self.state = ManagerState.CLOSED
            self._log.close()
            if self._own_run_dir:
                shutil.rmtree(self.run_dir, ignore_errors=True)
            raise

    # ------------------------------------------------------------ lifecycle
    def __enter__(self) -> "Manager":
        self._check_open("enter")
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Stop the engine and its workers. Calling it twice is harmless."""
        if self.state is ManagerState.CLOSED:
            return
        self.state = ManagerState.CLOSED
        try:
            self._engine.close()
        finally:
            self._log.close()
            if self._own_run_dir:
                shutil.rmtree(self.run_dir, ignore_errors=True)

    def _check_open(self, what: str) -> None:
        if self.state is _CLOSED:
            raise ManagerClosedError(
                f"cannot {what}: this Manager was closed. Create a new vinecore.Manager "
                "(or keep using one inside its `with` block).")

    @property
    def engine(self):
        return self._engine

    # ---------------------------------------------------------------- files
    def declare_file(self, path: str | os.PathLike) -> File:
        self._check_open("declare a file")
        return file_from_path(path)

    def declare_buffer(self, data: bytes) -> File:
        self._check_open("declare a buffer")
        return file_from_buffer(data)

    def declare_url(self, url: str) -> File:
        self._check_open("declare a url")
        return file_from_url(url)

    def declare_temp(self) -> File:
        self._check_open("declare a temp")
        return new_temp()

    def fetch_file(self, file: File) -> bytes:
        """The content of a file; for a temp, fetched from the worker-side store."""
        self._check_open("fetch a file")
        if file.kind == "buffer":
            return file.source  # type: ignore[return-value]
        if file.kind == "file":
            with open(file.source, "rb") as f:  # type: ignore[arg-type]
                return f.read()
        if file.kind == "url":
            import urllib.request

            with urllib.request.urlopen(file.source, timeout=60) as r:  # type: ignore[arg-type]
                return r.read()
        try:
            return self._engine.fetch(file.cache_name)
        except (KeyError, FileNotFoundError) as exc:
            raise FileFetchError(f"temp {file.cache_name} is not available: its producing task has not "
                                 f"succeeded, or it was undeclared ({exc})") from None

    def fetch_value(self, file: File) -> Any:
        """Fetch a temp produced as a task's return value and unpickle it."""
        return _serialize.loads(self.fetch_file(file))

    def undeclare_file(self, file: File) -> None:
        """Forget a temp: workers may drop their copies."""
        self._check_open("undeclare a file")
        if file.kind == "temp":
            self._engine.release(file.cache_name)
            self._scheduler.handle(FileForgotten(file.cache_name))

    # ------------------------------------------------------------ libraries
    def create_library_from_functions(self, name: str, *functions: Callable[..., Any],
                                      library_context_info=None, hoisting_modules=(),
                                      **_ignored: Any) -> Library:
        return Library.from_functions(name, *functions, library_context_info=library_context_info,
                                      hoisting_modules=hoisting_modules)

    def install_library(self, library: Library) -> None:
        self._check_open("install a library")
        if library.name in self._libraries:
            raise TaskSubmissionError(f"a library named {library.name!r} is already installed")
        try:
            payload = _serialize.dumps(library)
        except Exception as exc:
            raise TaskSubmissionError(
                f"library {library.name!r} cannot be pickled for the workers: {type(exc).__name__}: {exc}") from exc
        self._engine.install_library(library.name, payload)
        library.installed = True
        self._libraries[library.name] = library

    def remove_library(self, name: str) -> None:
        """Uninstall a library: every worker drops its context (calling its ``close()`` if it has one).

        Long sessions that install a library per run (ddr does) remove it at the end of the run, so
        that the workers do not keep every run's open files and caches. Refused while a submitted
        FunctionCall to it has not come back from ``wait()``; the name may be installed again after."""
        self._check_open("remove a library")
        if name not in self._libraries:
            raise TaskSubmissionError(f"no library named {name!r} is installed "
                                      f"(installed: {sorted(self._libraries) or 'none'})")
        busy = [t.id for t in self._tasks.values()
                if isinstance(t, FunctionCall) and t.library_name == name and t.result is None]
        if busy:
            raise TaskSubmissionError(f"library {name!r} still has {len(busy)} unfinished FunctionCall(s) "
                                      f"(task ids {busy[:5]}{' ...' if len(busy) > 5 else ''}); wait for them "
                                      "or cancel them first")
        self._engine.remove_library(name)
        self._libraries.pop(name).installed = False

    # ---------------------------------------------------------------- tasks
    def submit(self, task: Task) -> int:
        """Queue ``task``; returns its id. Never blocks on workers."""
        if self.state is _CLOSED:
            self._check_open("submit a task")
        ev = self._admit(task)
        self._apply(self._scheduler.handle(ev))
        return ev.task_id

    def submit_many(self, tasks: Iterable[Task]) -> list[int]:
        """Queue several tasks at once; returns their ids in order. Never blocks on workers.

        The same as calling :meth:`submit` for each in turn, except that the scheduler takes them
        all in one step (so, among them, the highest priority is dispatched first) and the
        per-call overhead is paid once. If one cannot be submitted, those before it are
        submitted (their ``id`` is set) and its error is raised."""
        if self.state is _CLOSED:
            self._check_open("submit tasks")
        events = []
        try:
            for task in tasks:
                events.append(self._admit(task))
        finally:
            if events:
                self._apply(self._scheduler.handle(*events))
        return [ev.task_id for ev in events]

    def _admit(self, task: Task) -> TaskSubmitted:
        """Check and pickle ``task``, give it its id and keep what its attempts need; the scheduler's
        event for it is returned (the caller hands it over)."""
        if not isinstance(task, PythonTask):
            raise TaskSubmissionError(f"submit() takes a vinecore.PythonTask or FunctionCall, got {task!r}")
        if task.id is not None:
            raise TaskSubmissionError(f"{task!r} was already submitted; create a new task to run it again")
        if isinstance(task, FunctionCall):
            lib = self._libraries.get(task.library_name)
            if lib is None:
                raise TaskSubmissionError(
                    f"FunctionCall to library {task.library_name!r}, which is not installed "
                    f"(installed: {sorted(self._libraries) or 'none'}). Call manager.install_library() first.")
            if task.function_name not in lib.functions:
                raise TaskSubmissionError(
                    f"library {task.library_name!r} has no function {task.function_name!r}; "
                    f"it has {sorted(lib.functions)}")
        try:
            payload, arg_files = dumps_collecting_files((task.fn, task.args, task.kwargs))
        except Exception as exc:
            raise TaskSubmissionError(
                f"cannot submit {task!r}: its function or arguments cannot be pickled for the workers "
                f"({type(exc).__name__}: {exc}). Objects such as open files, locks, sockets and "
                "generators cannot be shipped; create them inside the task instead.") from exc
        tid = self._next_id
        self._next_id += 1
        task.id = tid
        task.manager = self
        library = getattr(task, "library_name", None)
        sandbox_in, sandbox_out, out_file = task.inputs, task.outputs, task.output_file
        outputs = tuple([f.cache_name for f, _ in sandbox_out]) if sandbox_out else ()
        if out_file is not None:
            outputs += (out_file.cache_name,)
        if arg_files or sandbox_in:
            inputs = tuple(dict.fromkeys([f.cache_name for f in arg_files] + [f.cache_name for f, _ in sandbox_in]))
            temps = tuple(dict.fromkeys(f.cache_name for f in [*arg_files, *(f for f, _ in sandbox_in)]
                                        if f.kind == "temp"))
            arg_temps = tuple(dict.fromkeys(f.cache_name for f in arg_files if f.kind == "temp"))
        else:
            inputs = temps = arg_temps = ()
        # what every attempt's TaskSpec holds besides its id, attempt and cores (see _spec_of)
        self._specs[tid] = (
            payload, library, getattr(task, "function_name", None),
            tuple((f.kind, f.cache_name, f.source, n) for f, n in sandbox_in) if sandbox_in else (),
            tuple((f.kind, f.cache_name, f.source, n) for f, n in sandbox_out) if sandbox_out else (),
            out_file.cache_name if out_file is not None else None, arg_temps,
            task.memory, task.time_max, task.category)
        self._tasks[tid] = task
        self._submitted += 1
        return TaskSubmitted(tid, task.priority, task.cores, task.memory, task.retries, inputs, temps, outputs,
                             task.locality, library)

    def wait(self, timeout: float | None = None) -> Task | None:
        """Return a finished task, waiting at most ``timeout`` seconds (None: until one finishes)."""
        if self.state is _CLOSED:
            self._check_open("wait")
        if self._done:
            return self._done.popleft()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._done:
                return self._done.popleft()
            if not self._scheduler.in_flight():
                return None
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            events = self._engine.poll(remaining)
            if events:
                self._apply(self._scheduler.handle(*events))
            elif not getattr(self._engine, "poll_waits", True) or (remaining is not None and remaining <= 0):
                if timeout == 0:  # a non-blocking poll: the caller is busy and comes back soon
                    self._log.flush_if_stale()
                else:  # idle: the log is complete up to now
                    self._log.flush()
                return self._done.popleft() if self._done else None

    def wait_for_tag(self, tag: str, timeout: float | None = None) -> Task | None:
        """Like ``wait`` but only returns a task with this tag (others stay queued)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            for i, t in enumerate(self._done):
                if t.tag == tag:
                    del self._done[i]
                    return t
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return None
            got = self.wait(remaining)
            if got is None:
                return None
            self._done.appendleft(got)
            if got.tag == tag:
                return self._done.popleft()
            if all(t.tag != tag for t in self._tasks.values() if t.result is None):
                return None

    def empty(self) -> bool:
        """True when no task is waiting, running, or finished but not yet returned by wait()."""
        return not self._scheduler.in_flight() and not self._done

    def hungry(self) -> int:
        """How many more tasks to submit so that every worker slot stays busy."""
        self._check_open("ask hungry()")
        return self._scheduler.hungry()

    def workers_connected(self) -> int:
        """How many workers are connected now (``statistics().workers``, without building a snapshot)."""
        return len(self._scheduler.workers)

    def cancel_by_task_id(self, task_id: int) -> bool:
        """Cancel a task; it comes back from wait() with result "cancelled". False if unknown or done."""
        self._check_open("cancel a task")
        t = self._tasks.get(task_id)
        if t is None or t.result is not None:
            return False
        self._apply(self._scheduler.handle(CancelRequested(task_id)))
        return True

    def cancel_by_tag(self, tag: str) -> int:
        ids = [tid for tid, t in self._tasks.items() if t.tag == tag and t.result is None]
        return sum(self.cancel_by_task_id(tid) for tid in ids)

    def statistics(self) -> Statistics:
        c = self._scheduler.counts()
        return Statistics(
            tasks_submitted=self._submitted, tasks_waiting=c.waiting + c.ready, tasks_running=c.running,
            tasks_done=c.done, tasks_failed=c.failed, workers=c.workers, cores=c.cores,
            engine=getattr(self._engine, "name", type(self._engine).__name__))

    # ------------------------------------------------------------ internals
    def _apply(self, actions) -> None:
        log, tasks = self._log, self._tasks
        stamp = None  # consecutive transitions share one reading of the clock (an engine call reads it anew)
        for a in actions:
            kind = type(a)
            if kind is Transition:  # four per task: the hottest
                t = tasks.get(a.task_id)
                if stamp is None:
                    stamp = log.stamp()
                log.transition(a.task_id, t.category if t else None, _STATE_NAMES[a.new], a.worker_id, a.detail,
                               stamp)
                continue
            if kind is Complete:  # right after its task's "done" transition: the result line shares its time
                self._complete(a, stamp)
                stamp = None
                continue
            stamp = None
            if kind is Dispatch:
                self._engine.execute(a.worker_id, self._spec_of(a))
            elif kind is Kill:
                self._engine.kill(a.task_id, a.worker_id)

    def _spec_of(self, a: Dispatch) -> TaskSpec:
        """The TaskSpec of one attempt, from what ``submit`` kept (built once per attempt)."""
        (payload, library, function, inputs, outputs, output_temp, arg_temps, memory, time_max,
         category) = self._specs[a.task_id]
        return TaskSpec(a.task_id, a.attempt, payload, library, function, inputs, outputs, output_temp, arg_temps,
                        a.cores, memory, time_max, category)

    def _complete(self, a: Complete, stamp: str | None = None) -> None:
        task = self._tasks.pop(a.task_id)
        self._specs.pop(a.task_id, None)
        task.result = _RESULT_NAMES[a.result]
        task.worker = a.worker_id
        task.attempts = a.attempts
        rep = a.report
        if isinstance(rep, Outcome):
            task.std_output = rep.std_output
            task.resources_measured = ResourcesMeasured(rep.wall_time, rep.memory, rep.peak_rss, rep.cpu_time)
            task.output_size = rep.output_size
            if rep.metrics:  # else the task keeps the empty dict it was made with
                task.metrics = dict(rep.metrics)
            if rep.output is not None:
                try:
                    task.output = _serialize.loads(rep.output)
                except Exception as exc:  # the value exists remotely but not here
                    task.output = exc
                    if a.result is _SUCCESS:
                        task.result = Result.EXCEPTION.value
        elif a.reason:
            task.output = _failure(a.result, a.reason)
        if a.result is not _SUCCESS and task.output is None:
            task.output = _failure(a.result, a.reason or a.result.value)
        m = task.resources_measured
        self._log.result(task.id, task.category, task.worker, task.result, task.attempts, task.cores, task.memory,
                         task.time_max, None if m is None else (m.wall_time, m.memory, m.peak_rss, m.cpu_time), stamp)
        self._done.append(task)


def _failure(result: Result, reason: str) -> BaseException:
    if result is Result.CANCELLED:
        from concurrent.futures import CancelledError

        return CancelledError(reason)
    if result is Result.UNSATISFIABLE:
        return UnsatisfiableTaskError(reason)
    return RuntimeError(reason)
