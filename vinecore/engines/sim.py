"""A simulated cluster: N workers in virtual time, to measure the manager at scale on one machine.

``SimEngine`` implements the engine protocol (:mod:`vinecore.engines._base`)
for any number of workers without starting any: pass it to
``vinecore.Manager(engine=SimEngine(10_000))`` or to ddr
(``DynamicDataReduction(..., engine=SimEngine(10_000))``), and the real ddr
driver and vinecore scheduler run against it.

Policy
------
Virtual time
    ``poll(timeout)`` never sleeps: it returns what is due and, if nothing is,
    moves the virtual clock to the next event (at most ``timeout`` ahead).
    With ``manager_time`` (default) the clock also moves by the CPU time the
    manager spends between engine calls, so a slow manager leaves workers idle
    exactly as it would on a real cluster: ``dispatch latency`` is the idle gap
    between a worker finishing and its next attempt arriving (``latency``
    seconds per message included), and ``utilization`` the busy share of the
    workers' time.
Durations
    Each attempt's wall time (and memory) is drawn from
    :class:`~vinecore.engines._sim_model.Durations` by the task's category,
    i.e. from a measured run's transactions log; inputs held on other workers
    add ``partial_bytes / bandwidth``.
Values
    Functions really run, in one in-process runtime shared by all the simulated
    workers (one library context), when their attempt completes in virtual
    time; so results are exact. Their cost is the engine's, not the manager's.
Losses
    Workers are lost at ``loss_rate`` per virtual second (Poisson), each
    replaced ``rejoin_after`` seconds later by a new one. Attempts running
    there are reported through ``WorkerRemoved``; temps held there are
    recomputed by :class:`~vinecore.engines._lineage.Lineage`, as on the dask
    engine, in virtual time.
Accounting
    ``stats()`` separates the manager's CPU (outside engine calls) from the
    engine's own (inside), and keeps latencies in a bounded histogram, so the
    simulator's memory does not grow with the number of chunks.
"""

from __future__ import annotations

import contextlib
import heapq
import io
import itertools
import os
import random
import shutil
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import dataclass, replace
from typing import Any, Hashable

from .. import _runtime, _serialize
from .._events import Event, Result, TaskFinished, WorkerJoined, WorkerRemoved
from .._runtime import Outcome, TaskSpec, WorkerRuntime
from ..exceptions import TempLostError
from ._dask_library import TaskStore
from ._lineage import Copy, Drop, Fail, Lineage, Recompute, Start, temp_inputs, temp_outputs
from ._sim_model import Durations, LogHistogram

__all__ = ["SimEngine", "Durations"]

_PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(slots=True)
class _Attempt:
    key: int
    wid: str
    spec: TaskSpec | None
    inputs: tuple[str, ...]
    rid: int = 0  # a recomputation (spec is its recipe)
    duration: float = 0.0
    memory: float = 0.0
    finish: float = 0.0




