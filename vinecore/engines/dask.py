"""The dask engine: vinecore on an existing dask.distributed cluster.

vinecore brings no transport of its own to clusters: deployment (dask-jobqueue
on HTCondor or SLURM, dask-gateway), membership, TLS and every byte on the wire
are dask's. What dask lacks is per-task resource enforcement (a task that
outgrows memory gets its whole worker restarted by the nanny, with everything
held there) and cheap dispatch of many small calls to warm contexts. So:

How the TaskVine model lands on dask
    * agent: one per dask worker and run (:mod:`vinecore.engines._dask_pool`),
      installed by a ``WorkerPlugin``. The manager keeps one dask comm open to
      each agent and sends it batches of attempts; the agent answers with
      batches of outcomes. An attempt costs no dask task and never touches the
      scheduler.
    * worker: each library process slot of a dask worker offers ``queue_depth``
      vinecore workers, ``<address>/<slot>.<position>``, so the state machine
      keeps that many attempts queued per process and a process starts its next
      attempt without waiting for the manager. A dask worker with ``nthreads=n``
      has ``n`` slots of one core (``processes_per_worker`` changes that);
      declared dask resources ``cores`` / ``memory`` (MB) set their sizes.
    * temps: kept in the producing agent's memory (spilled past ``spill_mb``),
      fetched worker to worker over dask comms by the agent of a consumer while
      the consumer waits in its queue. The manager fetches only final values.
    * loss: :class:`~vinecore.engines._lineage.Lineage` decides. Attempts on a
      lost worker are reported (the state machine retries them); temps it held
      are recomputed from their producers' specs on other workers, invisibly
      to the manager. Temps made from other temps are copied to a second worker
      (``temp_replicas``) so lineage stays as small as the live temps.
    * membership: the scheduler's ``add-worker`` / ``remove-worker`` events; a
      comm that breaks also ends its worker for this run. An agent reports its
      host: the ``node`` of its workers, whose file cache tasks prefer.
    * cancel: the agent kills the library process running the attempt (a queued
      one is dropped) and starts a replacement.
    * lifetime: an agent whose manager's comm closes stops its library processes
      at once; a silent one after 10 s.
    * adaptive scaling: to dask a worker running only vinecore attempts looks
      idle; one long-running dask task per worker in use
      (:func:`~vinecore.engines._dask_plugin.hold`) keeps ``Cluster.adapt()``
      from retiring it.
"""

from __future__ import annotations

import itertools
import os
import pickle
import queue
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Hashable

from .._events import Event, Result, TaskFinished, WorkerJoined, WorkerRemoved
from .._runtime import Outcome, TaskSpec
from .. import _serialize
from ..exceptions import EngineError, TempLostError
from ._dask_pool import wrap
from ._lineage import Copy, Drop, Fail, Lineage, Recompute, Start, temp_inputs, temp_outputs

__all__ = ["DaskEngine"]

_MISSING_RETRY = 0.5  # seconds before an attempt whose input was unreachable asks again
_MISSING_TRIES = 40
_FETCH_TIMEOUT = 300.0


@dataclass(frozen=True, slots=True)
class _Recipe:
    blob: bytes
    tid: int
    memory: int | None
    time_max: float | None


@dataclass(slots=True)
class _Run:
    kind: str  # "task" | "recompute"
    key: int
    addr: str
    proc: int
    wid: str = ""
    spec: TaskSpec | None = None
    recipe: _Recipe | None = None
    rid: int = 0
    names: tuple[str, ...] = ()  # input temps
    tries: int = 0


@dataclass(slots=True)
class _Worker:
    addr: str
    gen: int
    up: bool = False
    ids: list[str] = field(default_factory=list)
    load: list[int] = field(default_factory=list)  # attempts sent and not answered, per library process


