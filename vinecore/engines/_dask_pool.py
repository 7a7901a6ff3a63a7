"""The worker side of the dask engine: one agent per (dask worker, run).

A dask worker runs tasks in threads, and when one of them outgrows the worker's
memory the nanny restarts the whole worker with everything it holds. So
vinecore never runs a task in the dask worker. The run's :class:`Agent` (made
by the handlers of :mod:`._dask_plugin` when the manager first calls) holds
library processes (:mod:`._dask_library`, one per slot) and the temps they
produced, reads batches of instructions from the manager and answers with
batches of reports. Nothing goes through the scheduler unless the manager
cannot reach the worker (then the scheduler relays the same batches).

Policies
    * queue: each library process has a queue; the manager sends attempts ahead
      (several per process), so a process starts its next attempt the moment
      the previous one ends, without a round trip to the manager. Inputs held
      on other workers are fetched, worker to worker over dask comms, while the
      attempt waits in the queue. Recomputations of lost temps go to the front.
    * temps: kept in the agent's memory; past ``spill_mb`` the oldest are
      written to the worker's local directory.
    * enforcement: the library process limits address space and time itself;
      the agent also kills a process whose resident memory grows past the
      attempt's allocation, or that runs ``time_max`` + 2 s, reports the attempt
      as ``resource exhaustion`` / ``max wall time``, and starts a replacement
      (contexts rebuilt there). The dask worker is never touched.
    * lifetime: the agent ends, with its processes and temps, when the
      manager's comm closes or stays silent for ``_SILENCE`` seconds (the
      manager pings), or when the run's plugin is removed. Library processes
      also die with the dask worker.
"""

from __future__ import annotations

import asyncio
import collections
import os
import pickle
import socket
import subprocess
import sys
import time
from typing import Any

from .. import _serialize
from .._events import Result
from .._runtime import Outcome
from ._dask_library import frame, read_frame_async
from ._fds import socketpair
from .local import _describe_exit, _rss_kb

__all__ = ["Agent", "AGENTS", "wrap", "call"]

_SILENCE = 10.0  # seconds without a word from the manager before the agent gives up
_GRACE = 2.0  # seconds past time_max before the agent kills
_WATCH = 0.05  # seconds between watchdog checks while limited attempts run
_BIG = 64 * 1024
_CONNECT = 5.0  # seconds to open a comm to another worker (dask's default retries a dead address for 30 s)

AGENTS: dict[tuple[str, str], "Agent"] = {}  # (worker address, run) -> agent, in this worker process


def wrap(data: bytes) -> Any:
    """Large blobs travel as their own dask frames, not inside the msgpack header."""
    if len(data) > _BIG:
        from distributed.protocol import to_serialize

        return to_serialize(data)
    return data


async def call(pool: Any, addr: str, **msg: Any) -> Any:
    """One request over a dask ``ConnectionPool``, giving up on an unreachable address after ``_CONNECT`` s."""
    from distributed.core import send_recv

    comm = await pool.connect(addr, timeout=_CONNECT)
    try:
        return await send_recv(comm, **msg)
    finally:
        pool.reuse(addr, comm)


class _Temps:
    """Temps held by one agent: in memory, the oldest spilled to disk past the budget."""

    def __init__(self, directory: str, budget: int) -> None:
        self.directory = directory
        self.budget = budget
        self.mem: collections.OrderedDict[str, bytes] = collections.OrderedDict()
        self.disk: set[str] = set()
        self.nbytes = 0

    def put(self, name: str, data: bytes) -> None:
        self.delete(name)
        self.mem[name] = data
        self.nbytes += len(data)
        while self.nbytes > self.budget and len(self.mem) > 1:
            old, blob = self.mem.popitem(last=False)
            self.nbytes -= len(blob)
            os.makedirs(self.directory, exist_ok=True)
            with open(os.path.join(self.directory, old), "wb") as f:
                f.write(blob)
            self.disk.add(old)

    def get(self, name: str) -> bytes | None:
        data = self.mem.get(name)
        if data is None and name in self.disk:
            with open(os.path.join(self.directory, name), "rb") as f:
                data = f.read()
        return data

    def __contains__(self, name: str) -> bool:
        return name in self.mem or name in self.disk

    def delete(self, name: str) -> None:
        data = self.mem.pop(name, None)
        if data is not None:
            self.nbytes -= len(data)
        if name in self.disk:
            self.disk.discard(name)
            try:
                os.unlink(os.path.join(self.directory, name))
            except FileNotFoundError:
                pass

    def clear(self) -> None:
        for name in list(self.mem) + list(self.disk):
            self.delete(name)


