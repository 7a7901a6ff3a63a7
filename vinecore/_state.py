"""The scheduling core: a pure state machine.

``Scheduler.handle(*events) -> list[Action]`` is the only way state changes.
It has no threads, sockets, clocks or randomness, so every policy below is
tested by feeding events (``tests/vinecore/test_state.py``).

Policies
--------
Readiness
    A task is WAITING while one of its inputs is the output of a task that has
    not succeeded yet, READY once all are available. Inputs that no submitted
    task produces (declared files, buffers, urls) are always available. If the
    producer of an input ends without success, its consumers complete with
    ``exception`` ("input missing") without running.
Selection
    Highest priority first; equal priorities in submission order (FIFO).
    Among the tasks of the top priority, a worker prefers one whose locality
    key it served recently (``Task.set_locality``: e.g. the ROOT file a worker
    already has open), then one whose key a worker of the same node served
    recently (``WorkerJoined.node``: the file is in that node's cache). A task
    that becomes ready while the worker that last ran its key is free goes to
    that worker (a consumer queued behind its producer follows it, instead of
    the round robin's next free worker).
Packing
    A worker offers ``cores`` and ``slots``. A task without ``cores`` takes the
    whole worker (TaskVine's rule). A task that fits no worker *right now*
    stays READY, in its place, until one frees up; a worker looks past at most
    ``_SCAN_LIMIT`` such tasks (in priority order) for one it can run.
Unsatisfiable tasks
    A task that no present worker could ever fit, even idle (more cores or
    memory than the largest worker has), completes at once as
    ``unsatisfiable`` with the reason, instead of waiting for ever. This is
    judged when it is submitted and again whenever the largest worker leaves.
    With no worker at all (an engine still starting, an empty cluster) tasks
    wait: the first worker to join decides.
Retries
    ``exception`` and ``worker lost`` are retried while
    ``attempts <= retries``; ``resource exhaustion`` and ``max wall time`` are
    reported to the caller at once (the caller decides: split, enlarge, give up).
Cancellation
    A WAITING or READY task completes as ``cancelled`` at once. A RUNNING task
    completes as ``cancelled`` and a ``Kill`` is issued; its worker slot stays
    occupied until the engine reports the attempt finished.
Hunger
    ``hungry()`` asks for enough tasks to keep ``factor`` times the slots busy,
    so workers never wait for a round trip to the manager.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict, deque
from dataclasses import dataclass

from ._events import (
    Action,
    CancelRequested,
    Complete,
    Dispatch,
    Event,
    FileForgotten,
    Kill,
    Result,
    TaskFinished,
    TaskState,
    TaskSubmitted,
    Transition,
    WorkerJoined,
    WorkerRemoved,
)
from ._frozen import fast_init

__all__ = ["Scheduler", "SchedulerCounts"]

# enum members as module constants: looking a member up on its class goes through the enum's metaclass
_WAITING, _READY, _RUNNING, _DONE = TaskState.WAITING, TaskState.READY, TaskState.RUNNING, TaskState.DONE
_SUCCESS = Result.SUCCESS
_VALUE = {r: r.value for r in Result}  # without the enum's property lookup
_RETRYABLE = frozenset({Result.EXCEPTION, Result.WORKER_LOST})
_NOTHING: frozenset = frozenset()  # the missing inputs of most tasks (no set per task: fewer objects to collect)
_SCAN_LIMIT = 64  # ready entries examined for one worker before giving up
_RECENT_KEYS = 16  # locality keys remembered per worker
_LAST_KEYS = 4096  # locality keys whose last worker is remembered
_NODE_KEYS = 256  # locality keys remembered per node


@fast_init
@dataclass(frozen=True, slots=True)
class SchedulerCounts:
    waiting: int
    ready: int
    running: int
    done: int
    failed: int
    workers: int
    cores: int
    slots: int


class _Task:
    __slots__ = (
        "id", "state", "priority", "cores", "memory", "retries", "attempts",
        "inputs", "outputs", "locality", "missing", "worker", "token", "cancelled",
        "alloc_cores",
    )

    def __init__(self, ev: TaskSubmitted) -> None:
        self.id = ev.task_id
        self.state: TaskState | None = None
        self.priority = ev.priority
        self.cores = ev.cores
        self.memory = ev.memory
        self.retries = ev.retries
        self.attempts = 0
        self.inputs = ev.inputs
        self.outputs = ev.outputs
        self.locality = ev.locality
        self.missing: set[str] | frozenset = _NOTHING  # a set of its own once an input is missing
        self.worker: str | None = None
        self.token = 0
        self.cancelled = False
        self.alloc_cores = 0


class _Worker:
    __slots__ = ("id", "cores", "memory", "slots", "used_cores", "used_memory", "running", "recent", "node")

    def __init__(self, ev: WorkerJoined) -> None:
        self.id = ev.worker_id
        self.cores = max(1, ev.cores)
        self.memory = ev.memory
        self.slots = max(1, ev.slots)
        self.used_cores = 0
        self.used_memory = 0
        self.running: set[int] = set()
        self.recent: OrderedDict[str, None] = OrderedDict()
        self.node = ev.node

    def has_room(self) -> bool:
        return len(self.running) < self.slots and self.used_cores < self.cores

    def could_fit(self, t: _Task) -> bool:
        """Could ``t`` run here if the worker were idle?"""
        if t.cores and t.cores > self.cores:
            return False
        return not (t.memory and self.memory and t.memory > self.memory)

    def fits(self, t: _Task) -> bool:
        need = t.cores or self.cores
        if need > self.cores - self.used_cores:
            return False
        if t.memory and self.memory and t.memory > self.memory - self.used_memory:
            return False
        return True


class Scheduler:
    """Pure scheduling state: feed it events, carry out the actions it returns."""

    def __init__(self, *, hungry_factor: int = 2, hungry_minimum: int = 2) -> None:
        self.hungry_factor = hungry_factor
        self.hungry_minimum = hungry_minimum
        self.tasks: dict[int, _Task] = {}
        self.workers: dict[str, _Worker] = {}
        # workers with a free slot, round-robin order: taken from the front, put back at the end. An
        # OrderedDict finds its first key at once; a dict scans past every key deleted since it last
        # resized (thousands with 10,000 workers: microseconds per dispatch)
        self._free: OrderedDict[str, None] = OrderedDict()
        # ready tasks: one FIFO queue of (token, id) per priority, and a heap of those priorities (negated).
        # Within a priority, submission order is dispatch order, so a deque keeps it; a run has few
        # priorities (ddr: three per dataset), so taking a task costs a popleft, not a heap operation
        # comparing tuples (measured: 0.2 against 1 us per task at 1,000 ready tasks)
        self._levels: list[float] = []  # -priority of every queue in _queues (stale ones included)
        self._queues: dict[float, deque[tuple[int, int]]] = {}  # -priority -> (token, id), oldest first
        self._by_key: dict[str, deque[tuple[int, int]]] = {}  # locality -> (id, token)
        self._node_recent: dict[str, OrderedDict[str, None]] = {}  # node -> keys its workers served
        self._producer: dict[str, int] = {}  # cache name -> producing task
        self._available: set[str] = set()
        self._failed_files: dict[str, str] = {}  # cache name -> why it will never exist
        self._waiters: dict[str, list[int]] = {}
        self._n = {s: 0 for s in TaskState}
        self._n_failed = 0
        self._cores = self._slots = 0  # totals over the workers (kept up to date: O(1) queries at any size)
        self._last_worker: OrderedDict[str, str] = OrderedDict()  # locality key -> worker that last ran it
        self._affine: list[tuple[int, int]] = []  # (id, token) just ready, whose key has a last worker
        self._fitting: set[tuple] = set()  # (cores, memory) that some present worker could run

    # ------------------------------------------------------------ queries
    def counts(self) -> SchedulerCounts:
        return SchedulerCounts(
            waiting=self._n[_WAITING],
            ready=self._n[_READY],
            running=self._n[_RUNNING],
            done=self._n[_DONE],
            failed=self._n_failed,
            workers=len(self.workers),
            cores=self._cores,
            slots=self._slots,
        )

    def in_flight(self) -> int:
        """Tasks submitted and not done (waiting, ready or running)."""
        n = self._n
        return n[_WAITING] + n[_READY] + n[_RUNNING]

    def hungry(self) -> int:
        want = max(self.hungry_minimum, self.hungry_factor * self._slots)
        return max(0, want - self.in_flight())

    def state_of(self, task_id: int) -> TaskState | None:
        """The task's state; None once it is done and forgotten (or was never submitted)."""
        t = self.tasks.get(task_id)
        return t.state if t else None

    # ------------------------------------------------------------- events
    def handle(self, *events: Event) -> list[Action]:
        out: list[Action] = []
        if len(events) == 1 and type(events[0]) is FileForgotten:  # one per temp released: nothing to schedule
            self._on_file_forgotten(events[0])
            return out
        for ev in events:
            if isinstance(ev, TaskFinished):
                self._on_finished(ev, out)
            elif isinstance(ev, TaskSubmitted):
                self._on_submitted(ev, out)
            elif isinstance(ev, WorkerJoined):
                self._on_worker_joined(ev, out)
            elif isinstance(ev, WorkerRemoved):
                self._on_worker_removed(ev, out)
            elif isinstance(ev, CancelRequested):
                self._on_cancel(ev, out)
            elif isinstance(ev, FileForgotten):
                self._on_file_forgotten(ev)
            else:
                raise TypeError(f"Scheduler cannot handle {type(ev).__name__}")
        self._schedule(out)
        return out

    def _on_submitted(self, ev: TaskSubmitted, out: list[Action]) -> None:
        if ev.task_id in self.tasks:
            raise ValueError(f"task {ev.task_id} was submitted twice")
        t = _Task(ev)
        self.tasks[t.id] = t
        for name in t.outputs:
            self._producer[name] = t.id
            self._available.discard(name)
            self._failed_files.pop(name, None)
        missing_reason = None
        temps = set(ev.temps) if ev.temps else ()
        for name in t.inputs:
            if name in self._failed_files:
                missing_reason = f"input {name} will never exist: {self._failed_files[name]}"
            elif (name in temps or name in self._producer) and name not in self._available:
                if not t.missing:
                    t.missing = set()
                t.missing.add(name)
                self._waiters.setdefault(name, []).append(t.id)
        self._set_state(t, _WAITING, out)
        unfit = self._unsatisfiable(t)
        if unfit:
            self._finish(t, Result.UNSATISFIABLE, out, reason=unfit)
        elif missing_reason:
            self._finish(t, Result.EXCEPTION, out, reason=missing_reason)
        elif not t.missing:
            self._make_ready(t, out)

    def _on_worker_joined(self, ev: WorkerJoined, out: list[Action]) -> None:
        if ev.worker_id in self.workers:
            return
        first = not self.workers
        w = _Worker(ev)
        self.workers[w.id] = w
        self._free[w.id] = None
        self._cores += w.cores
        self._slots += w.slots
        if first:
            self._fail_unsatisfiable(out)

    def _on_worker_removed(self, ev: WorkerRemoved, out: list[Action]) -> None:
        w = self.workers.pop(ev.worker_id, None)
        if w is None:
            return
        self._free.pop(w.id, None)
        self._fitting.clear()
        self._cores -= w.cores
        self._slots -= w.slots
        for tid in sorted(w.running):
            t = self.tasks[tid]
            t.worker = None
            if t.state is _RUNNING:
                self._attempt_ended(t, Result.WORKER_LOST, None, w.id, out, ev.reason)
        if self.workers and (w.cores >= max(x.cores for x in self.workers.values())
                             or w.memory is not None):
            self._fail_unsatisfiable(out)  # the largest worker may have gone

    def _on_cancel(self, ev: CancelRequested, out: list[Action]) -> None:
        t = self.tasks.get(ev.task_id)
        if t is None or t.state is _DONE:
            return
        t.cancelled = True
        if t.state is _RUNNING and t.worker is not None:
            out.append(Kill(t.id, t.worker))
        self._finish(t, Result.CANCELLED, out, reason="cancelled by the manager")

    def _on_file_forgotten(self, ev: FileForgotten) -> None:
        self._available.discard(ev.cache_name)
        self._failed_files.pop(ev.cache_name, None)
        if ev.cache_name not in self._waiters:
            self._producer.pop(ev.cache_name, None)

    def _on_finished(self, ev: TaskFinished, out: list[Action]) -> None:
        t = self.tasks.get(ev.task_id)
        w = self.workers.get(ev.worker_id)
        if t is None or t.worker != ev.worker_id:
            return  # a late report for an attempt already written off
        self._release_slot(t, w)
        if t.state is not _RUNNING:
            del self.tasks[t.id]  # cancelled while running: only the slot needed freeing
            return
        if ev.result is _SUCCESS:
            self._finish(t, _SUCCESS, out, report=ev.report, worker=ev.worker_id)
        else:
            self._attempt_ended(t, ev.result, ev.report, ev.worker_id, out, "")

    # ------------------------------------------------------------ helpers
    def _unsatisfiable(self, t: _Task) -> str:
        """Why no present worker could ever run ``t`` ("" if one could, or if there are no workers yet)."""
        if not self.workers or (not t.cores and not t.memory):
            return ""
        shape = (t.cores, t.memory)
        if shape in self._fitting:  # known to fit (forgotten when a worker leaves)
            return ""
        if any(w.could_fit(t) for w in self.workers.values()):
            self._fitting.add(shape)
            return ""
        cores = max(w.cores for w in self.workers.values())
        mems = [w.memory for w in self.workers.values() if w.memory]
        need = f"{t.cores or 'all'} core(s)" + (f" and {t.memory} MB" if t.memory else "")
        have = f"{cores} core(s)" + (f" and {max(mems)} MB" if mems else "")
        return (f"it needs {need} but the largest of the {len(self.workers)} worker(s) offers {have}: "
                "no worker can ever run it. Ask for fewer cores/less memory per task, or start larger workers")

    def _fail_unsatisfiable(self, out: list[Action]) -> None:
        for t in list(self.tasks.values()):
            if t.state in (_WAITING, _READY):
                why = self._unsatisfiable(t)
                if why:
                    self._finish(t, Result.UNSATISFIABLE, out, reason=why)
    def _attempt_ended(self, t: _Task, result: Result, report, worker: str | None,
                       out: list[Action], why: str) -> None:
        if result in _RETRYABLE and t.attempts <= t.retries:
            out.append(Transition(t.id, t.state, _READY, worker,
                                  f"retry {t.attempts}/{t.retries} after {result.value}"
                                  + (f" ({why})" if why else "")))
            self._n[t.state] -= 1
            t.state = None
            self._make_ready(t, out, log=False)
        else:
            self._finish(t, result, out, report=report, worker=worker, reason=why)

    def _release_slot(self, t: _Task, w: _Worker | None) -> None:
        if w is not None and t.id in w.running:
            w.running.discard(t.id)
            w.used_cores -= t.alloc_cores
            w.used_memory -= t.memory or 0
            self._free[w.id] = None
        t.worker = None
        t.alloc_cores = 0

    def _set_state(self, t: _Task, new: TaskState, out: list[Action], worker=None, detail="") -> None:
        old = t.state
        if old is not None:
            self._n[old] -= 1
        out.append(Transition(t.id, old, new, worker, detail))
        t.state = new
        self._n[new] += 1

    def _make_ready(self, t: _Task, out: list[Action], log: bool = True) -> None:
        if log:
            self._set_state(t, _READY, out)
        else:
            t.state = _READY
            self._n[_READY] += 1
        t.token += 1
        negp = -t.priority
        q = self._queues.get(negp)
        if q is None:
            q = self._queues[negp] = deque()
            heapq.heappush(self._levels, negp)
        q.append((t.token, t.id))
        if t.locality is not None:
            self._by_key.setdefault(t.locality, deque()).append((t.id, t.token))
            if t.locality in self._last_worker:
                self._affine.append((t.id, t.token))

    def _finish(self, t: _Task, result: Result, out: list[Action], *, report=None,
                worker: str | None = None, reason: str = "") -> None:
        self._set_state(t, _DONE, out, worker, _VALUE[result] if not reason else f"{_VALUE[result]}: {reason}")
        if result is not _SUCCESS:
            self._n_failed += 1
        out.append(Complete(t.id, result, report, worker, t.attempts, reason))
        if t.worker is None:  # done tasks are forgotten (memory stays flat however many ran) unless
            del self.tasks[t.id]  # a cancelled attempt still holds its slot (see _on_finished)
        for name in t.outputs:
            if self._producer.get(name) != t.id:
                continue
            if result is _SUCCESS:
                self._available.add(name)
                for wid in self._waiters.pop(name, ()):
                    waiter = self.tasks.get(wid)  # None: it ended (cancelled) and was forgotten
                    if waiter is None:
                        continue
                    waiter.missing.discard(name)
                    if waiter.state is _WAITING and not waiter.missing:
                        self._make_ready(waiter, out)
            else:
                why = f"its producer, task {t.id}, ended with {result.value}"
                self._failed_files[name] = why
                for wid in self._waiters.pop(name, ()):
                    waiter = self.tasks.get(wid)
                    if waiter is not None and waiter.state is _WAITING:
                        self._finish(waiter, Result.EXCEPTION, out, reason=f"input {name} missing: {why}")

    def _valid(self, tid: int, token: int) -> bool:
        t = self.tasks.get(tid)
        return t is not None and t.state is _READY and t.token == token

    def _top(self):
        """The ready task to run next (highest priority, oldest), dropping stale entries on the way."""
        levels, queues, tasks = self._levels, self._queues, self.tasks
        while levels:
            q = queues[levels[0]]
            while q:
                token, tid = q[0]
                t = tasks.get(tid)
                if t is not None and t.state is _READY and t.token == token:
                    return t
                q.popleft()
            del queues[heapq.heappop(levels)]
        return None

    def _pick(self, w: _Worker) -> _Task | None:
        node_keys = self._node_recent.get(w.node) if w.node is not None else None
        if w.recent or node_keys:  # locality keys to weigh (against the top's priority)
            top = self._top()
            if top is None:
                return None
            for keys in (w.recent, node_keys or ()):
                for key in reversed(keys):
                    dq = self._by_key.get(key)
                    while dq and not self._valid(*dq[0]):
                        dq.popleft()
                    if dq:
                        cand = self.tasks[dq[0][0]]
                        if cand.priority == top.priority and w.fits(cand):
                            dq.popleft()
                            return cand
                    elif dq is not None:
                        del self._by_key[key]
        if self._top() is None:  # also: the first queue now starts with a valid entry
            return None
        levels, queues, tasks = self._levels, self._queues, self.tasks
        q = queues[levels[0]]
        t = tasks[q[0][1]]
        if w.fits(t):  # the common case: the next task fits
            q.popleft()
            return t
        # look further, in priority order, at up to _SCAN_LIMIT tasks that do not fit (put back in place)
        skipped = 0
        for negp in sorted(levels):  # the heap's order is not sorted order beyond its first entry
            q = queues[negp]
            passed: list[tuple[int, int]] = []
            found = None
            while q and skipped < _SCAN_LIMIT:
                entry = q.popleft()
                t = tasks.get(entry[1])
                if t is None or t.state is not _READY or t.token != entry[0]:  # stale (see _valid)
                    continue
                if w.fits(t):
                    found = t
                    break
                passed.append(entry)
                skipped += 1
            q.extendleft(reversed(passed))
            if found is not None or skipped >= _SCAN_LIMIT:
                return found
        return None

    def _schedule(self, out: list[Action]) -> None:
        if self._affine:
            self._schedule_affine(out)
        n, free = self._n, self._free
        if not n[_READY] or not free:
            return
        for _ in range(len(free)):  # each worker free now once, in order (without copying the free list)
            wid = next(iter(free))
            w = self.workers[wid]
            while n[_READY] and w.has_room():
                t = self._pick(w)
                if t is None:
                    break
                self._dispatch(t, w, out)
            del free[wid]
            if w.has_room():
                free[wid] = None  # round robin: move to the back
            if not n[_READY]:
                break

    def _schedule_affine(self, out: list[Action]) -> None:
        """Tasks just ready go to the free worker that last ran their key (within the top priority)."""
        affine, self._affine = self._affine, []
        for tid, token in affine:
            if not self._valid(tid, token):
                continue
            t = self.tasks[tid]
            w = self.workers.get(self._last_worker.get(t.locality, ""))
            if w is None or w.id not in self._free or not w.has_room() or not w.fits(t):
                continue
            top = self._top()
            if top is not None and top.priority != t.priority:
                continue
            self._dispatch(t, w, out)
            if not w.has_room():
                self._free.pop(w.id, None)

    def _dispatch(self, t: _Task, w: _Worker, out: list[Action]) -> None:
        t.attempts += 1
        t.worker = w.id
        t.alloc_cores = t.cores or w.cores
        w.used_cores += t.alloc_cores
        w.used_memory += t.memory or 0
        w.running.add(t.id)
        if t.locality is not None:
            w.recent.pop(t.locality, None)
            w.recent[t.locality] = None
            if len(w.recent) > _RECENT_KEYS:
                w.recent.popitem(last=False)
            self._last_worker.pop(t.locality, None)
            self._last_worker[t.locality] = w.id
            if len(self._last_worker) > _LAST_KEYS:
                self._last_worker.popitem(last=False)
            if w.node is not None:
                keys = self._node_recent.setdefault(w.node, OrderedDict())
                keys.pop(t.locality, None)
                keys[t.locality] = None
                if len(keys) > _NODE_KEYS:
                    keys.popitem(last=False)
        self._set_state(t, _RUNNING, out, w.id, f"attempt {t.attempts}")
        out.append(Dispatch(t.id, w.id, t.attempts, t.alloc_cores))
