"""A library process beside a dask worker (``python -m vinecore.engines._dask_library``).

It runs one attempt at a time with :class:`~vinecore._runtime.WorkerRuntime`
(address-space limit, time limit, measurements) and keeps its library contexts
across attempts. Its agent (:mod:`vinecore.engines._dask_pool`, inside the dask
worker) talks to it over one socket pair, in frames of a pickled header plus raw
byte blobs, so temps are never pickled twice:

``("lib", name) [payload]``              install a library (context built once, here)
``("unlib", name)``                      drop it; its context's ``close()`` is called
``("task", key, [input names]) [spec, *inputs]``
                                         run one attempt with these temps as inputs; answers
``("done", key, result, [temp names]) [outcome, *temps]``

Temps live in this process's memory for the attempt only: inputs arrive with the
task, outputs leave with the answer. End of input ends the process, and so does
the death of the dask worker (``PR_SET_PDEATHSIG``, and a parent-pid watch).
"""

from __future__ import annotations

import os
import pickle
import socket
import struct
import sys
import threading
import time

from .._runtime import DirStore

__all__ = ["TaskStore", "frame", "write_frame", "read_frame", "read_frame_async", "main"]

_PREFIX = struct.Struct("<QI")  # pickled header length, number of blobs
_PR_SET_PDEATHSIG = 1


def frame(head: tuple, blobs: list) -> list:
    """The pieces of one frame: prefix, blob lengths, pickled header, blobs."""
    h = pickle.dumps(head, protocol=pickle.HIGHEST_PROTOCOL)
    return [_PREFIX.pack(len(h), len(blobs)) + struct.pack(f"<{len(blobs)}Q", *map(len, blobs)) + h, *blobs]


def write_frame(sock: socket.socket, head: tuple, blobs: list = ()) -> None:
    for piece in frame(head, list(blobs)):
        sock.sendall(piece)


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            raise EOFError("the agent closed the connection")
        got += k
    return bytes(buf)


def read_frame(sock: socket.socket) -> tuple[tuple, list[bytes]]:
    hlen, n = _PREFIX.unpack(_recv_exactly(sock, _PREFIX.size))
    lens = struct.unpack(f"<{n}Q", _recv_exactly(sock, 8 * n)) if n else ()
    head = pickle.loads(_recv_exactly(sock, hlen))
    return head, [_recv_exactly(sock, k) for k in lens]


async def read_frame_async(reader) -> tuple[tuple, list[bytes]]:
    """The same, from an ``asyncio.StreamReader``; raises ``asyncio.IncompleteReadError`` at EOF."""
    hlen, n = _PREFIX.unpack(await reader.readexactly(_PREFIX.size))
    lens = struct.unpack(f"<{n}Q", await reader.readexactly(8 * n)) if n else ()
    head = pickle.loads(await reader.readexactly(hlen))
    return head, [await reader.readexactly(k) for k in lens]


def _die_with_parent(parent: int) -> None:
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, 9, 0, 0, 0)  # SIGKILL when the dask worker dies
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass

    def watch() -> None:
        while True:
            if os.getppid() != parent:
                os._exit(0)
            time.sleep(0.5)

    if os.getppid() != parent:
        os._exit(0)
    threading.Thread(target=watch, daemon=True, name="vinecore-parent-watch").start()


class TaskStore(DirStore):
    """Temps in memory (this attempt's inputs and outputs); declared buffers and urls on disk, shared."""

    def __init__(self, root: str) -> None:
        super().__init__(root, memory_cache_mb=0)
        self.temps: dict[str, bytes] = {}
        self.scratch = os.path.join(root, f".scratch-{os.getpid()}")

    def has(self, cache_name: str) -> bool:
        return cache_name in self.temps or super().has(cache_name)

    def put(self, cache_name: str, data: bytes) -> None:
        self.temps[cache_name] = data

    def get(self, cache_name: str) -> bytes:
        data = self.temps.get(cache_name)
        return data if data is not None else super().get(cache_name)

    def delete(self, cache_name: str) -> None:
        self.temps.pop(cache_name, None)

    def materialise(self, kind: str, cache_name: str, source) -> str:
        if kind == "temp":  # a sandbox file: written for this attempt only
            os.makedirs(self.scratch, exist_ok=True)
            path = os.path.join(self.scratch, cache_name)
            with open(path, "wb") as f:
                f.write(self.get(cache_name))
            return path
        if kind == "buffer":
            path = self.path(cache_name)
            if not os.path.exists(path):
                DirStore.put(self, cache_name, source)
            return path
        return super().materialise(kind, cache_name, source)

    def clear(self) -> None:
        self.temps.clear()
        if os.path.isdir(self.scratch):
            for name in os.listdir(self.scratch):
                os.unlink(os.path.join(self.scratch, name))


def main(argv: list[str]) -> int:
    fd, worker_id, store_root, parent = int(argv[0]), argv[1], argv[2], int(argv[3])
    _die_with_parent(parent)
    from .._events import Result
    from .._runtime import Outcome, WorkerRuntime
    from .. import _serialize

    sock = socket.socket(fileno=fd)
    store = TaskStore(store_root)
    runtime = WorkerRuntime(worker_id, store, isolated=True)
    while True:
        try:
            head, blobs = read_frame(sock)
        except (EOFError, OSError):
            return 0
        kind = head[0]
        if kind == "task":
            key, names = head[1], head[2]
            spec = pickle.loads(blobs[0])
            store.temps.update(zip(names, blobs[1:]))
            outcome = runtime.execute(spec)
            out_names = [spec.output_temp] if spec.output_temp else []
            out_names += [c for k, c, _, _ in spec.outputs if k == "temp"]
            temps = []
            if outcome.result is Result.SUCCESS:
                for name in out_names:
                    data = store.temps.get(name)
                    if data is None:
                        err = RuntimeError(f"task {spec.task_id} succeeded but did not produce its temp {name}")
                        outcome = Outcome(spec.task_id, Result.EXCEPTION, _serialize.exception_payload(err),
                                          outcome.std_output, outcome.wall_time, outcome.cpu_time,
                                          outcome.memory, outcome.peak_rss, worker_id)
                        temps = []
                        break
                    temps.append(data)
            store.clear()
            write_frame(sock, ("done", key, outcome.result.value, out_names if temps else []),
                        [pickle.dumps(outcome, protocol=pickle.HIGHEST_PROTOCOL), *temps])
        elif kind == "lib":
            runtime.install_library(head[1], blobs[0])
        elif kind == "unlib":
            runtime.uninstall_library(head[1])
    return 0


if __name__ == "__main__":
    os.environ.setdefault("MALLOC_ARENA_MAX", "2")
    sys.exit(main(sys.argv[1:]))
