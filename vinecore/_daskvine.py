"""DaskVine: a Manager that runs dask graphs, ``dask.compute(x, scheduler=m.get)``.

Policy
------
One ``get`` is one run:

1. The graph is planned (:mod:`vinecore._graph`): culled to the requested
   keys, ordered with ``dask.order``, wide ``@associative`` nodes turned into
   reductions (:mod:`vinecore._associative`).
2. A library holding the whole plan for the workers is installed: each worker
   unpickles the graph's functions and data once, and every node becomes a
   FunctionCall naming it by number, with its inputs passed as temps.
3. Jobs are submitted as the manager gets hungry (:mod:`vinecore._graphrun`);
   outputs stay on the workers as temps, dropped once their readers finished;
   only the requested keys come back.
4. The first node that fails stops the run: what is in flight is cancelled,
   temps are dropped, the library is removed, and the error names the key.
   A Python exception raised by the node is re-raised as itself, with a note
   naming the key and the remote traceback; running out of memory or time, or
   losing the worker, or needing more than any worker has, raises :class:`DaskNodeError`. An interrupt
   (KeyboardInterrupt) of the caller cleans up the same way, so the manager
   stays usable.

A ``get`` needs the manager to itself: it refuses to start while tasks
submitted directly are unfinished. ``last_get`` describes the last run.
Without a ``run_dir`` the run directory, and with it the worker store of the
sync and local engines, is made in ``/dev/shm`` where it exists: like dask's
own schedulers, intermediate results then live in memory. Pass ``run_dir``
to keep them on a disk instead.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

from ._associative import TreeShape
from ._graph import build_plan, flatten_keys, graph_payload, load_graph, repack, run_node, run_reduction
from ._graphrun import GraphRun, Job
from ._manager import Manager
from ._tasks import FunctionCall, Library
from .exceptions import TaskSubmissionError, VinecoreError

__all__ = ["DaskVine", "DaskNodeError", "GetStatistics"]

_OPTIONS = ("fan_in", "resources", "retries", "task_groups", "associative")
_IGNORED = ("num_workers", "pool", "optimize_graph")  # meaningful to dask's local schedulers only
_DRAIN_SECONDS = 60.0
_WAKE_SECONDS = 1.0
_SHM = "/dev/shm"


class _Interrupts:
    """Ctrl-C during a get, made reliable. While a get runs in the main thread with Python's default
    SIGINT handler, SIGINT only sets a flag, and the loop raises KeyboardInterrupt at its next step (at
    most ``_WAKE_SECONDS`` later). Raised by the handler itself, the KeyboardInterrupt could land in a
    finalizer (``__del__`` of an object collected at that moment), where Python prints and drops it and
    the get would go on; and a second Ctrl-C cannot cut the cleanup short."""

    def __init__(self, enabled: bool = True) -> None:
        self.hit = False
        self.enabled = enabled
        self._old: Any = None

    def __enter__(self) -> "_Interrupts":
        if self.enabled and threading.current_thread() is threading.main_thread() and \
                signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self._old = signal.signal(signal.SIGINT, self._handler)
        return self

    def _handler(self, signum: int, frame: Any) -> None:
        self.hit = True

    def check(self) -> None:
        if self.hit:
            self.hit = False
            raise KeyboardInterrupt

    def __exit__(self, *exc: Any) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
            self._old = None


class DaskNodeError(VinecoreError):
    """A node of a dask graph ran out of memory or time, or lost its worker.

    ``key`` is the dask key, ``result`` vinecore's result string, ``worker``
    where it ran, ``remote_traceback`` what the worker reported."""

    def __init__(self, message: str, *, key: Any, result: str, worker: str | None,
                 remote_traceback: str = "") -> None:
        super().__init__(message)
        self.key = key
        self.result = result
        self.worker = worker
        self.remote_traceback = remote_traceback


@dataclass(frozen=True)
class GetStatistics:
    """What the last ``get`` did.

    ``nodes``: jobs of the plan (nodes that are no data and no alias);
    ``tasks``: tasks submitted, reduction calls included; ``reductions``: the
    tree each rewritten node ran as; ``not_rewritten``: nodes marked
    associative that ran flat, and why; ``bytes_moved`` / ``bytes_local``:
    bytes of temps read by a task on another / the same worker as the one
    holding them; ``peak_held_bytes`` / ``peak_held_temps``: most intermediate
    data kept on the workers at once; ``library_bytes``: size of the plan
    shipped to each worker; ``peak_in_flight``: most tasks of the get submitted
    and not finished at once (submission is lazy); ``seconds``: wall time of the get."""

    nodes: int
    tasks: int
    reductions: dict[Any, TreeShape]
    not_rewritten: dict[Any, str]
    bytes_moved: int
    bytes_local: int
    reads_moved: int
    reads_local: int
    peak_held_bytes: int
    peak_held_temps: int
    library_bytes: int
    peak_in_flight: int
    seconds: float


class DaskVine(Manager):
    """A :class:`~vinecore.Manager` that computes dask graphs.

    Same constructor as ``Manager``. Use ``dask.compute(x, scheduler=m.get)``,
    ``x.compute(scheduler=m.get)`` or ``dask.config.set(scheduler=m.get)``.
    """

    last_get: GetStatistics | None = None
    _gets = 0

    def __init__(self, engine: Any = "local", workers: int | None = None, run_dir: Any = None,
                 **engine_options: Any) -> None:
        # Without a run_dir, the worker store (the temps of the sync and local engines) goes to
        # memory (/dev/shm) when there is one: intermediate results of a dask graph live in memory
        # with dask's own schedulers too, and creating a file there costs a tenth of a disk's.
        self._shm_dir = None
        if run_dir is None and os.path.isdir(_SHM) and os.access(_SHM, os.W_OK):
            run_dir = self._shm_dir = tempfile.mkdtemp(prefix="daskvine-", dir=_SHM)
        try:
            super().__init__(engine=engine, workers=workers, run_dir=run_dir, **engine_options)
        except BaseException:
            self._remove_shm_dir()
            raise

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._remove_shm_dir()

    def _remove_shm_dir(self) -> None:
        if self._shm_dir is not None:
            shutil.rmtree(self._shm_dir, ignore_errors=True)
            self._shm_dir = None

    def get(self, dsk: Any, keys: Any, **options: Any) -> Any:
        """Compute ``keys`` of the graph ``dsk`` (dask's scheduler interface).

        Options (also through ``dask.compute(..., fan_in=...)``):

        fan_in
            inputs per call of a rewritten associative reduction (default 8, at least 2).
        resources
            ``{"cores": n, "memory": MB, "disk": MB, "time_max": s}`` for every
            node; a node's ``dask.annotate(resources=...)`` overrides it.
        retries
            attempts after an exception or a lost worker (default 0); the
            ``retries`` annotation overrides it per node.
        task_groups
            keep chains of single-consumer temps on one worker (default True).
        associative
            rewrite wide ``@associative`` nodes into trees (default True).
        """
        self._check_open("run a dask graph")
        opts = _parse_options(options)
        if not self.empty():
            s = self.statistics()
            raise TaskSubmissionError(
                f"DaskVine.get needs the manager to itself, but {s.tasks_waiting + s.tasks_running} task(s) "
                "submitted directly have not come back from wait(). Wait for them first, or use a second "
                "manager for the graph.")
        t0 = time.perf_counter()
        plan = build_plan(dsk, keys, fan_in=opts["fan_in"], resources=opts["resources"],
                          retries=opts["retries"], rewrite=opts["associative"])
        run = GraphRun(plan, task_groups=opts["task_groups"])
        values: dict[int, Any] = {}
        tasks = peak = 0
        payload = b""
        if plan.keys:
            payload = graph_payload(plan.worker, plan.keys)
            tasks, peak = self._run(plan, run, payload, values)
        c = run.counters
        self.last_get = GetStatistics(
            nodes=len(plan.keys), tasks=tasks, reductions=run.shapes(), not_rewritten=dict(plan.not_rewritten),
            bytes_moved=c.bytes_moved, bytes_local=c.bytes_local, reads_moved=c.reads_moved,
            reads_local=c.reads_local, peak_held_bytes=c.peak_held_bytes, peak_held_temps=c.peak_held_temps,
            library_bytes=len(payload), peak_in_flight=peak, seconds=time.perf_counter() - t0)
        flat = {}
        for key, (kind, v) in zip(flatten_keys(keys), plan.targets):
            flat[key] = v if kind == "value" else values[v]
        return repack(keys, flat)

    # ------------------------------------------------------------ the loop
    def _run(self, plan, run: GraphRun, payload: bytes, values: dict[int, Any]) -> tuple[int, int]:
        DaskVine._gets += 1
        lib = f"daskvine-{DaskVine._gets}-{uuid.uuid4().hex[:8]}"
        self.install_library(Library.from_functions(lib, run_node, run_reduction,
                                                    library_context_info=[load_graph, (payload,), {}]))
        files: dict[int, Any] = {}
        inflight: dict[int, Job] = {}
        holder = _holder_of(getattr(self.engine, "name", ""))
        wanted = plan.requested
        tasks = peak = 0
        failed = True
        # in-process engines run the nodes in this thread: there Ctrl-C must stop the node itself
        interrupts = _Interrupts(enabled=not getattr(self.engine, "in_process", False))
        try:
            interrupts.__enter__()
            while not run.complete:
                interrupts.check()
                for job in run.next_jobs(self.hungry() + run.ahead_waiting):
                    inflight[self.submit(self._task(plan, job, lib, files))] = job
                    tasks += 1
                peak = max(peak, len(inflight))
                if not inflight:
                    raise RuntimeError("DaskVine: nothing is running but the graph is not finished; "
                                       "this is a bug in vinecore, please report it with the graph")
                t = self.wait(_WAKE_SECONDS)  # back in Python at least this often: Ctrl-C lands promptly
                interrupts.check()
                if t is None:
                    continue
                job = inflight.pop(t.id)
                if not t.successful:
                    raise self._node_error(run, job, t)
                if job.id == job.node and job.node in wanted:
                    values[job.node] = self.fetch_value(files[job.id]) if job.keep else t.output
                for p in run.job_done(job.id, t.output_size, holder(t.worker or "")):
                    self.undeclare_file(files.pop(p))
            failed = False
        finally:
            if failed:
                self._abort(inflight)
            for f in files.values():
                self.undeclare_file(f)
            try:
                self.remove_library(lib)
            except Exception:
                if not failed:
                    raise
            finally:
                interrupts.__exit__()
        interrupts.check()  # a Ctrl-C after the last step still stops the caller
        return tasks, peak

    def _task(self, plan, job: Job, lib: str, files: dict[int, Any]) -> FunctionCall:
        inputs = [files[p] for p in job.inputs]
        if job.operands is None:
            t = FunctionCall(lib, "run_node", job.node, *inputs)
        else:
            t = FunctionCall(lib, "run_reduction", job.node, job.operands, job.inputs, *inputs)
        if job.keep:
            files[job.id] = t.enable_temp_output()
        r = plan.resources[job.node]
        if r.cores:
            t.set_cores(r.cores)
        if r.memory:
            t.set_memory(r.memory)
        if r.disk:
            t.set_disk(r.disk)
        if r.time_max:
            t.set_time_max(r.time_max)
        if plan.retries[job.node]:
            t.set_retries(plan.retries[job.node])
        t.set_priority(job.priority)
        t.set_category("daskvine")
        t.set_locality(f"{lib}:{job.group}")
        return t

    def _abort(self, inflight: dict[int, Job]) -> None:
        """Cancel what this get has in flight and collect it, so the manager is clean."""
        for tid in list(inflight):
            self.cancel_by_task_id(tid)
        deadline = time.monotonic() + _DRAIN_SECONDS
        while inflight and time.monotonic() < deadline:
            t = self.wait(max(0.0, deadline - time.monotonic()))
            if t is None:
                break
            inflight.pop(t.id, None)

    def _node_error(self, run: GraphRun, job: Job, t) -> BaseException:
        what = run.describe(job)
        key = run.plan.keys[job.node]
        out = t.output
        tb = getattr(out, "remote_traceback", "") or ""
        where = f"on worker {t.worker}" if t.worker else "before it ran"
        if t.result == "exception" and isinstance(out, BaseException) and not _is_vinecore_reason(out):
            note = f"{what} raised {where} (attempt {t.attempts})."
            if tb:
                note += "\nRemote traceback:\n" + tb.rstrip()
            _add_note(out, note)
            try:
                out.dask_key = key  # type: ignore[attr-defined]
            except Exception:  # noqa: BLE001 - exceptions with __slots__
                pass
            return out
        r = run.plan.resources[job.node]
        detail = f"{type(out).__name__}: {out}" if isinstance(out, BaseException) else str(out)
        if t.result == "resource exhaustion":
            m = t.resources_measured
            measured = f", measured {m.memory:.0f} MB above the worker's baseline" if m else ""
            msg = (f"{what} ran out of memory {where} (allocation: "
                   f"{f'{r.memory} MB' if r.memory else 'none set'}{measured}): {detail}. Give the node more "
                   "memory with dask.annotate(resources={'memory': MB}) around it, or "
                   "DaskVine.get(..., resources={'memory': MB}) for every node.")
        elif t.result == "unsatisfiable":
            msg = (f"{what} can never run: {detail}. Ask for less with dask.annotate(resources=...) around "
                   "it or get(..., resources=...), or start larger workers.")
        elif t.result == "max wall time":
            msg = (f"{what} ran over its time_max of {r.time_max} s {where}: {detail}. Raise it with "
                   "dask.annotate(resources={'time_max': seconds}) or get(..., resources=...).")
        else:
            msg = (f"{what} ended with {t.result} {where} after {t.attempts} attempt(s): {detail}. "
                   "Lost workers are retried with get(..., retries=n).")
        err = DaskNodeError(msg, key=key, result=t.result, worker=t.worker, remote_traceback=tb)
        if isinstance(out, BaseException):
            err.__cause__ = out
        return err


def _parse_options(options: dict[str, Any]) -> dict[str, Any]:
    opts = {"fan_in": 8, "resources": None, "retries": 0, "task_groups": True, "associative": True}
    for name, value in options.items():
        if name in _IGNORED:
            continue
        if name not in opts:
            raise TypeError(f"DaskVine.get got an unknown option {name!r}; it takes {', '.join(_OPTIONS)}")
        opts[name] = value
    if isinstance(opts["fan_in"], bool) or not isinstance(opts["fan_in"], int) or opts["fan_in"] < 2:
        raise ValueError(f"fan_in must be a whole number of at least 2, got {opts['fan_in']!r}")
    if isinstance(opts["retries"], bool) or not isinstance(opts["retries"], int) or opts["retries"] < 0:
        raise ValueError(f"retries must be a whole number >= 0, got {opts['retries']!r}")
    return opts


def _holder_of(engine_name: str):
    """Where a worker keeps its temps: the dask worker for the dask engine's slots, else the worker."""
    if engine_name == "dask":
        return lambda wid: wid.rsplit("/", 1)[0]
    return lambda wid: wid


def _is_vinecore_reason(exc: BaseException) -> bool:
    """An exception vinecore made up (input missing, library failed), not raised by the node."""
    return type(exc) is RuntimeError and not getattr(exc, "remote_traceback", "")


def _add_note(exc: BaseException, note: str) -> None:
    if hasattr(exc, "add_note"):
        exc.add_note(note)
    else:  # Python 3.10
        exc.__notes__ = [*getattr(exc, "__notes__", []), note]  # type: ignore[attr-defined]
