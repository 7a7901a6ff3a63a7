"""The local engine: worker processes on this machine (the default engine).

Each worker is a long-lived Python process (``vinecore.engines._local_worker``)
that runs one task at a time and keeps its library contexts across tasks. The
processes share a store directory, so a temp written by one is read by another
without passing through the manager. ``start_method`` says how they start:
forked from a zygote, a copy of the manager's process with everything it
imported (``fork``; see :mod:`vinecore.engines._zygote`), or afresh with
``python -m`` (``spawn``); ``auto`` forks when the process runs one thread.

This adapter supervises them from the manager's process:

* a task whose process dies (``os._exit``, a segfault, the OOM killer) ends as
  ``worker lost`` and the process is replaced (contexts rebuilt there);
* a task still running ``time_max + grace`` seconds after it started is killed
  and ends as ``max wall time`` (the in-process SIGALRM comes first when the
  task is in Python code);
* a task whose process's resident memory exceeds the resident size when the
  task started (reported by the worker, after any library context was built)
  plus the task's memory allocation is killed and ends as
  ``resource exhaustion`` (the in-process address-space limit usually turns
  such an allocation into a MemoryError first, keeping the process alive);
* cancelling a running task kills its process, which is then replaced.

Messages go through one socket pair per worker; sends happen on a sender
thread per worker so that a large library payload can never deadlock against
a large result coming the other way.
"""

from __future__ import annotations

import os
import pickle
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait as wait_connections

from ._fds import socketpair
from ._zygote import ForkedProcess, Zygote, ZygoteGone, can_fork
from .._events import Event, Result, TaskFinished, WorkerJoined, WorkerRemoved
from .._runtime import DirStore, Outcome, TaskSpec
from ..exceptions import EngineError

__all__ = ["LocalEngine", "prefork"]

_GRACE = 2.0  # seconds past time_max before the supervisor kills
_WATCH_INTERVAL = 0.05  # seconds between watchdog checks while limited tasks run
_PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


@dataclass
class _Proc:
    wid: str
    popen: "subprocess.Popen | ForkedProcess"
    conn: Connection
    outbox: "queue.SimpleQueue[bytes | None]"
    running: TaskSpec | None = None
    started: float = 0.0
    rss0_kb: int | None = None
    kill_reason: Result | None = None
    sender: threading.Thread | None = field(default=None, repr=False)


