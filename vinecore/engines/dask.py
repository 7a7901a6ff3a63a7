"""The dask engine: vinecore on an existing dask.distributed cluster.

vinecore does not bring a transport of its own to clusters: workers, data
movement between them, lineage recovery and deployment (dask-jobqueue on
HTCondor or SLURM, dask-gateway) are dask's. What dask lacks is per-task
resource enforcement: a task that outgrows memory gets its whole worker
restarted by the nanny, together with every result held there. So tasks never
run in the dask worker's threads; they run in *library processes* beside each
dask worker (:mod:`vinecore.engines._dask_pool`), and a blow-up ends one
attempt as ``resource exhaustion`` while the dask worker and its data stay.

How the TaskVine model lands on dask
    * worker: one vinecore worker per library process slot, named
      ``<dask worker address>/<slot>``. A dask worker with ``nthreads=n`` has
      ``n`` slots of one core each (``processes_per_worker`` changes that). If the
      dask worker declares resources ``cores`` or ``memory`` (MB), they set the
      slots' cores and memory used for packing.
    * placement: the vinecore state machine picks the worker; the attempt is
      submitted pinned to it (``workers=[address]``). Restrictions are loose so
      that dask may recompute a lost result elsewhere. Workers report their
      host as their node, so a task prefers the workers of a node whose file
      cache holds its input (``Task.set_locality``).
    * temps: the attempt's dask future holds the temps it produced (in the dask
      worker's memory, spilled by dask as usual); consumers take it as a
      dependency, so dask moves the bytes worker to worker. A lost temp is
      recomputed by dask from lineage while the manager still refers to it.
    * libraries: a worker plugin per library installs it in every pool, also
      on workers that join later; the context is built once per library process.
    * outcomes: a tiny follow-up task returns only the attempt's outcome to the
      manager, never the temps.
    * cancel: the future is cancelled and the library process running the
      attempt is stopped (and replaced).
    * worker loss: detected by polling the scheduler's worker list; the state
      machine retries the attempts that were running there.
"""

from __future__ import annotations

import functools
import os
import queue
import time
import uuid
from dataclasses import dataclass
from typing import Any

from .._events import Event, Result, TaskFinished, WorkerJoined, WorkerRemoved
from .._runtime import Outcome, TaskSpec
from .. import _serialize
from ..exceptions import EngineError

__all__ = ["DaskEngine"]

_SYNC_INTERVAL = 1.0  # seconds between refreshes of the worker list
_MB = 1024 * 1024


def _import_distributed():
    try:
        import distributed
    except ImportError as exc:  # pragma: no cover - distributed is a dependency of ddr
        raise EngineError("the dask engine needs dask.distributed: pip install distributed") from exc
    return distributed


