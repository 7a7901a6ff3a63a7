"""The messages of the reduction core (:mod:`ddr._reduction`): its events in, its actions out.

Every message is a frozen, slotted dataclass built with ``vinecore._frozen.fast_init`` (several
are built per task); outcomes, job kinds and run statuses are enums. The state machine, its
policies and its bookkeeping are in :mod:`ddr._reduction`, which re-exports these names.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from vinecore._frozen import fast_init

from ._ledger import Coverage
from ._planner import CountRequest, Work

__all__ = ["RunStatus", "Kind", "Outcome", "Event", "Capacity", "JobEnded", "CancelRun", "Action", "Submit",
           "CancelJob", "Release", "Finalize", "Notice", "RunEnded", "DatasetProgress"]


class RunStatus(str, enum.Enum):
    RUNNING = "running"
    FINISHED = "finished"  # every dataset finalised (some may be incomplete: see the ledgers)
    FAILED = "failed"  # stopped by a fatal error
    CANCELLED = "cancelled"  # stopped on request


class Kind(str, enum.Enum):
    PROCESS = "process"
    COUNT = "count"
    ACCUMULATE = "accumulate"


class Outcome(str, enum.Enum):
    SUCCESS = "success"
    EXHAUSTED = "resource exhaustion"
    TIMED_OUT = "max wall time"
    LOST = "worker lost"
    BAD_INPUT = "bad input"
    ERROR = "error"
    UNSATISFIABLE = "unsatisfiable"
    SETUP = "setup error"  # the workers' environment cannot run anything: a full disk, a missing module
    CANCELLED = "cancelled"


# ------------------------------------------------------------------ events
@dataclass(frozen=True, slots=True)
class Event:
    pass


@dataclass(frozen=True, slots=True)
class Capacity(Event):
    """The engine wants ``slots`` more tasks; ``workers`` are up."""

    slots: int
    now: float = 0.0
    workers: int = 1


@dataclass(frozen=True, slots=True)
class JobEnded(Event):
    """A job came back. ``value``: a count's ``(entries, uuid)``; ``error``: what was raised;
    ``transient``: a bad input that may read fine on a retry; ``wall``/``memory``: measurements;
    ``metrics``: ``(name, value)`` pairs the task reported, summed into its dataset's ledger."""

    job: int
    outcome: Outcome
    now: float = 0.0
    value: Any = None
    error: BaseException | None = None
    transient: bool = False
    wall: float = 0.0
    memory: float | None = None
    metrics: tuple[tuple[str, float], ...] = ()  # what the task reported (vinecore.report_metric), any outcome


@dataclass(frozen=True, slots=True)
class CancelRun(Event):
    reason: str = "cancelled"


# ----------------------------------------------------------------- actions
@dataclass(frozen=True, slots=True)
class Action:
    pass


@dataclass(frozen=True, slots=True)
class Submit(Action):
    job: int
    kind: Kind
    dataset: str
    priority: float
    work: Work | None = None  # process
    count: CountRequest | None = None  # count
    inputs: tuple[int, ...] = ()  # accumulate: partials to merge
    locality: str | None = None


@dataclass(frozen=True, slots=True)
class CancelJob(Action):
    job: int


@dataclass(frozen=True, slots=True)
class Release(Action):
    """The partial is merged into another (or fetched): drop it from the workers."""

    partial: int


@dataclass(frozen=True, slots=True)
class Finalize(Action):
    """Merge these partials (on the manager when several) into the dataset's final result."""

    dataset: str
    partials: tuple[int, ...]
    coverage: Coverage
    complete: bool


@dataclass(frozen=True, slots=True)
class Notice(Action):
    """Something the user should hear about (split, failed chunk, bad file, dataset done)."""

    kind: str
    dataset: str
    message: str


@dataclass(frozen=True, slots=True)
class RunEnded(Action):
    status: RunStatus
    error: BaseException | None = None


@dataclass(frozen=True)
class DatasetProgress:
    """A snapshot of one dataset's progress."""

    dataset: str
    events_done: int
    events_total: int | None
    chunks_done: int
    chunks_failed: int
    chunks_running: int
    events_per_second: float
    eta_seconds: float | None
    finished: bool


for _cls in (Capacity, JobEnded, CancelRun, Submit, CancelJob, Release, Finalize, Notice, RunEnded):
    fast_init(_cls)  # several per task: set slots directly (still frozen; see vinecore._frozen)
del _cls
