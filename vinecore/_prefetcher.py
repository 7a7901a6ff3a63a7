"""The node's background downloader: one process per cache root, fed by a queue of requests.

:meth:`vinecore.NodeCache.prefetch` writes a request (``<root>/.queue/<cache name>.json``)
and makes sure this process runs: ``python <this file> ROOT LOCK_FD``, detached (a new
session), so it outlives the worker that asked and a run that ends early still
leaves the cache filled for the next one. The process

* holds ``<root>/.prefetcher`` (an exclusive ``flock``, taken by the process
  that starts it and inherited) while it runs, so a node has at most one;
* downloads every request whose time has come, at most ``$VINECORE_CACHE_DOWNLOADS``
  (default 2) at a time, at the lowest CPU and I/O priority. A request made
  with ``after_readers`` waits until no process of the node holds
  ``NodeCache.reading()`` (a run reading in place): a whole-file download costs
  about as much CPU and bandwidth as the analysis reading in place, so during
  the run it would slow the run down; after it, it is free. A reader that
  never lets go delays it by at most ``$VINECORE_PREFETCH_PATIENCE`` seconds
  (default 3600);
* removes each request once handled; a failure is one line in
  ``<root>/prefetch.log`` and leaves that url uncached;
* exits when the queue is empty. It lets go of its lock first and looks once
  more, and a caller enqueues before it tries the lock (and starts a
  prefetcher when it gets it), so a request is never left without one. (Whether
  the prefetcher's *process* is alive says nothing here: one that has looked
  for the last time may live on for a moment.)

Why a script run by path and not ``python -m vinecore._prefetcher``: the
process starts while the run is still reading, on the same cores. This file
imports only the standard library until it has something to download (about
20 ms of CPU); importing the vinecore package costs about 0.35 s, and a node
that asked for one process per file paid that for each (measured: a cold-cache
run over root:// took 1.58x the local-file run, against 1.1x read in place).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import subprocess
import sys
import time
from typing import Any

__all__ = ["enqueue", "ensure_running", "pending", "SCRIPT"]

SCRIPT = os.path.abspath(__file__)
_QUEUE = ".queue"
_LOCK = ".prefetcher"
_POLL = 0.2  # seconds between looks at the readers' lock (a reader must never wait for us)


def _queue(root: str) -> str:
    return os.path.join(root, _QUEUE)


def enqueue(root: str, name: str, request: dict[str, Any]) -> bool:
    """Queue ``request`` (url, key, identify, max_bytes, timeout, after_readers) under ``name`` (the url's
    cache name); False when a request for it is queued already."""
    folder = _queue(root)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, name + ".json")
    if os.path.exists(path):
        return False
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({**request, "queued": time.time()}, f)
    os.replace(tmp, path)
    return True


def pending(root: str) -> list[tuple[str, dict[str, Any]]]:
    """The queued requests as (path, request), oldest first."""
    folder = _queue(root)
    try:
        names = sorted(n for n in os.listdir(folder) if n.endswith(".json"))
    except FileNotFoundError:
        return []
    out = []
    for n in names:
        path = os.path.join(folder, n)
        try:
            with open(path, encoding="utf-8") as f:
                out.append((path, json.load(f)))
        except (OSError, ValueError):
            continue  # taken meanwhile
    out.sort(key=lambda pr: pr[1].get("queued", 0))
    return out


def _held(path: str) -> bool:
    """Whether another process holds a lock on ``path`` (shared or exclusive)."""
    with open(path, "a+b") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
        return False


def ensure_running(root: str) -> bool:
    """Start the node's prefetcher unless one runs; True if this call started it.

    The caller takes the prefetcher's lock and hands it to the child (an inherited descriptor: an
    ``flock`` belongs to the open file, which the child keeps after we close our copy). So there is no
    moment when a started prefetcher does not hold it yet, and a lock that is held always means a
    prefetcher that will look at the queue again."""
    lock = open(os.path.join(root, _LOCK), "a+b")
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        fd = lock.fileno()
        subprocess.Popen([sys.executable, SCRIPT, root, str(fd)], pass_fds=(fd,), stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, env=env)
        return True
    finally:
        lock.close()  # the child holds the lock now (or, if it could not start, nobody does)


# --------------------------------------------------------------- the process
def _background() -> None:
    """Yield the CPU and the disk to the workers."""
    with contextlib.suppress(OSError):
        os.nice(19)
    with contextlib.suppress(Exception):  # Linux only: the idle I/O scheduling class
        import psutil

        psutil.Process().ionice(psutil.IOPRIO_CLASS_IDLE)


def _ready(request: dict[str, Any], readers_busy: bool, patience: float) -> bool:
    if not request.get("after_readers") or not readers_busy:
        return True
    return time.time() - float(request.get("queued", 0)) > patience


def _download(root: str, path: str, request: dict[str, Any]) -> None:
    url = request.get("url", "?")
    try:
        from vinecore._cache import NodeCache
        from vinecore._fetch import apply_xrootd_settings

        timeout = float(request.get("timeout", 60.0))
        apply_xrootd_settings(timeout)
        cache = NodeCache(root, int(request["max_bytes"]), timeout=timeout)
        identify = None
        if request.get("identify"):
            import importlib

            module, _, name = request["identify"].partition(":")
            identify = getattr(importlib.import_module(module), name)
        lease = cache.get(url, key=request.get("key") or None, identify=identify)
        if lease is not None:
            lease.release()
    except Exception as exc:  # noqa: BLE001 - a failed background download only leaves the url uncached
        with contextlib.suppress(OSError), open(os.path.join(root, "prefetch.log"), "a") as log:
            log.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {url}: {type(exc).__name__}: {exc}\n")
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def _drain(root: str, lock: Any) -> None:
    """Handle requests until the queue is empty (holding ``lock``)."""
    from concurrent.futures import ThreadPoolExecutor

    slots = max(1, int(os.environ.get("VINECORE_CACHE_DOWNLOADS", "2")))
    patience = float(os.environ.get("VINECORE_PREFETCH_PATIENCE", "3600"))
    readers = os.path.join(root, ".readers")
    pool = None
    try:
        while True:
            requests = pending(root)
            if not requests:
                fcntl.flock(lock, fcntl.LOCK_UN)  # let go, then look once more (see the module's docstring)
                if not pending(root):
                    return
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return  # a new prefetcher took over
                continue
            busy = _held(readers)
            ready = [(p, r) for p, r in requests if _ready(r, busy, patience)]
            if not ready:
                time.sleep(_POLL)
                continue
            if pool is None:
                pool = ThreadPoolExecutor(slots)
            list(pool.map(lambda pr: _download(root, *pr), ready))
    finally:
        if pool is not None:
            pool.shutdown()


def main(root: str, fd: int | None = None) -> int:
    """Drain the queue of ``root``. ``fd``: the lock, taken by the process that started this one."""
    os.makedirs(root, exist_ok=True)
    lock: Any = fd
    if lock is None:  # started by hand
        lock = open(os.path.join(root, _LOCK), "a+b")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return 0  # the node has one already
    with contextlib.suppress(Exception):  # started from a task with a memory allocation: not ours
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (resource.getrlimit(resource.RLIMIT_AS)[1],) * 2)
    _background()
    _drain(root, lock)
    return 0


if __name__ == "__main__":  # python .../vinecore/_prefetcher.py ROOT [LOCK_FD]
    if len(sys.argv) not in (2, 3):
        sys.exit(f"usage: python {SCRIPT} CACHE_ROOT [LOCK_FD]")
    if sys.path and os.path.abspath(sys.path[0] or ".") == os.path.dirname(SCRIPT):
        del sys.path[0]  # run by path: this folder is not a place to import from
    sys.exit(main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) == 3 else None))