@dataclass
class _Attempt:
    spec: TaskSpec
    worker_id: str
    future: Any
    meta: Any


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
        library processes (vinecore workers) per dask worker; default its
        ``nthreads``.
    cluster_options:
        extra keyword arguments for ``LocalCluster``.
    """

    name = "dask"

    def __init__(self, workers: int | None = None, *, run_dir: str, client: Any = None,
                 scheduler: str | None = None, scheduler_file: str | None = None, security: Any = None,
                 processes_per_worker: int | None = None, wait_for_workers: float = 60.0,
                 cluster_options: dict[str, Any] | None = None, cores_per_worker: int | None = None) -> None:
        if workers is not None and workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        if processes_per_worker is not None and processes_per_worker < 1:
            raise ValueError(f"processes_per_worker must be at least 1, got {processes_per_worker}")
        self.n_workers = workers
        self.run_dir = run_dir
        self.run = uuid.uuid4().hex[:12]
        self.processes = processes_per_worker
        self.cores_override = cores_per_worker
        self.wait = wait_for_workers
        self.client = client
        self.scheduler = scheduler
        self.scheduler_file = scheduler_file
        self.security = security
        self.cluster_options = dict(cluster_options or {})
        self._own_client = client is None
        self._cluster = None
        self._plugins: list[str] = []
        self._slots: dict[str, tuple[str, int]] = {}  # vinecore worker id -> (dask address, slot)
        self._addresses: dict[str, list[str]] = {}  # dask address -> vinecore worker ids
        self._running: dict[int, _Attempt] = {}
        self._temps: dict[str, Any] = {}  # cache name -> future of the Held that has it
        self._ready: "queue.SimpleQueue[tuple[int, int]]" = queue.SimpleQueue()
        self._pending: list[Event] = []
        self._last_sync = 0.0
        self._closed = False

    # -------------------------------------------------------------- workers
    def start(self) -> list[Event]:
        distributed = _import_distributed()
        if self.client is None:
            if self.scheduler or self.scheduler_file:
                try:
                    self.client = distributed.Client(self.scheduler, scheduler_file=self.scheduler_file,
                                                     security=self.security, timeout="30s")
                except Exception as exc:  # noqa: BLE001 - distributed raises several kinds here
                    where = self.scheduler or f"the scheduler in {self.scheduler_file}"
                    hint = ("Check the address and that the scheduler is running (`dask scheduler`).")
                    if "TLS" in str(exc) or str(self.scheduler or "").startswith("tls://"):
                        hint = ("A tls:// scheduler needs certificates: ddr run --tls-ca-file CA.pem --tls-cert "
                                "CERT.pem --tls-key KEY.pem, or security=distributed.security.Security(...) "
                                "in Python.")
                    raise EngineError(f"could not connect to the dask scheduler at {where}: "
                                      f"{type(exc).__name__}: {exc}. {hint}") from exc
            else:
                opts = {"n_workers": self.n_workers or 2, "threads_per_worker": 1, "processes": True,
                        "dashboard_address": None, "host": "127.0.0.1"}
                opts.update(self.cluster_options)
                self._cluster = distributed.LocalCluster(**opts)
                self.client = distributed.Client(self._cluster)
        from ._dask_pool import RunPlugin

        name = f"vinecore-{self.run}"
        self.client.register_plugin(RunPlugin(self.run, self.processes), name=name)
        self._plugins.append(name)
        want = self.n_workers or 1
        try:
            self.client.wait_for_workers(want, timeout=self.wait)
        except TimeoutError as exc:
            have = len(self.client.scheduler_info(n_workers=-1).get("workers", {}))
            raise EngineError(f"the dask cluster has {have} worker(s) after {self.wait:.0f} s; {want} were "
                              "asked for. Start more workers (`dask worker ADDRESS`) or ask for fewer.") from exc
        return self._sync_workers()

    def _sync_workers(self) -> list[Event]:
        self._last_sync = time.monotonic()
        try:
            info = self.client.scheduler_info(n_workers=-1).get("workers", {})
        except Exception:  # noqa: BLE001 - scheduler unreachable: report nothing new
            return []
        events: list[Event] = []
        for addr in [a for a in self._addresses if a not in info]:
            events.extend(self._lose(addr, f"dask worker {addr} left the cluster"))
        for addr in sorted(info):
            if addr in self._addresses:
                continue
            if self.n_workers and len(self._addresses) >= self.n_workers:
                break
            w = info[addr]
            nthreads = int(w.get("nthreads", 1) or 1)
            n = self.processes or nthreads
            res = w.get("resources") or {}
            cores = self.cores_override or int(res.get("cores", nthreads) or nthreads)
            mem = res.get("memory")
            ids = []
            for i in range(n):
                wid = f"{addr}/{i}"
                self._slots[wid] = (addr, i)
                ids.append(wid)
                events.append(WorkerJoined(wid, cores=max(1, cores // n),
                                           memory=int(mem) // n if mem else None, slots=1,
                                           node=w.get("host") or addr.split("://")[-1].rsplit(":", 1)[0]))
            self._addresses[addr] = ids
        return events

    def _lose(self, addr: str, why: str) -> list[Event]:
        events: list[Event] = []
        ids = self._addresses.pop(addr, [])
        for wid in ids:
            self._slots.pop(wid, None)
            for tid, att in list(self._running.items()):
                if att.worker_id == wid:
                    del self._running[tid]
                    self._forget(att)
            events.append(WorkerRemoved(wid, why))
        return events

    # ---------------------------------------------------------------- tasks
    def install_library(self, name: str, payload: bytes) -> None:
        from ._dask_pool import LibraryPlugin

        plugin_name = f"vinecore-{self.run}-lib-{name}"
        self.client.register_plugin(LibraryPlugin(self.run, name, payload, self.processes), name=plugin_name)
        self._plugins.append(plugin_name)

    def remove_library(self, name: str) -> None:
        plugin_name = f"vinecore-{self.run}-lib-{name}"
        if plugin_name not in self._plugins:
            return
        self._plugins.remove(plugin_name)
        try:  # teardown() on every worker drops the library from its pool
            self.client.unregister_worker_plugin(plugin_name)
        except Exception:  # noqa: BLE001 - workers may be gone; their pools went with them
            pass

    def execute(self, worker_id: str, spec: TaskSpec) -> None:
        from ._dask_pool import outcome_of, run_attempt

        where = self._slots.get(worker_id)
        if where is None:
            self._fail_now(spec, worker_id, Result.WORKER_LOST, f"dask worker of {worker_id} is gone")
            return
        deps = {}
        for name in (*spec.arg_temps, *(c for kind, c, _, _ in spec.inputs if kind == "temp")):
            fut = self._temps.get(name)
            if fut is None:
                self._fail_now(spec, worker_id, Result.EXCEPTION,
                               f"temp {name} needed by task {spec.task_id} is not held on the cluster: it "
                               "was released (undeclared) or its producer never succeeded")
                return
            deps[name] = fut
        addr, slot = where
        key = f"vinecore-{self.run}-t{spec.task_id}.{spec.attempt}"
        fut = self.client.submit(run_attempt, self.run, slot, self.processes, spec, deps, key=key,
                                 workers=[addr], allow_other_workers=True, pure=False)
        meta = self.client.submit(outcome_of, fut, key=f"{key}-outcome", workers=[addr],
                                  allow_other_workers=True, pure=False)
        self._running[spec.task_id] = _Attempt(spec, worker_id, fut, meta)
        meta.add_done_callback(functools.partial(self._meta_done, spec.task_id, spec.attempt))

    def _meta_done(self, task_id: int, attempt: int, _future: Any) -> None:  # client's thread
        self._ready.put((task_id, attempt))

    def _fail_now(self, spec: TaskSpec, worker_id: str, result: Result, why: str) -> None:
        exc = RuntimeError(why)
        outcome = Outcome(spec.task_id, result, _serialize.exception_payload(exc), "", 0, 0, 0, 0, worker_id)
        self._pending.append(TaskFinished(spec.task_id, worker_id, result, outcome))

    def kill(self, task_id: int, worker_id: str) -> None:
        from ._dask_pool import kill_on_worker

        att = self._running.pop(task_id, None)
        if att is None:
            return
        addr = self._slots.get(worker_id, (None, 0))[0]
        self._forget(att)
        if addr is not None:
            try:
                self.client.run(kill_on_worker, self.run, task_id, att.spec.attempt, workers=[addr], wait=False)
            except Exception:  # noqa: BLE001 - the worker is gone; its removal is reported by polling
                pass
        outcome = Outcome(task_id, Result.CANCELLED, None, "", 0, 0, 0, 0, worker_id)
        self._pending.append(TaskFinished(task_id, worker_id, Result.CANCELLED, outcome))

    def _forget(self, att: _Attempt) -> None:
        try:
            self.client.cancel([att.meta, att.future])
        except Exception:  # noqa: BLE001 - the client may be closing
            pass

    def poll(self, timeout: float | None) -> list[Event]:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if time.monotonic() - self._last_sync > _SYNC_INTERVAL:
                self._pending.extend(self._sync_workers())
            ready: list[tuple[int, int]] = []
            while True:
                try:
                    ready.append(self._ready.get_nowait())
                except queue.Empty:
                    break
            if ready:
                self._collect(ready)
            if self._pending:
                out, self._pending = self._pending, []
                return out
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return []
            step = _SYNC_INTERVAL if remaining is None else min(_SYNC_INTERVAL, remaining)
            try:
                self._ready.put(self._ready.get(timeout=step))  # woken: collect on the next turn
            except queue.Empty:
                pass

    def _collect(self, ready: list[tuple[int, int]]) -> None:
        atts = []
        for tid, attempt in ready:
            att = self._running.get(tid)
            if att is not None and att.spec.attempt == attempt:
                atts.append(att)
        finished = [a for a in atts if a.meta.status == "finished"]
        outcomes = dict(zip((a.spec.task_id for a in finished),
                            self.client.gather([a.meta for a in finished], errors="skip"))) if finished else {}
        for att in atts:
            tid = att.spec.task_id
            del self._running[tid]
            outcome = outcomes.get(tid)
            if outcome is None:
                err = None
                if att.meta.status == "error":
                    try:
                        err = att.meta.exception(timeout=5)
                    except Exception as exc:  # noqa: BLE001
                        err = exc
                why = f"dask could not run task {tid} on {att.worker_id}: {err!r}" if err else \
                    f"task {tid} was dropped by the dask cluster ({att.meta.status})"
                self._fail_now(att.spec, att.worker_id, Result.WORKER_LOST, why)
                continue
            names = []
            if outcome.result is Result.SUCCESS:
                if att.spec.output_temp:
                    names.append(att.spec.output_temp)
                names += [c for kind, c, _, _ in att.spec.outputs if kind == "temp"]
                for name in names:
                    self._temps[name] = att.future
            self._pending.append(TaskFinished(tid, att.worker_id, outcome.result, outcome,
                                              held_on=att.worker_id if names else None))

    # ----------------------------------------------------------------- data
    def fetch(self, cache_name: str) -> bytes:
        fut = self._temps.get(cache_name)
        if fut is None:
            raise KeyError(f"{cache_name} is not held on the dask cluster")
        return fut.result().temps[cache_name]

    def release(self, cache_name: str) -> None:
        self._temps.pop(cache_name, None)

    def worker_pids(self) -> dict[str, int]:
        """Pid of each dask worker process (not of its library processes)."""
        return {addr: pid for addr, pid in self.client.run(os.getpid).items() if addr in self._addresses}

    def pool_stats(self) -> dict[str, Any]:
        from ._dask_pool import pool_stats

        return self.client.run(pool_stats, self.run)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.client is None:
            return
        try:
            for att in self._running.values():
                self._forget(att)
            self._running.clear()
            self._temps.clear()
            for name in reversed(self._plugins):
                try:
                    self.client.unregister_worker_plugin(name)
                except Exception:  # noqa: BLE001 - workers may be gone already
                    pass
        finally:
            if self._own_client:
                self.client.close()
                if self._cluster is not None:
                    self._cluster.close()
