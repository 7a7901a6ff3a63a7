"""The sync engine: every task runs in the caller's process, one at a time,
inside ``Manager.wait``. Deterministic, debuggable with pdb, no processes.

It offers ``workers`` virtual workers (default 1) of ``cores_per_worker``
cores each, every one with its own library contexts.

It runs in *your* process, so it leaves your process alone: no address-space
limit (a task over its memory allocation is reported as ``resource
exhaustion`` after it ends, from its measured peak), a time limit by
``SIGALRM`` only when the task runs in the main thread (otherwise judged
after it ends), only the task thread's output captured, and ``os._exit`` in a
task ends your process as it would anywhere else. Use the local engine to
see what a worker process would do.
"""

from __future__ import annotations

import os
import shutil
from collections import deque

from .._events import Event, Result, TaskFinished, WorkerJoined
from .._runtime import DirStore, Outcome, TaskSpec, WorkerRuntime

__all__ = ["SyncEngine"]


class SyncEngine:
    name = "sync"
    poll_waits = False  # poll() returns at once: with nothing queued, nothing will ever happen
    in_process = True  # tasks share the caller's process (os._exit would end it)

    def __init__(self, workers: int | None = None, *, run_dir: str, cores_per_worker: int = 1) -> None:
        self.n_workers = workers or 1
        self.cores = cores_per_worker
        self.store = DirStore(os.path.join(run_dir, "store"))
        self.runtimes: dict[str, WorkerRuntime] = {}
        self.libraries: dict[str, bytes] = {}
        self.queue: deque[tuple[str, TaskSpec]] = deque()
        self.killed: set[int] = set()

    def start(self) -> list[Event]:
        events: list[Event] = []
        for i in range(self.n_workers):
            wid = f"sync-{i}"
            self.runtimes[wid] = self._runtime(wid)
            events.append(WorkerJoined(wid, cores=self.cores, slots=1))
        return events

    def _runtime(self, wid: str) -> WorkerRuntime:
        rt = WorkerRuntime(wid, self.store, isolated=False)
        for name, payload in self.libraries.items():
            rt.install_library(name, payload)
        return rt

    def install_library(self, name: str, payload: bytes) -> None:
        self.libraries[name] = payload
        for rt in self.runtimes.values():
            rt.install_library(name, payload)

    def remove_library(self, name: str) -> None:
        self.libraries.pop(name, None)
        for rt in self.runtimes.values():
            rt.uninstall_library(name)

    def execute(self, worker_id: str, spec: TaskSpec) -> None:
        self.queue.append((worker_id, spec))

    def kill(self, task_id: int, worker_id: str) -> None:
        self.killed.add(task_id)

    def poll(self, timeout: float | None) -> list[Event]:
        while self.queue:
            wid, spec = self.queue.popleft()
            if spec.task_id in self.killed:
                self.killed.discard(spec.task_id)
                return [TaskFinished(spec.task_id, wid, Result.CANCELLED,
                                     Outcome(spec.task_id, Result.CANCELLED, None, "", 0, 0, 0, 0, wid))]
            outcome = self.runtimes[wid].execute(spec)
            return [TaskFinished(spec.task_id, wid, outcome.result, outcome, held_on=wid)]
        return []

    def fetch(self, cache_name: str) -> bytes:
        return self.store.get(cache_name)

    def release(self, cache_name: str) -> None:
        self.store.delete(cache_name)

    def close(self) -> None:
        self.queue.clear()
        shutil.rmtree(self.store.root, ignore_errors=True)