class _Job:
    __slots__ = ("key", "tid", "spec", "inputs", "data", "outputs", "memory", "time_max", "missing",
                 "fetch", "killed")

    def __init__(self, msg: dict) -> None:
        self.key: int = msg["key"]
        self.tid: int = msg["tid"]
        self.spec: bytes = msg["spec"]
        self.inputs: dict[str, tuple[str, ...]] = msg["inputs"]
        self.memory: int | None = msg["memory"]
        self.time_max: float | None = msg["time_max"]
        self.data: dict[str, bytes] = {}  # inputs fetched from other workers
        self.missing: set[str] = set()  # inputs still being fetched
        self.fetch: asyncio.Task | None = None
        self.killed = False


class _Proc:
    __slots__ = ("index", "wid", "popen", "writer", "queue", "current", "started", "rss0", "kill_reason",
                 "why", "alive")

    def __init__(self, index: int, wid: str) -> None:
        self.index = index
        self.wid = wid
        self.popen: subprocess.Popen | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.queue: collections.deque[_Job] = collections.deque()
        self.current: _Job | None = None
        self.started = 0.0
        self.rss0 = 0
        self.kill_reason: Result | None = None
        self.why = ""
        self.alive = False


class Agent:
    """One run's library processes and temps on one dask worker, driven by the manager's comm."""

    def __init__(self, worker: Any, run: str, comm: Any, processes: int, cores: int, spill_mb: int) -> None:
        self.worker = worker
        self.run = run
        self.comm = comm
        self.root = os.path.join(worker.local_directory, f"vinecore-{run}")
        os.makedirs(os.path.join(self.root, "store"), exist_ok=True)
        self.temps = _Temps(os.path.join(self.root, "spill"), spill_mb * 1024 * 1024)
        self.cores = cores
        self.libraries: dict[str, bytes] = {}
        self.procs = [_Proc(i, f"{worker.address}/{i}") for i in range(processes)]
        self.jobs: dict[int, _Job] = {}
        self.outbox: list = []
        self.flushing = False
        self.closed = False
        self.heard = time.monotonic()
        self.ready = asyncio.Event()  # a report waits (relayed mode)
        self.watchdog: asyncio.Task | None = None
        self.tasks: set[asyncio.Task] = set()
        self.env = dict(os.environ)
        self.env.setdefault("MALLOC_ARENA_MAX", "2")
        self.env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        self.env["VINECORE_CORES"] = str(cores)
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            self.env.setdefault(var, str(cores))

    # ---------------------------------------------------------- the stream
    def _hello(self) -> tuple:
        state = self.worker.state
        return ("hello", {"nthreads": int(getattr(state, "nthreads", 1) or 1),
                          "resources": dict(getattr(state, "total_resources", {}) or {}),
                          "processes": len(self.procs), "pid": os.getpid(), "host": _host_of(self.worker)})

    async def serve(self) -> None:
        """Talk to the manager over its comm until the comm ends; then stop everything."""
        await self.comm.write([self._hello()])
        for proc in self.procs:
            self._spawn(proc)
        try:
            while not self.closed:
                batch = await asyncio.wait_for(self.comm.read(), _SILENCE)
                self.heard = time.monotonic()
                for msg in batch:
                    self._on_message(msg)
        except (asyncio.TimeoutError, OSError, EOFError) as exc:  # CommClosedError is an OSError
            del exc
        except Exception:  # noqa: BLE001 - anything else also ends the stream
            pass
        finally:
            await self.close()

    def start_relayed(self) -> None:
        """The manager cannot reach this worker directly: it calls :meth:`relay` through the scheduler."""
        self.outbox.append(self._hello())
        for proc in self.procs:
            self._spawn(proc)
        self._spawn_task(self._watch_silence())

    async def relay(self, batch: list, wait: float) -> list:
        """Take the manager's instructions; answer with the reports so far, waiting up to ``wait`` s for one."""
        self.heard = time.monotonic()
        for msg in batch:
            self._on_message(msg)
        if not self.outbox and wait > 0 and not self.closed:
            self.ready.clear()
            try:
                await asyncio.wait_for(self.ready.wait(), wait)
            except asyncio.TimeoutError:
                pass
        out, self.outbox = self.outbox, []
        return out

    async def _watch_silence(self) -> None:
        while not self.closed:
            await asyncio.sleep(1.0)
            if time.monotonic() - self.heard > _SILENCE:
                await self.close()

    def _emit(self, msg: tuple) -> None:
        self.outbox.append(msg)
        if self.comm is None:
            self.ready.set()
        elif not self.flushing and not self.closed:
            self.flushing = True
            self._spawn_task(self._flush())

    async def _flush(self) -> None:
        try:
            while self.outbox and not self.closed:
                batch, self.outbox = self.outbox, []
                await self.comm.write(batch)
        except (OSError, EOFError):
            self.closed = True
        finally:
            self.flushing = False

    def _spawn_task(self, coro) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def _on_message(self, msg: tuple) -> None:
        kind = msg[0]
        if kind == "run":
            self._queue(_Job(msg[1]), msg[1]["proc"], msg[1]["front"])
        elif kind == "kill":
            self._kill(msg[1])
        elif kind == "drop":
            for name in msg[1]:
                self.temps.delete(name)
        elif kind == "pull":
            self._spawn_task(self._pull(msg[1], msg[2]))
        elif kind == "lib":
            self.libraries[msg[1]] = msg[2]
            for proc in self.procs:
                self._send(proc, ("lib", msg[1]), [msg[2]])
        elif kind == "bye":
            self._spawn_task(self.close())
        elif kind == "unlib":
            if self.libraries.pop(msg[1], None) is not None:
                for proc in self.procs:
                    self._send(proc, ("unlib", msg[1]), [])

    # ----------------------------------------------------------- processes
    def _spawn(self, proc: _Proc) -> None:
        parent, child = socketpair()
        try:
            proc.popen = subprocess.Popen(
                [sys.executable, "-m", "vinecore.engines._dask_library", str(child.fileno()), proc.wid,
                 os.path.join(self.root, "store"), str(os.getpid())],
                pass_fds=[child.fileno()], env=self.env, stdin=subprocess.DEVNULL)
        finally:
            child.close()
        proc.alive = True
        proc.kill_reason = None
        self._spawn_task(self._attach(proc, parent))

    async def _attach(self, proc: _Proc, sock: socket.socket) -> None:
        reader, proc.writer = await asyncio.open_connection(sock=sock)
        for name, payload in self.libraries.items():
            self._send(proc, ("lib", name), [payload])
        self._pump(proc)
        try:
            while True:
                head, blobs = await read_frame_async(reader)
                self._finished(proc, head, blobs)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        await self._died(proc)

    def _send(self, proc: _Proc, head: tuple, blobs: list) -> None:
        if proc.writer is not None and proc.alive:
            proc.writer.writelines(frame(head, blobs))

    def _finished(self, proc: _Proc, head: tuple, blobs: list[bytes]) -> None:
        _, key, result, names = head
        job, proc.current = proc.current, None
        if job is not None:
            self.jobs.pop(job.key, None)
            if not job.killed:
                held = False
                if result == Result.SUCCESS.value and names:
                    for name, data in zip(names, blobs[1:]):
                        self.temps.put(name, data)
                    held = True
                self._emit(("done", key, wrap(blobs[0]), held))
        self._pump(proc)

    async def _died(self, proc: _Proc) -> None:
        proc.alive = False
        if proc.writer is not None:
            proc.writer.close()
            proc.writer = None
        popen = proc.popen
        code = popen.poll() if popen is not None else None
        deadline = time.monotonic() + 5
        while code is None and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
            code = popen.poll()
        if code is None and popen is not None:
            popen.kill()
            code = popen.wait()
        job, proc.current = proc.current, None
        if job is not None:
            self.jobs.pop(job.key, None)
            if not job.killed:
                reason = proc.kill_reason or Result.WORKER_LOST
                why = proc.why or f"library process {proc.wid} (pid {popen.pid if popen else '?'}) died " \
                                  f"({_describe_exit(code)})"
                self._emit(("done", job.key, wrap(_outcome(job, reason, why, proc, time.monotonic() - proc.started)),
                            False))
        if not self.closed:
            self._spawn(proc)

    def _pump(self, proc: _Proc) -> None:
        if proc.current is not None or not proc.alive or proc.writer is None:
            return
        for job in proc.queue:
            if not job.missing:
                break
        else:
            return
        proc.queue.remove(job)
        names, blobs = [], [job.spec]
        for name in job.inputs:
            data = job.data.get(name)
            if data is None:
                data = self.temps.get(name)
            if data is None:
                self.jobs.pop(job.key, None)
                self._emit(("missing", job.key, [name], f"{name} vanished from {self.worker.address}"))
                self._pump(proc)
                return
            names.append(name)
            blobs.append(data)
        job.data = {}
        proc.current = job
        proc.started = time.monotonic()
        proc.kill_reason, proc.why = None, ""
        if job.memory:
            proc.rss0 = _rss_kb(proc.popen.pid)
        self._send(proc, ("task", job.key, names), blobs)
        if (job.memory or job.time_max) and (self.watchdog is None or self.watchdog.done()):
            self.watchdog = self._spawn_task(self._watch())

    def _queue(self, job: _Job, index: int, front: bool) -> None:
        proc = self.procs[index % len(self.procs)]
        self.jobs[job.key] = job
        remote = [n for n in job.inputs if n not in self.temps]
        if remote:
            job.missing = set(remote)
            job.fetch = self._spawn_task(self._fetch(job, proc, remote))
        if front:
            proc.queue.appendleft(job)
        else:
            proc.queue.append(job)
        self._pump(proc)

    def _kill(self, key: int) -> None:
        job = self.jobs.pop(key, None)
        if job is None:
            return
        job.killed = True
        if job.fetch is not None:
            job.fetch.cancel()
        for proc in self.procs:
            if proc.current is job:
                self._stop(proc, Result.CANCELLED, "cancelled by the manager")
            elif job in proc.queue:
                proc.queue.remove(job)

    def _stop(self, proc: _Proc, reason: Result, why: str) -> None:
        if proc.kill_reason is None:
            proc.kill_reason, proc.why = reason, why
            try:
                proc.popen.kill()
            except OSError:
                pass

    async def _watch(self) -> None:
        while not self.closed:
            limited = False
            now = time.monotonic()
            for proc in self.procs:
                job = proc.current
                if job is None or not (job.memory or job.time_max) or proc.kill_reason is not None:
                    continue
                limited = True
                if job.time_max and now - proc.started > job.time_max + _GRACE:
                    self._stop(proc, Result.MAX_WALL_TIME, f"task {job.tid} ran over its time_max of "
                               f"{job.time_max} s; its library process was stopped")
                elif job.memory:
                    rss = _rss_kb(proc.popen.pid)
                    if rss and rss - proc.rss0 > job.memory * 1024:
                        self._stop(proc, Result.RESOURCE_EXHAUSTION,
                                   f"task {job.tid} used {(rss - proc.rss0) / 1024:.0f} MB, over its allocation "
                                   f"of {job.memory} MB; its library process was stopped")
            if not limited:
                return
            await asyncio.sleep(_WATCH)

    # ---------------------------------------------------------------- temps
    async def _get_remote(self, name: str, holders: tuple[str, ...]) -> tuple[bytes | None, str]:
        why = "no holder"
        for holder in holders:
            if holder == self.worker.address:
                data = self.temps.get(name)
                if data is not None:
                    return data, ""
                continue
            try:
                got = await call(self.worker.rpc, holder, op="vinecore_temp", run=self.run, name=name)
            except Exception as exc:  # noqa: BLE001 - unreachable holder: try the next one
                why = f"{holder} unreachable ({type(exc).__name__}: {exc})"
                continue
            if isinstance(got, dict) and got.get("data") is not None:
                data = got["data"]
                return (data if isinstance(data, bytes) else bytes(data)), ""
            why = f"{holder} does not have it ({got.get('missing') if isinstance(got, dict) else got})"
        return None, why

    async def _fetch(self, job: _Job, proc: _Proc, names: list[str]) -> None:
        results = await asyncio.gather(*(self._get_remote(n, job.inputs[n]) for n in names))
        if job.killed or self.jobs.get(job.key) is not job:
            return
        missing = [n for n, (data, _) in zip(names, results) if data is None]
        if missing:
            self.jobs.pop(job.key, None)
            if job in proc.queue:
                proc.queue.remove(job)
            why = "; ".join(f"{n}: {w}" for n, (d, w) in zip(names, results) if d is None)
            self._emit(("missing", job.key, missing, why))
            return
        for name, (data, _) in zip(names, results):
            job.data[name] = data
        job.missing = set()
        self._pump(proc)

    async def _pull(self, name: str, holders: tuple[str, ...]) -> None:
        data, _ = await self._get_remote(name, tuple(h for h in holders if h != self.worker.address))
        if data is not None and not self.closed:
            self.temps.put(name, data)
        self._emit(("pulled", name, data is not None))

    # ---------------------------------------------------------------- close
    async def close(self) -> None:
        if self.closed and not self.procs:
            return
        self.closed = True
        AGENTS.pop((self.worker.address, self.run), None)
        procs, self.procs = self.procs, []
        for proc in procs:
            proc.alive = False
            if proc.writer is not None:
                proc.writer.close()
            if proc.popen is not None and proc.popen.poll() is None:
                proc.popen.kill()
        for task in list(self.tasks):
            if task is not asyncio.current_task():
                task.cancel()
        for proc in procs:
            if proc.popen is not None:
                deadline = time.monotonic() + 5
                while proc.popen.poll() is None and time.monotonic() < deadline:
                    await asyncio.sleep(0.01)
        self.temps.clear()
        self.ready.set()
        if self.comm is not None:
            try:
                await self.comm.close()
            except Exception:  # noqa: BLE001 - already closed
                pass


def _outcome(job: _Job, reason: Result, why: str, proc: _Proc, wall: float) -> bytes:
    exc: BaseException
    if reason is Result.CANCELLED:
        from concurrent.futures import CancelledError

        exc = CancelledError(why)
    elif reason is Result.RESOURCE_EXHAUSTION:
        exc = MemoryError(why)
    elif reason is Result.MAX_WALL_TIME:
        exc = TimeoutError(why)
    else:
        exc = RuntimeError(why)
    outcome = Outcome(job.tid, reason, _serialize.exception_payload(exc), "", wall, 0.0, 0.0, 0.0, proc.wid)
    return pickle.dumps(outcome, protocol=pickle.HIGHEST_PROTOCOL)


def _host_of(worker: Any) -> str | None:
    """The machine this dask worker runs on, as its address names it (its node: workers of a host share
    the node cache of remote files, see vinecore._cache)."""
    try:
        from distributed.comm.addressing import get_address_host

        return get_address_host(worker.address)
    except Exception:  # noqa: BLE001 - an address without a host part: the node is unknown
        return None
