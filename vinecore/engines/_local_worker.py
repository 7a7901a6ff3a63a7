"""Main loop of one local worker process (``python -m vinecore.engines._local_worker``).

It receives pickled messages on the socket inherited from its supervisor:
``("library", name, payload)`` installs a library (context built once, here),
``("unlibrary", name)`` drops it and its context,
``("task", spec)`` runs one attempt and answers ``("done", outcome)``, preceded, for a task with a
memory allocation, by ``("started", task_id, resident kB)``: the baseline of the supervisor's memory
watchdog (library contexts built before the task must not count against it).
End of input ends the process.

A worker never outlives its supervisor (the manager's process for the local
engine, the dask worker for the dask engine's library processes). The main
thread may be deep in a long task and not reading the socket, so a watcher
thread checks, every ``_WATCH_INTERVAL`` seconds, whether the supervisor's end
of the socket has closed (a killed supervisor's sockets are closed by the
kernel) or the process has been re-parented (the supervisor died while some
other process kept its socket open); either ends this process at once with
``os._exit``, mid-task included. ``PR_SET_PDEATHSIG`` is not used: it fires
when the *thread* that started the worker exits, and a manager may be created
in a short-lived thread.
"""

from __future__ import annotations

import os
import pickle
import select
import socket
import sys
import threading
from multiprocessing.connection import Connection

_WATCH_INTERVAL = 0.2  # seconds
ORPHAN_EXIT_STATUS = 3  # this worker's supervisor went away


def watch_supervisor(fd: int, parent: int, interval: float = _WATCH_INTERVAL) -> threading.Thread:
    """Start a daemon thread that ends this process when the socket ``fd`` hangs up or the parent changes."""

    def watch() -> None:
        poller = select.poll()
        poller.register(fd, getattr(select, "POLLRDHUP", 0))  # POLLHUP/POLLERR/POLLNVAL come regardless
        while True:
            try:
                hung_up = bool(poller.poll(interval * 1000))
            except OSError:  # pragma: no cover - EINTR is retried by Python; anything else: stop watching
                return
            if hung_up or os.getppid() != parent:
                os._exit(ORPHAN_EXIT_STATUS)

    thread = threading.Thread(target=watch, name="vinecore-watch-supervisor", daemon=True)
    thread.start()
    return thread


def _rss_kb() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)


def main(argv: list[str]) -> int:
    fd, worker_id, store_root = int(argv[0]), argv[1], argv[2]
    watch_supervisor(fd, os.getppid())
    from .._runtime import DirStore, WorkerRuntime

    conn = Connection(socket.socket(fileno=fd).detach())
    cache_mb = int(os.environ.get("VINECORE_STORE_MEMORY_MB", "256"))
    runtime = WorkerRuntime(worker_id, DirStore(store_root, memory_cache_mb=cache_mb), isolated=True)
    send, recv = conn.send_bytes, conn.recv_bytes
    dumps, loads = pickle.dumps, pickle.loads
    while True:
        try:
            msg = loads(recv())
        except (EOFError, OSError):
            return 0
        kind = msg[0]
        if kind == "task":
            spec = msg[1]
            if spec.memory:  # the supervisor's memory watchdog measures from here, after library installs
                send(dumps(("started", spec.task_id, _rss_kb()), protocol=pickle.HIGHEST_PROTOCOL))
            send(dumps(("done", runtime.execute(spec)), protocol=pickle.HIGHEST_PROTOCOL))
        elif kind == "library":
            runtime.install_library(msg[1], msg[2])
        elif kind == "unlibrary":
            runtime.uninstall_library(msg[1])
        elif kind == "stop":
            return 0


if __name__ == "__main__":
    os.environ.setdefault("MALLOC_ARENA_MAX", "2")
    sys.exit(main(sys.argv[1:]))