class LocalEngine:
    name = "local"

    def __init__(self, workers: int | None = None, *, run_dir: str, cores_per_worker: int = 1,
                 env: dict[str, str] | None = None, prefix: str = "local-", start_method: str | None = None,
                 zygote: Zygote | None = None) -> None:
        if workers is not None and workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        if cores_per_worker < 1:
            raise ValueError(f"cores_per_worker must be at least 1, got {cores_per_worker}")
        self.start_method = _resolve(start_method, env)
        # default: as many workers of this size as the machine's cores hold (at least one)
        self.n_workers = workers or max(1, (os.cpu_count() or 1) // cores_per_worker)
        self.cores = cores_per_worker
        self.store = DirStore(os.path.join(run_dir, "store"))
        self.env = dict(os.environ)
        self.env.update(env or {})
        self.env.setdefault("MALLOC_ARENA_MAX", "2")
        self.env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        self.env["VINECORE_CORES"] = str(cores_per_worker)
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            self.env.setdefault(var, str(cores_per_worker))
        self.prefix = prefix  # worker ids are prefix + a counter, unique for this engine's life
        self.procs: dict[str, _Proc] = {}
        self.by_conn: dict[Connection, _Proc] = {}
        self.libraries: dict[str, bytes] = {}
        self.pending: list[Event] = []
        self._count = 0
        self._closed = False
        # the process workers are forked from (see _zygote): given (forked by the caller earlier, while it
        # ran one thread) or made by start()
        self.zygote = zygote if self.start_method != "spawn" else None
        if zygote is not None and self.zygote is None:
            zygote.close()

    # -------------------------------------------------------------- workers
    def start(self) -> list[Event]:
        if self.zygote is None:
            self.zygote = prefork(self.start_method)  # before any thread of this engine exists
        return [self._spawn() for _ in range(self.n_workers)]

    def _spawn(self) -> WorkerJoined:
        wid = f"{self.prefix}{self._count}"
        self._count += 1
        parent, child = socketpair()
        try:
            popen = self._forked(child.fileno(), wid) or subprocess.Popen(
                [sys.executable, "-m", "vinecore.engines._local_worker", str(child.fileno()), wid, self.store.root],
                pass_fds=[child.fileno()], env=self.env, stdin=subprocess.DEVNULL)
        except OSError as exc:
            raise EngineError(f"could not start a local worker process with {sys.executable}: {exc}") from exc
        finally:
            child.close()
        conn = Connection(parent.detach())
        proc = _Proc(wid, popen, conn, queue.SimpleQueue())
        proc.sender = threading.Thread(target=_sender, args=(conn, proc.outbox), daemon=True,
                                       name=f"vinecore-send-{wid}")
        proc.sender.start()
        self.procs[wid] = proc
        self.by_conn[conn] = proc
        for name, payload in self.libraries.items():
            proc.outbox.put(pickle.dumps(("library", name, payload), protocol=pickle.HIGHEST_PROTOCOL))
        return WorkerJoined(wid, cores=self.cores, slots=1)

    def _forked(self, fd: int, wid: str) -> "ForkedProcess | None":
        """A worker forked by the zygote; None (start one afresh) without a zygote or once it is gone."""
        if self.zygote is None:
            return None
        try:
            return self.zygote.spawn(fd, wid, self.store.root, self.env)
        except ZygoteGone:
            self.zygote.close()
            self.zygote = None
            return None

    def _retire(self, proc: _Proc, reason: Result, why: str) -> None:
        """Record the death of ``proc``; report its task; start a replacement."""
        self.procs.pop(proc.wid, None)
        self.by_conn.pop(proc.conn, None)
        proc.outbox.put(None)
        try:
            proc.popen.kill()
        except OSError:
            pass
        code = proc.popen.wait()
        proc.conn.close()
        spec = proc.running
        if spec is not None:
            if reason is Result.WORKER_LOST:
                why = f"{why} (exit status {_describe_exit(code)})"
            outcome = Outcome(spec.task_id, reason, pickle.dumps(_engine_error(reason, why)), "",
                              time.monotonic() - proc.started, 0.0, 0.0, 0.0, proc.wid)
            self.pending.append(TaskFinished(spec.task_id, proc.wid, reason, outcome))
        self.pending.append(WorkerRemoved(proc.wid, why))
        if not self._closed:
            self.pending.append(self._spawn())

    # ---------------------------------------------------------------- tasks
    def install_library(self, name: str, payload: bytes) -> None:
        self.libraries[name] = payload
        msg = pickle.dumps(("library", name, payload), protocol=pickle.HIGHEST_PROTOCOL)
        for proc in self.procs.values():
            proc.outbox.put(msg)

    def remove_library(self, name: str) -> None:
        if self.libraries.pop(name, None) is None:
            return
        msg = pickle.dumps(("unlibrary", name), protocol=pickle.HIGHEST_PROTOCOL)
        for proc in self.procs.values():
            proc.outbox.put(msg)

    def execute(self, worker_id: str, spec: TaskSpec) -> None:
        proc = self.procs.get(worker_id)
        if proc is None:
            outcome = Outcome(spec.task_id, Result.WORKER_LOST, None, "", 0, 0, 0, 0, worker_id)
            self.pending.append(TaskFinished(spec.task_id, worker_id, Result.WORKER_LOST, outcome))
            return
        proc.running = spec
        proc.started = time.monotonic()
        proc.kill_reason = None
        proc.rss0_kb = None  # set when the worker says it started the task (after any library install)
        proc.outbox.put(pickle.dumps(("task", spec), protocol=pickle.HIGHEST_PROTOCOL))

    def kill(self, task_id: int, worker_id: str) -> None:
        proc = self.procs.get(worker_id)
        if proc is not None and proc.running is not None and proc.running.task_id == task_id:
            self._retire(proc, Result.CANCELLED, f"task {task_id} was cancelled; its worker process was stopped")

    def poll(self, timeout: float | None) -> list[Event]:
        if self.pending:
            out, self.pending = self.pending, []
            return out
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            watch = any(p.running is not None and (p.running.time_max or p.running.memory)
                        for p in self.procs.values())
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            step = remaining
            if watch:
                step = _WATCH_INTERVAL if step is None else min(step, _WATCH_INTERVAL)
            ready = wait_connections(list(self.by_conn), step)
            for conn in ready:
                proc = self.by_conn.get(conn)
                if proc is None:
                    continue
                try:
                    msg = pickle.loads(conn.recv_bytes())
                except (EOFError, OSError):
                    self._retire(proc, Result.WORKER_LOST, f"worker {proc.wid} (pid {proc.popen.pid}) died")
                    continue
                if msg[0] == "started":
                    if proc.running is not None and proc.running.task_id == msg[1]:
                        proc.rss0_kb = msg[2]
                    continue
                outcome: Outcome = msg[1]
                proc.running = None
                self.pending.append(TaskFinished(outcome.task_id, proc.wid, outcome.result, outcome,
                                                 held_on=proc.wid))
            if watch:
                self._watchdog()
            if self.pending or (remaining is not None and remaining <= 0):
                out, self.pending = self.pending, []
                return out

    def _watchdog(self) -> None:
        now = time.monotonic()
        for proc in list(self.procs.values()):
            spec = proc.running
            if spec is None:
                continue
            if spec.time_max and now - proc.started > spec.time_max + _GRACE:
                self._retire(proc, Result.MAX_WALL_TIME,
                             f"task {spec.task_id} ran over its time_max of {spec.time_max} s; its worker was stopped")
            elif spec.memory and proc.rss0_kb is not None:
                rss = _rss_kb(proc.popen.pid)
                if rss and rss - proc.rss0_kb > spec.memory * 1024:
                    self._retire(proc, Result.RESOURCE_EXHAUSTION,
                                 f"task {spec.task_id} used {(rss - proc.rss0_kb) / 1024:.0f} MB, over its "
                                 f"allocation of {spec.memory} MB; its worker was stopped")

    # ----------------------------------------------------------------- data
    def fetch(self, cache_name: str) -> bytes:
        return self.store.get(cache_name)

    def release(self, cache_name: str) -> None:
        self.store.delete(cache_name)

    def worker_pids(self) -> dict[str, int]:
        return {wid: p.popen.pid for wid, p in self.procs.items()}

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        procs = list(self.procs.values())
        for proc in procs:
            proc.outbox.put(None)
            try:
                proc.conn.close()
            except OSError:
                pass
        deadline = time.monotonic() + 2.0
        for proc in procs:
            try:
                proc.popen.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.popen.kill()
                proc.popen.wait()
        self.procs.clear()
        self.by_conn.clear()
        if self.zygote is not None:
            self.zygote.close()
            self.zygote = None


def _resolve(start_method: str | None, env: dict[str, str] | None) -> str:
    """``auto`` forks when it is safe (one Python thread) and no environment was asked for (a variable
    read at import time would keep the manager's value in a forked worker)."""
    method = start_method or os.environ.get("VINECORE_START_METHOD") or "auto"
    if method not in ("auto", "fork", "spawn"):
        raise ValueError(f"start_method must be 'auto', 'fork' or 'spawn', got {method!r}")
    return "spawn" if method == "auto" and env else method


def prefork(start_method: str | None = None, env: dict[str, str] | None = None) -> Zygote | None:
    """Fork the zygote of a :class:`LocalEngine` made later (pass it as ``zygote=``), now, while the
    caller's process runs one thread: ddr does this before its run thread starts. None when the engine
    would not fork (``spawn``, an ``env``, other threads running under ``auto``)."""
    method = _resolve(start_method, env)
    if method == "fork" or (method == "auto" and can_fork()):
        return Zygote()
    return None


def _sender(conn: Connection, outbox: "queue.SimpleQueue[bytes | None]") -> None:
    while True:
        msg = outbox.get()
        if msg is None:
            return
        try:
            conn.send_bytes(msg)
        except OSError:
            return


def _rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * _PAGE_KB
    except (OSError, ValueError, IndexError):
        return 0


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "exit status unknown"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _engine_error(reason: Result, why: str) -> BaseException:
    if reason is Result.RESOURCE_EXHAUSTION:
        return MemoryError(why)
    if reason is Result.MAX_WALL_TIME:
        return TimeoutError(why)
    return RuntimeError(why)
