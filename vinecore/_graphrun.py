"""The state of one graph run: which jobs to submit next, which temps to drop. Pure.

Feed it ``next_jobs(budget)`` and ``job_done(...)``; it never talks to a
manager, so every decision below is tested with plain calls.

Policy
------
Submission
    A job is submitted once every input exists, in the plan's order (a
    ``priority`` annotation, then dask.order), at most ``budget`` at a time
    (the manager's ``hungry()``): a 10^5-node graph is never submitted up front.
    Calls of a rewritten reduction are submitted as soon as their operands
    exist, whatever the budget, so that partial results are merged at once.
Task groups
    When a job is submitted and its output has one consumer whose other
    inputs all exist, that consumer is submitted right behind it (it waits in
    the manager for the temp) and both carry the same locality key, so the
    worker that ran the producer picks the consumer as soon as it is free:
    chains linked by single-consumer temps run on one worker without a round
    trip. Only one link is submitted ahead at a time, so a long chain cannot
    eat the budget. Every other job takes the locality key of its largest
    input, so it prefers the worker holding that data.
Release
    A temp is dropped once every job that reads it has finished. A requested
    key without consumers is returned by its task instead of kept as a temp.
Accounting
    Bytes held (outputs that exist and are not dropped yet, and their peak),
    and bytes read by jobs from a temp held by the same worker ("local") or
    another one ("moved").
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass
from typing import Any

from ._associative import Call, Reducer, TreeShape
from ._graph import GraphPlan

__all__ = ["Job", "GraphRun", "RunCounters"]

_NEW, _QUEUED, _SUBMITTED, _DONE = 0, 1, 2, 3
CALL_PRIORITY = 1.0  # partial reductions go before everything else queued in the manager


@dataclass(frozen=True, slots=True)
class Job:
    """One task to submit. ``node`` is the plan job it computes (for a
    reduction call, the reduction's job); ``operands`` is set for reduction
    calls (``i >= 0``: input i of the node, ``-1 - p``: the value of ``inputs[p]``)."""

    id: int
    node: int
    inputs: tuple[int, ...]
    keep: bool  # output kept on the worker as a temp (else returned to the manager)
    priority: float
    group: int  # locality group
    operands: tuple[int, ...] | None = None
    call: int | None = None  # the reduction call's number
    ahead: bool = False  # submitted before its input exists (task group)


@dataclass
class RunCounters:
    jobs_done: int = 0
    calls_done: int = 0
    held_bytes: int = 0
    held_temps: int = 0
    peak_held_bytes: int = 0
    peak_held_temps: int = 0
    bytes_moved: int = 0
    bytes_local: int = 0
    reads_moved: int = 0
    reads_local: int = 0


class GraphRun:
    """Decisions for one run of a :class:`~vinecore._graph.GraphPlan`."""

    def __init__(self, plan: GraphPlan, *, task_groups: bool = True) -> None:
        self.plan = plan
        self.task_groups = task_groups
        n = len(plan.keys)
        self.n = n
        self.state = bytearray(n)
        self.undone = [len(i) for i in plan.inputs]
        self.uses = list(plan.uses)
        self.counters = RunCounters()
        self._heap: list[tuple[tuple, int]] = []
        self._forced: deque[Job] = deque()
        self._group: dict[int, int] = {}
        self._size: dict[int, int] = {}
        self._holder: dict[int, str] = {}
        self._jobs: dict[int, Job] = {}  # submitted, not done
        self._ahead_of: dict[int, int] = {}  # producer -> its consumer submitted ahead
        self.ahead_waiting = 0  # jobs submitted ahead whose input does not exist yet
        self._targets = set(plan.requested)
        self._reducers: dict[int, Reducer] = {}
        self._item_missing: dict[int, list[int]] = {}
        self._call_job: dict[tuple[int, int], int] = {}  # (reduction job, call number) -> call job
        self._next_id = n
        for j in range(n):
            if j in plan.reductions:
                rp = plan.reductions[j]
                self._reducers[j] = Reducer(len(rp.item_inputs), rp.fan_in, rp.algebra.commutative)
                self._item_missing[j] = [len(p) for p in rp.item_inputs]
                self.state[j] = _QUEUED
            elif not plan.inputs[j]:
                self._queue(j)
        for j in self._reducers:
            for i, missing in enumerate(self._item_missing[j]):
                if not missing:
                    self._start_calls(j, self._reducers[j].item_ready(i))

    # ----------------------------------------------------------- queries
    @property
    def complete(self) -> bool:
        return not self._targets

    def shapes(self) -> dict[Any, TreeShape]:
        return {self.plan.keys[j]: r.shape() for j, r in self._reducers.items()}

    def describe(self, job: Job) -> str:
        key = self.plan.keys[job.node]
        if job.call is None:
            return f"dask key {key!r}"
        r = self._reducers[job.node]
        return (f"dask key {key!r} (associative reduction of {r.n} inputs: partial call {job.call} "
                f"over {len(job.operands or ())} operands)")

    # ------------------------------------------------------------ events
    def next_jobs(self, budget: int) -> list[Job]:
        """Jobs to submit now: reduction calls and task-group links, then up to ``budget`` from the queue."""
        out: list[Job] = []
        while True:
            while self._forced:
                job = self._forced.popleft()
                out.append(self._submitted(job))
            if budget <= 0 or not self._heap:
                break
            _, j = heapq.heappop(self._heap)
            if self.state[j] != _QUEUED:
                continue
            budget -= 1
            out.append(self._submitted(self._plain_job(j, ahead=False)))
        return out

    def job_done(self, job_id: int, size: int = 0, holder: str = "") -> list[int]:
        """``job_id`` succeeded on ``holder`` with an output of ``size`` bytes.
        Returns the jobs whose temps may be dropped now."""
        job = self._jobs.pop(job_id)
        c = self.counters
        for p in job.inputs:
            if self._holder.get(p) == holder:
                c.bytes_local += self._size.get(p, 0)
                c.reads_local += 1
            else:
                c.bytes_moved += self._size.get(p, 0)
                c.reads_moved += 1
        if job.keep:
            self._size[job_id] = size
            self._holder[job_id] = holder
            c.held_bytes += size
            c.held_temps += 1
            c.peak_held_bytes = max(c.peak_held_bytes, c.held_bytes)
            c.peak_held_temps = max(c.peak_held_temps, c.held_temps)
        release: list[int] = []
        if job.call is not None:
            c.calls_done += 1
            self._call_done(job, release)
            if job.id != job.node:  # a partial result: the reduction is not finished
                return release
        else:
            for p in job.inputs:
                self._use(p, release)
        self._node_done(job.node, release)
        return release

    # ----------------------------------------------------------- helpers
    def _use(self, p: int, release: list[int]) -> None:
        self.uses[p] -= 1
        if self.uses[p] == 0:
            self._release(p, release)

    def _release(self, p: int, release: list[int]) -> None:
        release.append(p)
        self.counters.held_bytes -= self._size.pop(p, 0)
        self.counters.held_temps -= 1
        self._holder.pop(p, None)

    def _queue(self, j: int) -> None:
        self.state[j] = _QUEUED
        heapq.heappush(self._heap, (self.plan.order[j], j))

    def _largest_group(self, inputs: tuple[int, ...] | list[int], default: int) -> int:
        best, best_size = None, -1
        for p in inputs:
            s = self._size.get(p, 0)
            if p in self._size and s > best_size:
                best, best_size = p, s
        return self._group.get(best, default) if best is not None else default

    def _plain_job(self, j: int, ahead: bool, group: int | None = None) -> Job:
        inputs = self.plan.inputs[j]
        if group is None:
            group = self._largest_group(inputs, j)
        return Job(j, j, inputs, keep=self.uses[j] > 0, priority=0.0, group=group, ahead=ahead)

    def _submitted(self, job: Job) -> Job:
        self._jobs[job.id] = job
        self._group[job.id] = job.group
        if job.call is None or job.id == job.node:
            self.state[job.node] = _SUBMITTED
        if job.ahead:
            self.ahead_waiting += 1
        else:
            self._link_ahead(job.node)
        return job

    def _link_ahead(self, i: int) -> None:
        """Submit the single consumer of ``i`` right behind it, if that is all it waits for."""
        if not self.task_groups or self.state[i] != _SUBMITTED:
            return
        cons = self.plan.consumers[i]
        if len(cons) != 1 or self.uses[i] != 1:
            return
        j = cons[0]
        if j in self._reducers or self.state[j] not in (_NEW, _QUEUED) or self.undone[j] != 1:
            return
        self._ahead_of[i] = j
        self.state[j] = _SUBMITTED
        self._forced.append(self._plain_job(j, ahead=True, group=self._group.get(i, i)))

    def _node_done(self, j: int, release: list[int]) -> None:
        self.state[j] = _DONE
        self.counters.jobs_done += 1
        self._targets.discard(j)
        ahead = self._ahead_of.pop(j, None)
        if ahead is not None:  # its consumer now runs: let it pull the next link
            self.ahead_waiting -= 1
            self._link_ahead(ahead)
        for user in self.plan.consumers[j]:
            if user in self._reducers:
                continue
            self.undone[user] -= 1
            if self.state[user] == _NEW:
                if self.undone[user] == 0:
                    self._queue(user)
                elif self.undone[user] == 1:
                    for p in self.plan.inputs[user]:
                        if self.state[p] != _DONE:
                            self._link_ahead(p)
                            break
        for r, i in self.plan.item_users.get(j, ()):
            missing = self._item_missing[r]
            missing[i] -= 1
            if missing[i] == 0:
                self._start_calls(r, self._reducers[r].item_ready(i))

    # -------------------------------------------------------- reductions
    def _start_calls(self, r: int, calls: list[Call]) -> None:
        rp = self.plan.reductions[r]
        for call in calls:
            cid = r if call.final else self._next_id
            if not call.final:
                self._next_id += 1
            producers: dict[int, None] = {}
            for kind, idx in call.operands:
                if kind == "item":
                    for p in rp.item_inputs[idx]:
                        producers[p] = None
            operands = []
            for kind, idx in call.operands:
                if kind == "item":
                    operands.append(idx)
                else:
                    producers[self._call_job[(r, idx)]] = None
                    operands.append(-1 - list(producers).index(self._call_job[(r, idx)]))
            inputs = tuple(producers)
            keep = True if not call.final else self.uses[r] > 0
            group = self._largest_group(inputs, cid)
            self._forced.append(Job(cid, r, inputs, keep, CALL_PRIORITY, group, tuple(operands), call.id))
            self._call_job[(r, call.id)] = cid

    def _call_done(self, job: Job, release: list[int]) -> None:
        r = job.node
        rp = self.plan.reductions[r]
        for o, p in self._operand_sources(job):
            if o >= 0:
                for q in rp.item_inputs[o]:
                    self._use(q, release)
            else:
                self._release(p, release)  # a partial result has exactly one reader
        self._start_calls(r, self._reducers[r].call_done(job.call))

    def _operand_sources(self, job: Job):
        for o in job.operands or ():
            yield o, (job.inputs[-1 - o] if o < 0 else None)
