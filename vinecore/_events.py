"""Events into, and actions out of, the scheduling state machine.

The state machine in :mod:`vinecore._state` never performs I/O. Engines and the
:class:`~vinecore.Manager` turn what happens in the world into *events*
(a task was submitted, a worker joined, a task finished) and carry out the
*actions* the state machine answers with (dispatch this task to that worker,
kill that attempt, report this task as done).

Every message is a frozen dataclass; results are members of :class:`Result`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from ._frozen import fast_init

__all__ = [
    "Result",
    "TaskState",
    "Event",
    "TaskSubmitted",
    "CancelRequested",
    "WorkerJoined",
    "WorkerRemoved",
    "TaskFinished",
    "FileForgotten",
    "Action",
    "Dispatch",
    "Kill",
    "Complete",
    "Transition",
]


class Result(str, enum.Enum):
    """How a task ended. The values are TaskVine's result strings."""

    SUCCESS = "success"
    EXCEPTION = "exception"
    RESOURCE_EXHAUSTION = "resource exhaustion"
    MAX_WALL_TIME = "max wall time"
    WORKER_LOST = "worker lost"
    CANCELLED = "cancelled"
    UNSATISFIABLE = "unsatisfiable"  # vinecore: no worker present can ever fit its resources

    def __str__(self) -> str:  # pragma: no cover - cosmetic
        return self.value


class TaskState(str, enum.Enum):
    """Where a task is in its life; see docs/design.md for the transition table."""

    WAITING = "waiting"  # submitted, some input file not produced yet
    READY = "ready"  # every input exists; queued by priority
    RUNNING = "running"  # dispatched to a worker
    DONE = "done"  # finished with a Result (success or not)


# ---------------------------------------------------------------- events in


@dataclass(frozen=True, slots=True)
class Event:
    """Base class of everything fed to ``Scheduler.handle``."""


@dataclass(frozen=True, slots=True)
class TaskSubmitted(Event):
    task_id: int
    priority: float = 0.0
    cores: int | None = None  # None: the whole worker (TaskVine's rule)
    memory: int | None = None  # MB; only used for placement
    retries: int = 0
    inputs: tuple[str, ...] = ()  # cache names this task reads
    temps: tuple[str, ...] = ()  # inputs that some task must produce (wait even if no producer is known yet)
    outputs: tuple[str, ...] = ()  # cache names this task produces
    locality: str | None = None  # prefer a worker that recently ran this key
    library: str | None = None


@dataclass(frozen=True, slots=True)
class CancelRequested(Event):
    task_id: int


@dataclass(frozen=True, slots=True)
class WorkerJoined(Event):
    worker_id: str
    cores: int = 1
    memory: int | None = None  # MB
    slots: int = 1  # tasks it can run at once
    node: str | None = None  # the machine it runs on (workers of a node share its file cache); None: unknown


@dataclass(frozen=True, slots=True)
class WorkerRemoved(Event):
    worker_id: str
    reason: str = "worker lost"


@dataclass(frozen=True, slots=True)
class TaskFinished(Event):
    task_id: int
    worker_id: str
    result: Result
    report: Any = None  # opaque to the state machine: output, stdout, measurements
    held_on: str | None = None  # worker that keeps the task's temp outputs


@dataclass(frozen=True, slots=True)
class FileForgotten(Event):
    """A temp was undeclared: the state machine may forget who produced it."""

    cache_name: str


# --------------------------------------------------------------- actions out


@dataclass(frozen=True, slots=True)
class Action:
    """Base class of everything ``Scheduler.handle`` returns."""


@dataclass(frozen=True, slots=True)
class Dispatch(Action):
    task_id: int
    worker_id: str
    attempt: int
    cores: int


@dataclass(frozen=True, slots=True)
class Kill(Action):
    task_id: int
    worker_id: str


@dataclass(frozen=True, slots=True)
class Complete(Action):
    task_id: int
    result: Result
    report: Any = None
    worker_id: str | None = None
    attempts: int = 0
    reason: str = ""  # why a task ended without running (cancelled, input missing)


@dataclass(frozen=True, slots=True)
class Transition(Action):
    """A state change, for the transactions log and statistics."""

    task_id: int
    old: TaskState | None
    new: TaskState
    worker_id: str | None = None
    detail: str = ""


for _cls in (TaskSubmitted, CancelRequested, WorkerJoined, WorkerRemoved, TaskFinished, FileForgotten, Dispatch, Kill,
             Complete, Transition):
    fast_init(_cls)  # several per task: set slots directly (still frozen; see vinecore._frozen)
del _cls