class SimEngine:
    """``workers`` simulated one-slot workers; see the module docstring for the model."""

    name = "sim"
    poll_waits = True

    def __init__(self, workers: int = 1000, *, durations: Durations | None = None, seed: int = 0,
                 loss_rate: float = 0.0, rejoin_after: float = 30.0, latency: float = 0.0005,
                 bandwidth: float = 1e9, temp_replicas: int = 2, manager_time: bool = True,
                 sample_every: int = 0, run_dir: str | None = None) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.n_workers = workers
        self.durations = durations or Durations.constant(1.0)
        self.rng = random.Random(seed)
        self.loss_rate = loss_rate
        self.rejoin_after = rejoin_after
        self.latency = latency
        self.bandwidth = bandwidth
        self.manager_time = manager_time
        self.sample_every = sample_every
        self.now = 0.0
        self._heap: list[tuple[float, int, tuple]] = []
        self._seq = itertools.count()
        self._keys = itertools.count(1)
        self._names = itertools.count()
        self._live: list[str] = []
        self._index: dict[str, int] = {}
        self._joined_at: dict[str, float] = {}
        self._free_at: dict[str, float] = {}
        self._busy: dict[str, int] = {}  # worker -> key of the attempt it runs (or waits to run)
        self._attempts: dict[int, _Attempt] = {}
        self._task_keys: dict[int, int] = {}
        self._lineage = Lineage(temp_replicas)
        self._fetches: dict[Hashable, Any] = {}
        self._pending: list[Event] = []
        self._own_dir = run_dir is None
        self._dir = tempfile.mkdtemp(prefix="vinecore-sim-") if run_dir is None else os.path.join(run_dir, "sim")
        self._store = TaskStore(os.path.join(self._dir, "store"))
        self._rt = WorkerRuntime("sim", self._store, isolated=False)
        # accounting
        self.manager_cpu = 0.0
        self.engine_cpu = 0.0
        self._mark: float | None = None
        self._t_in = 0.0
        self.inside = False  # within an engine call (for profilers: see manager_clock)
        self.dispatch_latency = LogHistogram()
        self.busy_time = 0.0
        self.alive_time = 0.0
        self.completed: Counter[str] = Counter()
        self.losses = 0
        self.recomputations = 0
        self.copies = 0
        self.rss_samples: list[dict[str, float]] = []
        self._closed = False

    # ------------------------------------------------------------ accounting
    def _enter(self) -> None:
        t = time.process_time()
        if self._mark is not None:
            spent = t - self._mark
            self.manager_cpu += spent
            if self.manager_time:
                self.now += spent
        self._t_in = t
        self.inside = True

    def _exit(self) -> None:
        t = time.process_time()
        self.engine_cpu += t - self._t_in
        self._mark = t
        self.inside = False

    def manager_clock(self) -> float:
        """Process CPU seconds minus the engine's own: stands still inside engine calls (a cProfile timer)."""
        if self.inside:
            return self._t_in - self.engine_cpu
        return time.process_time() - self.engine_cpu

    # --------------------------------------------------------------- engine
    def start(self) -> list[Event]:
        self._enter()
        try:
            for _ in range(self.n_workers):
                self._join()
            if self.loss_rate > 0:
                self._push(self.now + self.rng.expovariate(self.loss_rate), ("loss",))
            out, self._pending = self._pending, []
            return out
        finally:
            self._exit()

    def install_library(self, name: str, payload: bytes) -> None:
        self._enter()
        try:
            self._rt.install_library(name, payload)
        finally:
            self._exit()

    def remove_library(self, name: str) -> None:
        self._enter()
        try:
            self._rt.uninstall_library(name)
        finally:
            self._exit()

    def execute(self, worker_id: str, spec: TaskSpec) -> None:
        self._enter()
        try:
            if worker_id not in self._index:
                self._report_now(spec.task_id, worker_id, Result.WORKER_LOST, f"simulated worker {worker_id} is gone")
                return
            arrive = self.now + self.latency
            self.dispatch_latency.add(max(0.0, arrive - self._free_at.get(worker_id, arrive)))
            key = next(self._keys)
            att = _Attempt(key, worker_id, spec, temp_inputs(spec))
            self._attempts[key] = att
            self._task_keys[spec.task_id] = key
            self._busy[worker_id] = key
            if att.inputs:
                self._act(self._lineage.consume(key, att.inputs))
            else:
                self._begin(att, {})
        finally:
            self._exit()

    def kill(self, task_id: int, worker_id: str) -> None:
        self._enter()
        try:
            key = self._task_keys.pop(task_id, None)
            att = self._attempts.pop(key, None) if key is not None else None
            if att is not None:
                self._busy.pop(att.wid, None)
                self._free_at[att.wid] = self.now
                self._act(self._lineage.consumed(key))
            outcome = Outcome(task_id, Result.CANCELLED, None, "", 0, 0, 0, 0, worker_id)
            self._pending.append(TaskFinished(task_id, worker_id, Result.CANCELLED, outcome))
        finally:
            self._exit()

    def poll(self, timeout: float | None) -> list[Event]:
        self._enter()
        try:
            self._advance(self.now)
            if not self._pending and timeout != 0:
                horizon = float("inf") if timeout is None else self.now + timeout
                while not self._pending and self._heap and self._heap[0][0] <= horizon:
                    self.now = max(self.now, self._heap[0][0])
                    self._advance(self.now)
                if not self._pending and timeout is not None:
                    self.now = max(self.now, horizon)
            out, self._pending = self._pending, []
            return out
        finally:
            self._exit()

    def fetch(self, cache_name: str) -> bytes:
        self._enter()
        try:
            key = ("fetch", next(self._keys))
            self._act(self._lineage.consume(key, (cache_name,)))
            try:
                while key not in self._fetches:
                    if not self._heap:
                        raise KeyError(f"{cache_name} is not held on any simulated worker")
                    self.now = max(self.now, self._heap[0][0])
                    self._advance(self.now)
                got = self._fetches.pop(key)
                if isinstance(got, str):
                    raise KeyError(got)
                return self._store.get(cache_name)
            finally:
                self._fetches.pop(key, None)
                self._act(self._lineage.consumed(key))
        finally:
            self._exit()

    def release(self, cache_name: str) -> None:
        self._enter()
        try:
            self._act(self._lineage.release(cache_name))
        finally:
            self._exit()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._own_dir:
            shutil.rmtree(self._dir, ignore_errors=True)

    # ----------------------------------------------------------- internals
    def _push(self, when: float, event: tuple) -> None:
        heapq.heappush(self._heap, (when, next(self._seq), event))

    def _advance(self, until: float) -> None:
        heap = self._heap
        while heap and heap[0][0] <= until:
            _, _, ev = heapq.heappop(heap)
            kind = ev[0]
            if kind == "done":
                self._done(ev[1])
            elif kind == "copied":
                name, dst = ev[1], ev[2]
                self._act(self._lineage.copied(name, dst) if dst in self._index else self._lineage.copy_failed(name))
            elif kind == "loss":
                self._lose()
                self._push(self.now + self.rng.expovariate(self.loss_rate), ("loss",))
            elif kind == "join":
                self._join()

    def _join(self) -> None:
        wid = f"sim-{next(self._names)}"
        self._index[wid] = len(self._live)
        self._live.append(wid)
        self._joined_at[wid] = self.now
        self._free_at[wid] = self.now
        self._pending.append(WorkerJoined(wid, cores=1, slots=1))
        self._act(self._lineage.joined(wid))

    def _lose(self) -> None:
        if not self._live:
            return
        wid = self._live[int(self.rng.random() * len(self._live))]
        i = self._index.pop(wid)
        last = self._live.pop()
        if last != wid:
            self._live[i] = last
            self._index[last] = i
        self.losses += 1
        self.alive_time += self.now - self._joined_at.pop(wid)
        self._free_at.pop(wid, None)
        self._pending.append(WorkerRemoved(wid, f"simulated loss of {wid}"))
        acts: list = []
        key = self._busy.pop(wid, None)
        if key is not None and self._attempts.pop(key, None) is not None:
            acts += self._lineage.consumed(key)
        for k, att in list(self._attempts.items()):
            if att.rid and att.wid == wid:
                del self._attempts[k]
                acts += self._lineage.recompute_failed(att.rid, f"{wid} was lost", worker_lost=True)
        acts += self._lineage.worker_lost(wid)
        self._act(acts)
        self._push(self.now + self.rejoin_after, ("join",))

    def _begin(self, att: _Attempt, inputs: dict[str, tuple[str, ...]]) -> None:
        category = att.spec.category if att.spec is not None else "default"
        att.duration, att.memory = self.durations.draw(category, self.rng)
        remote = sum(1 for holders in inputs.values() if att.wid not in holders)
        transfer = remote * self.durations.partial_bytes / self.bandwidth
        att.finish = self.now + self.latency + transfer + att.duration
        self.busy_time += transfer + att.duration
        self._push(att.finish + self.latency, ("done", att.key))

    def _done(self, key: int) -> None:
        att = self._attempts.pop(key, None)
        if att is None:
            return  # killed, or lost with its worker
        spec = att.spec
        outcome = self._run(spec, att)
        if att.rid:  # a recomputation
            self.recomputations += 1
            if outcome.result is Result.SUCCESS:
                self._act(self._lineage.recomputed(att.rid, att.wid))
            else:
                self._act(self._lineage.recompute_failed(att.rid, f"it raised again: {outcome.result.value}",
                                                         worker_lost=False))
            return
        self._task_keys.pop(spec.task_id, None)
        if self._busy.get(att.wid) == key:
            del self._busy[att.wid]
        self._free_at[att.wid] = att.finish
        self.completed[spec.category] += 1
        held = None
        if outcome.result is Result.SUCCESS and temp_outputs(spec):
            held = att.wid
            self._act(self._lineage.produced(temp_outputs(spec), att.wid, spec, att.inputs))
        if att.inputs:
            self._act(self._lineage.consumed(key))
        self._pending.append(TaskFinished(spec.task_id, att.wid, outcome.result, outcome, held_on=held))
        if self.sample_every and spec.category == "processing" and \
                self.completed["processing"] % self.sample_every == 0:
            self._sample()

    def _run(self, spec: TaskSpec, att: _Attempt) -> Outcome:
        """Really run ``spec`` in the shared runtime; wall time and memory are the drawn ones."""
        if spec.inputs or spec.outputs:  # sandbox files: the full runtime (limits are simulated, not enforced)
            out = self._rt.execute(replace(spec, memory=None, time_max=None))
            return replace(out, wall_time=att.duration, memory=att.memory, worker_id=att.wid)
        buf = io.StringIO()
        result, output = Result.SUCCESS, None
        prev = _runtime._current, _runtime._current_library
        _runtime._current, _runtime._current_library = self._rt, spec.library
        try:
            with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
                try:
                    fn, args, kwargs = self._rt._load(spec)
                    data = _serialize.dumps(fn(*args, **kwargs))
                    if spec.output_temp:
                        self._store.put(spec.output_temp, data)
                    else:
                        output = data
                except BaseException as exc:  # noqa: BLE001 - the task's failure is its result
                    result, output = Result.EXCEPTION, _serialize.exception_payload(exc)
                    traceback.print_exc()
        finally:
            _runtime._current, _runtime._current_library = prev
        return Outcome(spec.task_id, result, output, buf.getvalue(), att.duration, 0.0, att.memory, att.memory,
                       att.wid)

    def _act(self, actions: list) -> None:
        for a in actions:
            if isinstance(a, Start):
                if isinstance(a.key, tuple):
                    self._fetches[a.key] = a.inputs
                else:
                    att = self._attempts.get(a.key)
                    if att is not None:
                        self._begin(att, a.inputs)
            elif isinstance(a, Fail):
                if isinstance(a.key, tuple):
                    self._fetches[a.key] = a.why
                    continue
                att = self._attempts.pop(a.key, None)
                if att is not None:
                    self._task_keys.pop(att.spec.task_id, None)
                    self._busy.pop(att.wid, None)
                    self._free_at[att.wid] = self.now
                    self._report_now(att.spec.task_id, att.wid, Result.EXCEPTION, a.why, lost=True)
            elif isinstance(a, Recompute):
                wid = self._live[int(self.rng.random() * len(self._live))] if self._live else None
                if wid is None:
                    self._act(self._lineage.recompute_failed(a.rid, "no simulated worker left", worker_lost=True))
                    continue
                att = _Attempt(next(self._keys), wid, a.recipe, tuple(a.inputs), rid=a.rid)
                self._attempts[att.key] = att
                self._begin(att, a.inputs)
            elif isinstance(a, Copy):
                dst = self._copy_target(a.holders)
                if dst is None:
                    self._act(self._lineage.copy_failed(a.name))
                else:
                    self.copies += 1
                    self._push(self.now + 2 * self.latency + self.durations.partial_bytes / self.bandwidth,
                               ("copied", a.name, dst))
            elif isinstance(a, Drop):
                if not self._lineage.holders(a.name):
                    self._store.delete(a.name)

    def _copy_target(self, holders: tuple[str, ...]) -> str | None:
        for _ in range(8):
            wid = self._live[int(self.rng.random() * len(self._live))] if self._live else None
            if wid is not None and wid not in holders:
                return wid
        return next((w for w in self._live if w not in holders), None)

    def _report_now(self, task_id: int, worker_id: str, result: Result, why: str, lost: bool = False) -> None:
        exc = TempLostError(why) if lost else RuntimeError(why)
        outcome = Outcome(task_id, result, _serialize.exception_payload(exc), "", 0, 0, 0, 0, worker_id)
        self._pending.append(TaskFinished(task_id, worker_id, result, outcome))

    def _sample(self) -> None:
        with open("/proc/self/statm") as f:
            rss = int(f.read().split()[1]) * _PAGE / 2**20
        self.rss_samples.append({"chunks_done": self.completed["processing"], "rss_mb": round(rss, 1),
                                 "manager_cpu_s": round(self.manager_cpu, 3), "virtual_s": round(self.now, 3),
                                 **{f"lineage_{k}": v for k, v in self._lineage.sizes().items()}})

    # --------------------------------------------------------------- report
    def stats(self) -> dict[str, Any]:
        """What the simulation measured so far (virtual seconds, manager and engine CPU seconds)."""
        alive = self.alive_time + sum(self.now - t for t in self._joined_at.values())
        return {"workers": self.n_workers, "virtual_seconds": round(self.now, 3),
                "manager_cpu_seconds": round(self.manager_cpu, 3), "engine_cpu_seconds": round(self.engine_cpu, 3),
                "completed": dict(self.completed), "losses": self.losses, "recomputations": self.recomputations,
                "copies": self.copies, "utilization": round(self.busy_time / alive, 4) if alive else None,
                "dispatch_latency_ms": self.dispatch_latency.summary(),
                "lineage": self._lineage.sizes(), "rss_samples": list(self.rss_samples)}
