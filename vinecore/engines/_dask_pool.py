"""The worker side of the dask engine: library processes beside each dask worker.

A dask worker runs tasks in threads, and when one of them outgrows the
worker's memory the nanny restarts the whole worker with every result it
holds. So vinecore never runs a task in the dask worker itself. Each dask
worker gets a :class:`Pool` (created on first use, closed by the run's worker
plugin): a :class:`~vinecore.engines.local.LocalEngine` of library processes,
one per slot, supervised from the dask worker exactly as the local engine
supervises its workers on the manager's machine (address-space limit,
resident-memory watchdog, time limit, replacement of dead processes with
their library contexts rebuilt).

A dask task (:func:`run_attempt`) forwards one attempt to its slot's library
process and returns a :class:`Held`: the attempt's :class:`Outcome` plus the
bytes of the temps it produced. The Held object is what dask keeps in the
worker's memory, moves to other workers for consumers, and recomputes from
lineage when the worker holding it dies. A tiny second task
(:func:`outcome_of`) sends only the outcome back to the manager.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

from .. import _serialize
from .._events import Result, TaskFinished, WorkerJoined, WorkerRemoved
from .._runtime import Outcome, TaskSpec
from .local import LocalEngine

__all__ = ["Held", "Pool", "run_attempt", "outcome_of", "kill_on_worker", "RunPlugin", "LibraryPlugin",
           "pool_stats"]

_POOLS: dict[tuple[str, str], "Pool"] = {}
_POOLS_LOCK = threading.Lock()


@dataclass
class Held:
    """One attempt's outcome and the temps it produced, kept by dask on a worker."""

    outcome: Outcome
    temps: dict[str, bytes] = field(default_factory=dict)

    def __sizeof__(self) -> int:  # what dask's memory accounting sees
        return 512 + len(self.outcome.output or b"") + sum(len(v) for v in self.temps.values())


class Pool:
    """Library processes serving one run on one dask worker; thread-safe."""

    def __init__(self, address: str, run: str, processes: int, local_dir: str, cores: int = 1) -> None:
        self.address = address
        self.run_id = run
        self.engine = LocalEngine(processes, run_dir=os.path.join(local_dir, f"vinecore-{run}"),
                                  prefix=f"{address}/p", env={"VINECORE_STORE_MEMORY_MB": "0"},
                                  cores_per_worker=cores)
        self.slots = [ev.worker_id for ev in self.engine.start()]
        self.busy: list[int | None] = [None] * processes
        self.lock = threading.Lock()
        self.done: dict[tuple[int, int], Outcome] = {}
        self.killed: set[tuple[int, int]] = set()
        self.current: dict[str, tuple[int, int]] = {}  # library process -> attempt it runs
        self.staged: dict[str, int] = {}  # temp -> tasks using it in this pool
        self._replacing: list[int] = []
        self.closed = False

    # --------------------------------------------------------------- control
    def install_library(self, name: str, payload: bytes) -> None:
        with self.lock:
            if name not in self.engine.libraries:
                self.engine.install_library(name, payload)

    def remove_library(self, name: str) -> None:
        with self.lock:
            self.engine.remove_library(name)  # a no-op for a library it does not have

    def kill(self, task_id: int, attempt: int) -> None:
        with self.lock:
            self.killed.add((task_id, attempt))
            for slot, running in enumerate(self.busy):
                if running == task_id:
                    self.engine.kill(task_id, self.slots[slot])

    def close(self) -> None:
        with self.lock:
            self.closed = True
            self.engine.close()

    # ------------------------------------------------------------------ runs
    def run(self, slot: int, spec: TaskSpec, inputs: dict[str, bytes]) -> Held:
        key = (spec.task_id, spec.attempt)
        slot %= len(self.slots)
        while True:  # one attempt per slot at a time (an orphan may still hold it)
            with self.lock:
                if key in self.killed:
                    return Held(_outcome(spec, Result.CANCELLED, "cancelled before it started", self.address))
                if self.closed:
                    return Held(_outcome(spec, Result.WORKER_LOST, "the run's pool on this worker was closed",
                                         self.address))
                if self.busy[slot] is None:
                    self.busy[slot] = spec.task_id
                    for name, data in inputs.items():
                        if self.staged.get(name, 0) == 0:
                            self.engine.store.put(name, data)
                        self.staged[name] = self.staged.get(name, 0) + 1
                    self.current[self.slots[slot]] = key
                    self.engine.execute(self.slots[slot], spec)
                    break
            time.sleep(0.01)
        try:
            outcome = self._await(key)
        finally:
            with self.lock:
                self.busy[slot] = None
                for name in inputs:
                    self.staged[name] -= 1
                    if self.staged[name] == 0:
                        del self.staged[name]
                        self.engine.store.delete(name)
        temps: dict[str, bytes] = {}
        names = [spec.output_temp] if spec.output_temp else []
        names += [cache for kind, cache, _, _ in spec.outputs if kind == "temp"]
        for name in names:
            try:
                if outcome.result is Result.SUCCESS:
                    temps[name] = self.engine.store.get(name)
            except FileNotFoundError:
                outcome = _outcome(spec, Result.EXCEPTION, f"task {spec.task_id} succeeded but its temp "
                                   f"{name} is missing from the worker store", outcome.worker_id)
            finally:
                self.engine.store.delete(name)
        return Held(outcome, temps)

    def _await(self, key: tuple[int, int]) -> Outcome:
        while True:
            with self.lock:
                got = self.done.pop(key, None)
                if got is not None:
                    return got
                for ev in self.engine.poll(0.02):
                    if isinstance(ev, TaskFinished):
                        started = self.current.pop(ev.worker_id, None)
                        if started is not None:
                            self.done[started] = ev.report
                    elif isinstance(ev, WorkerRemoved):
                        self._replacing.append(self.slots.index(ev.worker_id))
                    elif isinstance(ev, WorkerJoined) and self._replacing:
                        self.slots[self._replacing.pop(0)] = ev.worker_id
            time.sleep(0)