class DaskEngine:
    """Run vinecore tasks on a dask.distributed cluster.

    Parameters
    ----------
    workers:
        With a cluster started here (no ``client``/``scheduler``): how many
        worker processes the ``LocalCluster`` gets (default 2). With an existing
        cluster: use at most this many of its dask workers, waiting up to
        ``wait_for_workers`` seconds for them to appear.
    client:
        a ``distributed.Client`` to use (left open by ``close()``).
    scheduler, scheduler_file:
        connect to this scheduler (``tcp://`` or ``tls://`` address, or a
        scheduler file); ``security`` is passed to the ``Client`` for TLS.
    processes_per_worker:
        library processes per dask worker; default its ``nthreads``.
    queue_depth:
        attempts kept queued per library process (default 2).
    temp_replicas:
        copies kept of temps made from temps (default 2; 1 keeps lineage instead).
    spill_mb:
        temps an agent keeps in memory before spilling the oldest to disk.
    cluster_options:
        extra keyword arguments for ``LocalCluster``.
    """

    name = "dask"

    def __init__(self, workers: int | None = None, *, run_dir: str, client: Any = None,
                 scheduler: str | None = None, scheduler_file: str | None = None, security: Any = None,
                 processes_per_worker: int | None = None, wait_for_workers: float = 60.0,
                 cluster_options: dict[str, Any] | None = None, cores_per_worker: int | None = None,
                 queue_depth: int = 2, temp_replicas: int = 2, spill_mb: int = 1024) -> None:
        for what, n in (("workers", workers), ("processes_per_worker", processes_per_worker),
                        ("queue_depth", queue_depth), ("temp_replicas", temp_replicas)):
            if n is not None and n < 1:
                raise ValueError(f"{what} must be at least 1, got {n}")
        self.n_workers = workers
        self.run_dir = run_dir
        self.run = uuid.uuid4().hex[:12]
        self.processes = processes_per_worker
        self.cores_override = cores_per_worker
        self.queue_depth = queue_depth
        self.spill_mb = spill_mb
        self.wait = wait_for_workers
        self.client = client
        self.scheduler = scheduler
        self.scheduler_file = scheduler_file
        self.security = security
        self.cluster_options = dict(cluster_options or {})
        self._own_client = client is None
        self._cluster = None
        self._plugin: str | None = None
        self._lineage = Lineage(temp_replicas)
        self._members: set[str] = set()
        self._workers: dict[str, _Worker] = {}
        self._order: list[str] = []  # workers that are up, for round-robin copies
        self._rr = 0
        self._slots: dict[str, tuple[str, int]] = {}  # vinecore worker id -> (dask address, process)
        self._runs: dict[int, _Run] = {}
        self._task_keys: dict[int, int] = {}  # task id -> key of its attempt
        self._keys = itertools.count(1)
        self._backlog: list[Recompute] = []  # recomputations waiting for any worker
        self._retry: list[tuple[float, int]] = []  # (when, key) of attempts whose inputs were unreachable
        self._fetches: dict[Hashable, Any] = {}
        self._libraries: dict[str, bytes] = {}
        self._reconnects: dict[str, int] = {}
        self._holds: dict[str, Any] = {}  # dask address -> future of its hold() task
        self._pending: list[Event] = []
        self._inbox: "queue.SimpleQueue[tuple]" = queue.SimpleQueue()
        self._links = None  # _Links, on the client's event loop
        self._closed = False

    # -------------------------------------------------------------- workers
    def start(self) -> list[Event]:
        try:
            return self._start_up()
        except BaseException:
            self.close()  # the plugin, the comms and a client or cluster of our own
            raise

    def _start_up(self) -> list[Event]:
        if self.client is None:
            from ._dask_links import open_client

            self.client, self._cluster = open_client(self.scheduler, self.scheduler_file, self.security,
                                                     self.n_workers, self.cluster_options)
        from ._dask_links import Links, subscribe_membership
        from ._dask_plugin import AgentPlugin

        self._plugin = f"vinecore-{self.run}"
        self.client.register_plugin(AgentPlugin(self.run), name=self._plugin)
        self._links = Links(self.client, self.run, self._inbox,
                            {"processes": self.processes, "spill_mb": self.spill_mb, "cores": self.cores_override})
        subscribe_membership(self.client, self._links.on_scheduler_event)
        want = self.n_workers or 1
        try:
            self.client.wait_for_workers(want, timeout=self.wait)
        except TimeoutError as exc:
            have = len(self.client.nthreads())
            raise EngineError(f"the dask cluster has {have} worker(s) after {self.wait:.0f} s; {want} were "
                              "asked for. Start more workers (`dask worker ADDRESS`) or ask for fewer.") from exc
        for addr in self.client.nthreads():
            self._inbox.put(("member+", addr))
        deadline = time.monotonic() + self.wait
        while sum(w.up for w in self._workers.values()) < want:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise EngineError(f"the vinecore agents on {want} dask worker(s) did not answer within "
                                  f"{self.wait:.0f} s (up: {sorted(a for a, w in self._workers.items() if w.up)}). "
                                  "Are ddr and vinecore installed in the workers' environment?")
            self._drain(min(remaining, 0.5))
        out, self._pending = self._pending, []
        # first position of every process first, so the first attempts spread over the whole cluster
        return sorted(out, key=lambda ev: (ev.worker_id.rsplit(".", 1)[-1], ev.worker_id)
                      if isinstance(ev, WorkerJoined) else ("", ""))

    def _connect_more(self) -> None:
        for addr in sorted(self._members):
            if self.n_workers and len(self._workers) >= self.n_workers:
                return
            if addr not in self._workers:
                gen = self._reconnects.get(addr, 0)
                self._workers[addr] = _Worker(addr, gen)
                self._links.connect(addr, gen)

    def _worker_up(self, addr: str, gen: int, info: dict) -> None:
        w = self._workers.get(addr)
        if w is None or w.gen != gen or w.up:
            return
        w.up = True
        n = int(info["processes"])
        nthreads = int(info.get("nthreads", 1) or 1)
        res = info.get("resources") or {}
        cores = self.cores_override or int(res.get("cores", nthreads) or nthreads)
        mem = res.get("memory")
        w.load = [0] * n
        node = info.get("host") or addr.split("://")[-1].rsplit(":", 1)[0]  # its node (one file cache)
        suffix = f"~{gen}" if gen else ""
        for q in range(self.queue_depth):
            for p in range(n):
                wid = f"{addr}/{p}.{q}{suffix}"
                self._slots[wid] = (addr, p)
                w.ids.append(wid)
                self._pending.append(WorkerJoined(wid, cores=max(1, cores // n),
                                                  memory=int(mem) // n if mem else None, slots=1, node=node))
        for name, payload in self._libraries.items():
            self._send(addr, ("lib", name, wrap(payload)))
        self._order.append(addr)
        self._hold(addr)
        backlog, self._backlog = self._backlog, []
        self._act(backlog + self._lineage.joined(addr))

    def _hold(self, addr: str) -> None:
        """One long-running dask task per worker in use: adaptive scaling leaves busy workers alone."""
        from ._dask_plugin import hold

        try:
            self._holds[addr] = self.client.submit(hold, self.run, key=f"vinecore-hold-{self.run}-{addr}",
                                                   workers=[addr], allow_other_workers=False, pure=False)
        except Exception:  # noqa: BLE001 - the client is closing; nothing to protect any more
            pass

    def _worker_lost(self, addr: str, why: str) -> None:
        w = self._workers.pop(addr, None)
        fut = self._holds.pop(addr, None)
        if fut is not None:
            fut.release()
        if w is None:
            return
        self._links.disconnect(addr, w.gen)
        if addr in self._order:
            self._order.remove(addr)
        for wid in w.ids:
            self._slots.pop(wid, None)
            self._pending.append(WorkerRemoved(wid, why))
        acts: list = []
        for key, run in list(self._runs.items()):
            if run.addr != addr:
                continue
            del self._runs[key]
            if run.kind == "task":
                self._task_keys.pop(run.spec.task_id, None)
                acts += self._lineage.consumed(key)
            else:
                acts += self._lineage.recompute_failed(run.rid, why, worker_lost=True)
        for key in [k for k in self._fetches if isinstance(k, tuple) and k[0] == "pull" and k[2] == addr]:
            del self._fetches[key]
            acts += self._lineage.copy_failed(key[1])
        acts += self._lineage.worker_lost(addr)
        self._act(acts)
        self._connect_more()

    # ---------------------------------------------------------------- tasks
    def install_library(self, name: str, payload: bytes) -> None:
        self._libraries[name] = payload
        for addr, w in self._workers.items():
            if w.up:
                self._send(addr, ("lib", name, wrap(payload)))

    def remove_library(self, name: str) -> None:
        if self._libraries.pop(name, None) is None:
            return
        for addr, w in self._workers.items():
            if w.up:
                self._send(addr, ("unlib", name))

    def execute(self, worker_id: str, spec: TaskSpec) -> None:
        where = self._slots.get(worker_id)
        if where is None:
            self._fail_now(spec, worker_id, Result.WORKER_LOST, f"dask worker of {worker_id} is gone")
            return
        key = next(self._keys)
        run = _Run("task", key, where[0], where[1], worker_id, spec, names=temp_inputs(spec))
        self._runs[key] = run
        self._task_keys[spec.task_id] = key
        if run.names:
            self._act(self._lineage.consume(key, run.names))
        else:
            self._start(run, {})

    def _start(self, run: _Run, inputs: dict[str, tuple[str, ...]]) -> None:
        if run.recipe is None:
            spec = run.spec
            run.recipe = _Recipe(pickle.dumps(spec, protocol=pickle.HIGHEST_PROTOCOL), spec.task_id, spec.memory,
                                 spec.time_max)
        r = run.recipe
        w = self._workers.get(run.addr)
        if w is not None:
            w.load[run.proc] += 1
        self._send(run.addr, ("run", {"key": run.key, "tid": r.tid, "proc": run.proc, "front": run.kind != "task",
                                      "spec": wrap(r.blob), "inputs": inputs, "memory": r.memory,
                                      "time_max": r.time_max}))

    def _act(self, actions: list) -> None:
        drops: dict[str, list[str]] = {}
        for a in actions:
            if isinstance(a, (Start, Fail)) and isinstance(a.key, tuple):  # a fetch by the manager
                self._fetches[a.key] = a.inputs if isinstance(a, Start) else a.why
            elif isinstance(a, Start):
                run = self._runs.get(a.key)
                if run is not None:
                    self._start(run, a.inputs)
            elif isinstance(a, Fail):
                run = self._runs.pop(a.key, None)
                if run is not None and run.kind == "task":
                    self._task_keys.pop(run.spec.task_id, None)
                    self._fail_now(run.spec, run.wid, Result.EXCEPTION, a.why, lost=True)
            elif isinstance(a, Recompute):
                self._recompute(a)
            elif isinstance(a, Copy):
                dst = self._copy_target(a.holders)
                if dst is None:
                    self._act(self._lineage.copy_failed(a.name))
                else:
                    self._fetches[("pull", a.name, dst)] = None
                    self._send(dst, ("pull", a.name, list(a.holders)))
            elif isinstance(a, Drop):
                for holder in a.holders:
                    drops.setdefault(holder, []).append(a.name)
        for holder, names in drops.items():
            if holder in self._workers:
                self._send(holder, ("drop", names))

    def _recompute(self, a: Recompute) -> None:
        best = None
        for addr in self._order:
            w = self._workers[addr]
            for p, load in enumerate(w.load):
                if best is None or load < best[0]:
                    best = (load, addr, p)
        if best is None:
            self._backlog.append(a)
            return
        key = next(self._keys)
        run = _Run("recompute", key, best[1], best[2], recipe=a.recipe, rid=a.rid, names=tuple(a.inputs))
        self._runs[key] = run
        self._start(run, a.inputs)

    def _copy_target(self, holders: tuple[str, ...]) -> str | None:
        n = len(self._order)
        for i in range(n):
            addr = self._order[(self._rr + i) % n]
            if addr not in holders:
                self._rr = (self._rr + i + 1) % n
                return addr
        return None

    def _fail_now(self, spec: TaskSpec, worker_id: str, result: Result, why: str, lost: bool = False) -> None:
        payload = _serialize.exception_payload(TempLostError(why) if lost else RuntimeError(why))
        self._pending.append(TaskFinished(spec.task_id, worker_id, result,
                                          Outcome(spec.task_id, result, payload, "", 0, 0, 0, 0, worker_id)))

    def kill(self, task_id: int, worker_id: str) -> None:
        key = self._task_keys.pop(task_id, None)
        if key is not None:
            run = self._runs.pop(key, None)
            if run is not None:
                w = self._workers.get(run.addr)
                if w is not None:
                    w.load[run.proc] -= 1
                self._send(run.addr, ("kill", key))
            self._act(self._lineage.consumed(key))
        outcome = Outcome(task_id, Result.CANCELLED, None, "", 0, 0, 0, 0, worker_id)
        self._pending.append(TaskFinished(task_id, worker_id, Result.CANCELLED, outcome))

    # ------------------------------------------------------------- reports
    def poll(self, timeout: float | None) -> list[Event]:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._retry:
                self._retry_due()
            if self._pending:
                out, self._pending = self._pending, []
                return out
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return []
            self._drain(1.0 if remaining is None else min(1.0, remaining))

    def _drain(self, timeout: float) -> None:
        """Handle what the event loop received: wait up to ``timeout`` for the first item."""
        try:
            item = self._inbox.get(timeout=timeout) if timeout > 0 else self._inbox.get_nowait()
        except queue.Empty:
            return
        while True:
            self._handle(item)
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return

    def _handle(self, item: tuple) -> None:
        kind = item[0]
        if kind == "msgs":
            addr, gen, batch = item[1], item[2], item[3]
            w = self._workers.get(addr)
            if w is None or w.gen != gen:
                return
            for msg in batch:
                if msg[0] == "done":
                    self._on_done(addr, msg[1], msg[2], msg[3])
                elif msg[0] == "missing":
                    self._on_missing(msg[1], msg[3])
                elif msg[0] == "pulled":
                    self._fetches.pop(("pull", msg[1], addr), None)
                    self._act(self._lineage.copied(msg[1], addr) if msg[2] else self._lineage.copy_failed(msg[1]))
        elif kind == "hello":
            self._worker_up(item[1], item[2], item[3])
        elif kind == "down":
            addr, gen, why = item[1], item[2], item[3]
            w = self._workers.get(addr)
            if w is not None and w.gen == gen:
                if self._reconnects.get(addr, 0) < 3:  # still a member: reconnect as a new generation
                    self._reconnects[addr] = self._reconnects.get(addr, 0) + 1
                else:
                    self._members.discard(addr)
                self._worker_lost(addr, why)
        elif kind == "member+":
            self._members.add(item[1])
            self._connect_more()
        elif kind == "member-":
            self._members.discard(item[1])
            self._worker_lost(item[1], f"dask worker {item[1]} left the cluster")

    def _on_done(self, addr: str, key: int, blob: bytes, held: bool) -> None:
        run = self._runs.pop(key, None)
        if run is None:
            return  # killed, or written off with its worker
        w = self._workers.get(addr)
        if w is not None:
            w.load[run.proc] -= 1
        outcome: Outcome = pickle.loads(blob)
        if run.kind == "recompute":
            if outcome.result is Result.SUCCESS and held:
                self._act(self._lineage.recomputed(run.rid, addr))
            else:
                why = f"{outcome.result.value}: {_describe(outcome)}"
                self._act(self._lineage.recompute_failed(run.rid, why,
                                                         worker_lost=outcome.result is Result.WORKER_LOST))
            return
        spec = run.spec
        self._task_keys.pop(spec.task_id, None)
        if outcome.result is Result.SUCCESS and held:
            self._act(self._lineage.produced(temp_outputs(spec), addr, run.recipe, run.names))
        if run.names:
            self._act(self._lineage.consumed(key))
        self._pending.append(TaskFinished(spec.task_id, run.wid, outcome.result, outcome,
                                          held_on=run.wid if held else None))

    def _on_missing(self, key: int, why: str) -> None:
        run = self._runs.get(key)
        if run is None:
            return
        w = self._workers.get(run.addr)
        if w is not None:
            w.load[run.proc] -= 1
        if run.kind == "recompute":
            del self._runs[key]
            self._act(self._lineage.recompute_failed(run.rid, f"an input was unreachable: {why}", worker_lost=True))
            return
        run.tries += 1
        if run.tries > _MISSING_TRIES:
            del self._runs[key]
            self._task_keys.pop(run.spec.task_id, None)
            self._act(self._lineage.consumed(key))
            self._fail_now(run.spec, run.wid, Result.EXCEPTION, f"task {run.spec.task_id} could not get its "
                           f"inputs after {_MISSING_TRIES} tries: {why}")
            return
        self._retry.append((time.monotonic() + _MISSING_RETRY, key))

    def _retry_due(self) -> None:
        now = time.monotonic()
        due = [k for t, k in self._retry if t <= now]
        self._retry = [(t, k) for t, k in self._retry if t > now]
        for key in due:
            run = self._runs.get(key)
            if run is not None:
                self._act(self._lineage.consume(key, run.names))

    # ----------------------------------------------------------------- data
    def fetch(self, cache_name: str) -> bytes:
        key = ("fetch", next(self._keys))
        deadline = time.monotonic() + _FETCH_TIMEOUT
        try:
            self._act(self._lineage.consume(key, (cache_name,)))
            while True:
                got = self._fetches.get(key)
                if isinstance(got, str):
                    raise KeyError(got)
                if time.monotonic() > deadline:
                    raise KeyError(f"{cache_name} could not be fetched within {_FETCH_TIMEOUT:.0f} s")
                if got is not None:
                    for holder in got[cache_name]:
                        data = self._links.get_temp(holder, cache_name)
                        if data is not None:
                            return data
                    self._fetches.pop(key, None)
                    self._drain(_MISSING_RETRY)
                    self._act(self._lineage.consume(key, (cache_name,)))
                    continue
                self._drain(0.1)
        finally:
            self._fetches.pop(key, None)
            self._act(self._lineage.consumed(key))

    def release(self, cache_name: str) -> None:
        self._act(self._lineage.release(cache_name))

    def worker_pids(self) -> dict[str, int]:
        """Pid of each dask worker process in use (not of its library processes)."""
        return {a: pid for a, pid in self.client.run(os.getpid).items() if a in self._workers}

    def agent_stats(self) -> dict[str, Any]:
        """Per dask worker: its pid, its library processes' pids, the temps its agent holds."""
        from ._dask_plugin import agent_stats

        return self.client.run(agent_stats, self.run)

    def routes(self) -> dict[str, str]:
        """How the manager reaches each agent: ``"direct"`` (a comm of its own) or ``"scheduler"``."""
        return {a: ("scheduler" if link.relayed else "direct") for a, link in list(self._links.links.items())}

    def _send(self, addr: str, msg: tuple) -> None:
        w = self._workers.get(addr)
        if w is not None:
            self._links.send(addr, w.gen, msg)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.client is None:
            return
        try:
            if self._links is not None:
                from ._dask_links import unsubscribe_membership

                unsubscribe_membership(self.client, self._links.on_scheduler_event)
                self._links.close()
            holds, self._holds = list(self._holds.values()), {}
            for fut in holds:
                fut.release()
            if self._plugin is not None:
                try:  # teardown() on every worker ends the run's agent if its comm has not already
                    self.client.unregister_worker_plugin(self._plugin)
                except Exception:  # noqa: BLE001 - workers may be gone already
                    pass
        finally:
            if self._own_client:
                self.client.close()
                if self._cluster is not None:
                    self._cluster.close()


def _describe(outcome: Outcome) -> str:
    try:
        return str(_serialize.loads(outcome.output)) if outcome.output else ""
    except Exception:  # noqa: BLE001 - an exception type unknown here
        return "(undecodable error)"
