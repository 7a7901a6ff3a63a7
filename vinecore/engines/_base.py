"""The engine protocol: the small surface every engine implements.

An engine runs :class:`~vinecore._runtime.TaskSpec` attempts on the workers
the state machine picked, and reports what happened as events. It makes no
scheduling decisions of its own beyond placing data.

``start() -> events``
    bring up workers; return (or later poll) ``WorkerJoined`` events.
``install_library(name, payload)``
    ship a pickled :class:`~vinecore.Library` to every current and future worker.
``remove_library(name)``
    drop it from every worker (its context's ``close()`` is called) and from future ones.
``execute(worker_id, spec)``
    start one attempt on that worker; never blocks on the task.
``kill(task_id, worker_id)``
    stop a running attempt; its ``TaskFinished`` still arrives later.
``poll_waits``
    optional, default True; False for an engine whose ``poll`` never waits
    (the sync engine), so ``Manager.wait`` stops when nothing came back.
``poll(timeout) -> events``
    ``TaskFinished`` (report: :class:`~vinecore._runtime.Outcome`),
    ``WorkerJoined``, ``WorkerRemoved``; waits at most ``timeout`` seconds.
``fetch(cache_name) -> bytes`` / ``release(cache_name)``
    read or drop a temp kept on the workers.
``close()``
    stop everything; idempotent.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from .._events import Event
from .._runtime import TaskSpec

__all__ = ["Engine"]


@runtime_checkable
class Engine(Protocol):
    name: str

    def start(self) -> list[Event]: ...

    def install_library(self, name: str, payload: bytes) -> None: ...

    def remove_library(self, name: str) -> None: ...

    def execute(self, worker_id: str, spec: TaskSpec) -> None: ...

    def kill(self, task_id: int, worker_id: str) -> None: ...

    def poll(self, timeout: float | None) -> list[Event]: ...

    def fetch(self, cache_name: str) -> bytes: ...

    def release(self, cache_name: str) -> None: ...

    def close(self) -> None: ...