def _outcome(spec: TaskSpec, result: Result, why: str, worker: str) -> Outcome:
    exc = RuntimeError(why) if result is not Result.CANCELLED else _cancelled(why)
    return Outcome(spec.task_id, result, _serialize.exception_payload(exc), "", 0.0, 0.0, 0.0, 0.0, worker)


def _cancelled(why: str) -> BaseException:
    from concurrent.futures import CancelledError

    return CancelledError(why)


def pool_for(worker: Any, run: str, processes: int | None) -> Pool:
    """This dask worker's pool for ``run``, started on first use."""
    key = (worker.address, run)
    with _POOLS_LOCK:
        pool = _POOLS.get(key)
        if pool is None or pool.closed:
            nthreads = max(1, int(getattr(worker.state, "nthreads", 1)))
            n = processes or nthreads
            pool = _POOLS[key] = Pool(worker.address, run, n, worker.local_directory, max(1, nthreads // n))
    for name, plugin in list(worker.plugins.items()):
        if isinstance(plugin, LibraryPlugin) and plugin.run == run:  # installed once per pool
            pool.install_library(plugin.name, plugin.payload)
    return pool


# -------------------------------------------------------------- dask tasks
def run_attempt(run: str, slot: int, processes: int | None, spec: TaskSpec, deps: dict[str, Held]) -> Held:
    from distributed import get_worker

    worker = get_worker()
    inputs: dict[str, bytes] = {}
    for name, held in deps.items():
        data = held.temps.get(name)
        if data is None:
            why = (f"input {name} of task {spec.task_id} is not available: its producer failed when dask "
                   f"recomputed it ({held.outcome.result.value})")
            return Held(_outcome(spec, Result.EXCEPTION, why, worker.address))
        inputs[name] = data
    return pool_for(worker, run, processes).run(slot, spec, inputs)


def outcome_of(held: Held) -> Outcome:
    return held.outcome


async def kill_on_worker(run: str, task_id: int, attempt: int, dask_worker: Any = None) -> bool:
    """Stop an attempt in this worker's pool. A coroutine: ``Client.run(..., wait=False)`` accepts
    nothing else (a plain function fails on the worker with "Combination not supported")."""
    pool = _POOLS.get((dask_worker.address, run)) if dask_worker is not None else None
    if pool is None:
        return False
    pool.kill(task_id, attempt)
    return True


def pool_stats(run: str, dask_worker: Any = None) -> dict[str, Any]:
    """Pids and context builds of this worker's pool (for tests and diagnostics)."""
    pool = _POOLS.get((dask_worker.address, run))
    if pool is None:
        return {"worker_pid": os.getpid(), "processes": {}}
    with pool.lock:
        return {"worker_pid": os.getpid(), "processes": pool.engine.worker_pids(), "slots": list(pool.slots)}


# ----------------------------------------------------------------- plugins
class RunPlugin(WorkerPlugin):
    """Registered once per run: closes the run's pool when the run ends."""

    def __init__(self, run: str, processes: int | None) -> None:
        self.run = run
        self.processes = processes

    def setup(self, worker: Any) -> None:
        pool_for(worker, self.run, self.processes)

    def teardown(self, worker: Any) -> None:
        with _POOLS_LOCK:
            pool = _POOLS.pop((worker.address, self.run), None)
        if pool is not None:
            pool.close()



class LibraryPlugin(WorkerPlugin):
    """One per installed library: installs it in the pool of every worker, now and later."""

    def __init__(self, run: str, name: str, payload: bytes, processes: int | None) -> None:
        self.run = run
        self.name = name
        self.payload = payload
        self.processes = processes

    def setup(self, worker: Any) -> None:
        pool_for(worker, self.run, self.processes).install_library(self.name, self.payload)

    def teardown(self, worker: Any) -> None:
        with _POOLS_LOCK:
            pool = _POOLS.get((worker.address, self.run))
        if pool is not None:
            pool.remove_library(self.name)



