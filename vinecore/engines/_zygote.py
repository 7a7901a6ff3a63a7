"""Worker processes forked from a copy of the manager's process (the local engine's ``fork`` start).

A local worker started afresh imports what its tasks need before the first
one runs: for a Coffea analysis in dask mode that is coffea, dask-awkward and
hist.dask, 2 to 3 s of CPU per worker (measured on the 2-core development
machine), paid again by every replacement after a crash or a memory kill. The
manager's process has already imported all of it (it loaded the analysis).

So the local engine can fork, once, a *zygote*: a copy of the manager's
process taken when the engine starts, before the engine starts any thread.
The zygote does nothing but fork worker processes on request; a worker forked
from it starts with every module the manager had, in a few milliseconds.

Policy (why it is safe enough, and when it is not used):

* Fork copies only the forking thread. Locks other threads held at that
  moment stay held in the copy, so ``auto`` forks only when the process runs
  one Python thread (a terminal ``ddr run``, a script; ddr forks before its
  run thread starts, see :func:`~vinecore.engines.local.prefork`); in
  Jupyter (kernel threads) it starts workers afresh. ``fork`` forces it,
  ``spawn`` never does it.
* The zygote lets go of what belongs to the manager: standard input is
  /dev/null, standard output and error are new file objects on the same
  descriptors (the old ones' locks may be held; /dev/null where the manager
  had them closed; engine sockets never sit on 0-2, see ``_fds``), every
  other inherited descriptor is closed, signal handlers are reset to
  Python's defaults, and
  everything alive is frozen (``gc.freeze``) so that no inherited object is
  ever finalised in the copy. The zygote and its workers end with
  ``os._exit``: the manager's ``atexit`` functions and finalisers (temporary
  directories) never run in them.
* Environment variables the engine sets for workers are applied with
  ``os.environ`` in each forked worker (``MALLOC_ARENA_MAX`` with
  ``mallopt``). Those read only when a library is imported
  (``OMP_NUM_THREADS`` for a BLAS the manager already loaded) keep the
  manager's value: pass ``start_method="spawn"`` when they matter.
* The zygote reports each worker's exit status over its control socket; a
  worker whose zygote dies is re-parented and exits (its supervisor watch),
  and the engine goes back to starting workers afresh.

Messages on the control socket (``SOCK_SEQPACKET``: one message per
datagram) are pickled tuples: ``("fork", worker id, store root, environment
updates)`` with the worker's socket passed as ``SCM_RIGHTS``, answered by
``("pid", pid)`` (or ``("error", text)``); ``("exit", pid, code)`` whenever a
worker ends (``code`` is ``-signal`` for a signal, as ``subprocess`` reports).
"""

from __future__ import annotations

import gc
import os
import pickle
import select
import signal
import socket
import subprocess
import sys
import threading
import time

from ._fds import socketpair

__all__ = ["ForkFailed", "ForkedProcess", "Zygote", "ZygoteGone", "can_fork"]

_MSG_MAX = 1 << 16


def can_fork() -> bool:
    """Whether ``start_method="auto"`` forks here: a POSIX fork and a single Python thread."""
    return hasattr(os, "fork") and sys.platform.startswith("linux") and threading.active_count() == 1


class ZygoteGone(OSError):
    """The zygote process has ended; start workers afresh instead."""


class ForkFailed(OSError):
    """The zygote could not fork (out of memory, process limit)."""


