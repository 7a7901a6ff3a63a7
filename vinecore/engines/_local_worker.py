"""Main loop of one local worker process (``python -m vinecore.engines._local_worker``).

It receives pickled messages on the socket inherited from its supervisor:
``("library", name, payload)`` installs a library (context built once, here),
``("unlibrary", name)`` drops it and its context,
``("task", spec)`` runs one attempt and answers ``("done", outcome)``.
End of input ends the process.
"""

from __future__ import annotations

import os
import pickle
import socket
import sys
from multiprocessing.connection import Connection


def main(argv: list[str]) -> int:
    fd, worker_id, store_root = int(argv[0]), argv[1], argv[2]
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
            send(dumps(("done", runtime.execute(msg[1])), protocol=pickle.HIGHEST_PROTOCOL))
        elif kind == "library":
            runtime.install_library(msg[1], msg[2])
        elif kind == "unlibrary":
            runtime.uninstall_library(msg[1])
        elif kind == "stop":
            return 0


if __name__ == "__main__":
    os.environ.setdefault("MALLOC_ARENA_MAX", "2")
    sys.exit(main(sys.argv[1:]))