class Zygote:
    """The manager's side: fork the zygote now, then ask it for workers."""

    def __init__(self) -> None:
        ours, theirs = socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)  # one message per datagram
        for stream in (sys.stdout, sys.stderr):  # what is buffered is written once, not by every copy
            try:
                stream.flush()
            except (AttributeError, OSError, ValueError):  # None, or closed
                pass
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the zygote (tested through the engine)
            gc.freeze()  # first: a collection here could finalise the manager's garbage (a temp directory)
            code = 70
            try:
                ours.close()
                code = _serve(theirs)
            finally:
                os._exit(code)
        theirs.close()
        self.pid = pid
        self.sock = ours
        self.exits: dict[int, int] = {}
        self.lock = threading.Lock()
        self.alive = True

    def spawn(self, worker_fd: int, wid: str, store_root: str, env: dict[str, str]) -> "ForkedProcess":
        """A new worker whose end of its socket pair is ``worker_fd`` (closed by the caller), with the
        environment variables ``env`` (those that differ from this process's are sent)."""
        updates = {k: v for k, v in env.items() if os.environ.get(k) != v}
        with self.lock:
            if not self.alive:
                raise ZygoteGone(f"the worker zygote (pid {self.pid}) was closed")
            try:
                socket.send_fds(self.sock, [pickle.dumps(("fork", wid, store_root, updates))], [worker_fd])
                while True:
                    msg = self._recv()
                    if msg[0] == "pid":
                        return ForkedProcess(msg[1], self)
                    if msg[0] == "error":
                        raise ForkFailed(msg[1])
            except (ConnectionError, EOFError, pickle.UnpicklingError) as exc:
                self.alive = False
                raise ZygoteGone(f"the worker zygote (pid {self.pid}) is gone: {exc}") from exc

    def _recv(self) -> tuple:
        """One message (blocking), recording exits."""
        data = self.sock.recv(_MSG_MAX)
        if not data:
            raise ConnectionResetError("the zygote closed its socket")
        msg = pickle.loads(data)
        if msg[0] == "exit":
            self.exits[msg[1]] = msg[2]
        return msg

    def exit_code(self, pid: int, timeout: float | None) -> int | None:
        """``pid``'s exit status, waiting at most ``timeout`` seconds (None: as long as it takes); None
        if it has not ended by then or the zygote is gone."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.lock:
            while pid not in self.exits and self.alive:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                if not select.select([self.sock], [], [], left)[0]:
                    break  # nothing more to read within the timeout
                try:
                    self._recv()
                except (ConnectionError, EOFError, pickle.UnpicklingError):
                    self.alive = False
            return self.exits.pop(pid, None)

    def close(self) -> None:
        """End the zygote (it exits when its socket closes) and reap it; closing twice does nothing."""
        if self.sock.fileno() < 0:
            return
        self.alive = False
        try:
            self.sock.close()
        finally:
            deadline = time.monotonic() + 5.0  # it exits at once; a stuck one is killed, never waited on forever
            try:
                while os.waitpid(self.pid, os.WNOHANG)[0] == 0:
                    if time.monotonic() > deadline:
                        os.kill(self.pid, signal.SIGKILL)
                        os.waitpid(self.pid, 0)
                        break
                    time.sleep(0.005)
            except ChildProcessError:
                pass


class ForkedProcess:
    """The part of ``subprocess.Popen`` the local engine uses, for a worker forked by the zygote."""

    def __init__(self, pid: int, zygote: Zygote) -> None:
        self.pid, self.zygote, self.returncode = pid, zygote, None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self.zygote.exit_code(self.pid, 0.0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int | None:
        if self.returncode is None:
            code = self.zygote.exit_code(self.pid, timeout)
            if code is None and self.zygote.alive:
                raise subprocess.TimeoutExpired(f"worker pid {self.pid}", timeout)
            self.returncode = code
        return self.returncode

    def kill(self) -> None:
        if self.poll() is None:  # not reported as ended, so not reaped: the pid is still this worker's
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


# ----------------------------------------------------------- the zygote
def _serve(sock: socket.socket) -> int:  # pragma: no cover - runs in the zygote
    _let_go(sock.fileno())
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C is the manager's to handle
    gc.freeze()  # what the zygote made so far, too: its workers never collect it
    children: set[int] = set()
    while True:
        ready = select.select([sock, wake_r], [], [])[0]
        if wake_r in ready:
            os.read(wake_r, 4096)
        _reap(sock, children)
        if sock not in ready:
            continue
        try:
            data, fds, _, _ = socket.recv_fds(sock, _MSG_MAX, 1)
        except OSError:
            return 0
        if not data:
            return 0  # the manager closed the engine, or died: the workers notice on their own sockets
        _, wid, store_root, updates = pickle.loads(data)
        try:
            pid = os.fork()
        except OSError as exc:
            for fd in fds:
                os.close(fd)
            sock.sendall(pickle.dumps(("error", f"fork failed: {exc}")))
            continue
        if pid == 0:
            code = 1
            try:
                sock.close()
                os.close(wake_r)
                os.close(wake_w)
                signal.set_wakeup_fd(-1)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.default_int_handler)
                os.environ.update(updates)
                _limit_malloc_arenas(os.environ.get("MALLOC_ARENA_MAX"))
                from ._local_worker import main

                code = main([str(fds[0]), wid, store_root])
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:
                import traceback

                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        for fd in fds:
            os.close(fd)
        children.add(pid)
        sock.sendall(pickle.dumps(("pid", pid)))


def _reap(sock: socket.socket, children: set[int]) -> None:  # pragma: no cover - runs in the zygote
    for pid in list(children):
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            children.discard(pid)
            continue
        if done:
            children.discard(pid)
            code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.waitstatus_to_exitcode(status)
            try:
                sock.sendall(pickle.dumps(("exit", pid, code)))
            except OSError:
                pass


def _let_go(keep: int) -> None:  # pragma: no cover - runs in the zygote
    """Drop what belongs to the manager: its descriptors, stdio objects and signal handlers."""
    _on_devnull(0, os.O_RDONLY)
    for fd in (1, 2):  # closed in the manager (a daemon, `>&-`): /dev/null, so the stdio objects can open
        try:
            os.fstat(fd)
        except OSError:
            _on_devnull(fd, os.O_WRONLY)
    os.closerange(3, keep)
    os.closerange(keep + 1, _max_fd())
    sys.stdin = open(0, closefd=False)
    sys.stdout = open(1, "w", buffering=1, closefd=False)
    sys.stderr = open(2, "w", buffering=1, closefd=False)
    sys.__stdin__, sys.__stdout__, sys.__stderr__ = sys.stdin, sys.stdout, sys.stderr
    try:
        signal.set_wakeup_fd(-1)
    except ValueError:
        pass
    for sig in signal.valid_signals():
        try:
            handler = signal.getsignal(sig)
        except ValueError:
            continue
        if callable(handler) and handler is not signal.default_int_handler:
            signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _on_devnull(fd: int, flags: int) -> None:  # pragma: no cover - runs in the zygote
    null = os.open(os.devnull, flags)  # the lowest free descriptor: ``fd`` itself if that is closed
    if null != fd:
        os.dup2(null, fd)
        os.close(null)


def _max_fd() -> int:
    try:
        return max(int(name) for name in os.listdir("/proc/self/fd")) + 1
    except (OSError, ValueError):
        return os.sysconf("SC_OPEN_MAX")


def _limit_malloc_arenas(value: str | None) -> None:  # pragma: no cover - runs in the zygote
    """``MALLOC_ARENA_MAX`` is read when the process starts; a forked one sets it with ``mallopt``."""
    if not value or not value.isdigit():
        return
    try:
        import ctypes

        ctypes.CDLL(None).mallopt(-8, int(value))  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass
