"""The engine conformance suite: the same checks for every engine.

Each ``check_*`` function takes a factory ``make(workers=2, **kw) -> Manager``
and a scratch directory, drives a real manager and asserts the documented
behaviour. ``tests/vinecore/test_engines.py`` runs every check on every engine
(``sync``, ``local``, and ``dask`` against real scheduler and worker processes).

Tasks here communicate with the test only through files, so the checks hold
whether the task runs in this process, a local worker, or a dask worker.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from typing import Callable

from . import FunctionCall, Manager, ManagerClosedError, PythonTask, TaskSubmissionError, current_worker

__all__ = ["CHECKS", "run_all", "DaskProcesses"]

MakeManager = Callable[..., Manager]


# ------------------------------------------------------------- task bodies
def _add(a, b):
    print("adding", a, b)
    return a + b


def _boom(msg):
    raise ValueError(msg)


def _log_line(path, text):
    with open(path, "a") as f:
        f.write(text + "\n")


def _context(log_path):
    wid = current_worker().worker_id if current_worker() else "?"
    _log_line(log_path, f"{wid} {os.getpid()}")
    return {"worker": wid, "pid": os.getpid(), "token": os.urandom(8).hex()}


def _whoami(i):
    from vinecore import load_variable_from_library

    return i, load_variable_from_library("worker"), load_variable_from_library("token")


class _ClosableContext(dict):
    def close(self):
        _log_line(self["log"], f"closed {self['worker']} {os.getpid()}")


def _closable_context(log_path):
    wid = current_worker().worker_id if current_worker() else "?"
    _log_line(log_path, f"built {wid} {os.getpid()}")
    return _ClosableContext(worker=wid, log=log_path)


def _ping(i):
    return i


def _make_dict(n):
    return {"n": n, "payload": list(range(n))}


def _sum_n(*dicts):
    return sum(d["n"] for d in dicts)


def _read_input(name):
    with open(name, "rb") as f:
        return f.read()


def _write_output(name, data):
    with open(name, "wb") as f:
        f.write(data)
    return len(data)


def _hog(mb):
    import numpy as np

    a = np.ones(mb * 1024 * 1024 // 8)
    return float(a.sum())


def _sleep(seconds, log_path=None, name=None):
    if log_path:
        _log_line(log_path, f"start {name} {os.getpid()}")
    time.sleep(seconds)
    return seconds


def _sleep_in(pid_path, seconds):
    with open(pid_path, "w") as f:
        f.write(str(os.getpid()))
    time.sleep(seconds)
    return seconds


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (killed, not yet reaped by its parent) is not running
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def _exit_now(code):
    os._exit(code)


def _flaky(counter_path, failures):
    with open(counter_path, "a+") as f:
        f.seek(0)
        seen = len(f.read().splitlines())
        f.write("x\n")
    if seen < failures:
        raise RuntimeError(f"flaky failure {seen + 1}")
    return seen


def _drain(m: Manager, timeout: float = 60.0) -> list:
    done = []
    deadline = time.monotonic() + timeout
    while not m.empty():
        t = m.wait(max(0.1, deadline - time.monotonic()))
        assert time.monotonic() < deadline, f"tasks still unfinished after {timeout} s: {m.statistics()}"
        if t is not None:
            done.append(t)
    return done


# ------------------------------------------------------------------ checks
def check_python_task(make: MakeManager, tmp: str) -> None:
    with make() as m:
        t = PythonTask(_add, 40, b=2)
        tid = m.submit(t)
        assert tid == t.id
        got = m.wait(30)
        assert got is t and t.result == "success", (t.result, t.output)
        assert t.output == 42
        assert "adding 40 2" in t.std_output
        assert t.resources_measured is not None and t.resources_measured.wall_time >= 0
        assert t.worker is not None
        assert m.wait(0) is None and m.empty()


def check_remote_exception(make: MakeManager, tmp: str) -> None:
    with make() as m:
        t = PythonTask(_boom, "kaboom 17")
        m.submit(t)
        assert m.wait(30) is t
        assert t.result == "exception"
        assert isinstance(t.output, ValueError) and "kaboom 17" in str(t.output)
        tb = t.output.remote_traceback
        assert "_boom" in tb and "ValueError: kaboom 17" in tb, tb
        assert "kaboom 17" in t.std_output


def check_library_context_once_per_worker(make: MakeManager, tmp: str) -> None:
    log = os.path.join(tmp, "contexts.log")
    with make(workers=2) as m:
        lib = m.create_library_from_functions("ctx", _whoami, library_context_info=[_context, [log], {}],
                                              hoisting_modules=["json"])
        m.install_library(lib)
        for i in range(24):
            m.submit(FunctionCall("ctx", "_whoami", i))
        done = _drain(m)
        assert all(t.result == "success" for t in done), [(t.result, t.output) for t in done]
        assert sorted(t.output[0] for t in done) == list(range(24))
        with open(log) as f:
            builds = [line.split()[0] for line in f.read().splitlines()]
        assert len(builds) == len(set(builds)), f"a context was built twice on one worker: {builds}"
        tokens: dict[str, set[str]] = {}
        for t in done:
            tokens.setdefault(t.output[1], set()).add(t.output[2])
        assert set(tokens) <= set(builds)
        assert all(len(v) == 1 for v in tokens.values()), f"calls on one worker saw different contexts: {tokens}"


def check_remove_library(make: MakeManager, tmp: str) -> None:
    log = os.path.join(tmp, "library.log")

    def lines(kind):
        if not os.path.exists(log):
            return []
        with open(log) as f:
            return sorted(line.split(" ", 1)[1] for line in f.read().splitlines() if line.startswith(kind))

    with make(workers=2) as m:
        lib = m.create_library_from_functions("gone", _ping, _sleep, library_context_info=[_closable_context, [log], {}])
        m.install_library(lib)
        for i in range(6):
            m.submit(FunctionCall("gone", "_ping", i))
        assert sorted(t.output for t in _drain(m)) == list(range(6))
        m.submit(FunctionCall("gone", "_sleep", 0.2))
        try:
            m.remove_library("gone")
        except TaskSubmissionError as exc:
            assert "unfinished" in str(exc), exc
        else:
            raise AssertionError("remove_library() accepted a library with a call in flight")
        assert [t.result for t in _drain(m)] == ["success"]
        m.remove_library("gone")
        try:
            m.submit(FunctionCall("gone", "_ping", 0))
        except TaskSubmissionError as exc:
            assert "not installed" in str(exc), exc
        else:
            raise AssertionError("a FunctionCall to a removed library was accepted")
        deadline = time.monotonic() + 30
        while lines("closed") != lines("built") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert lines("built") and lines("closed") == lines("built"), (lines("built"), lines("closed"))
        m.install_library(m.create_library_from_functions("gone", _ping,
                                                          library_context_info=[_closable_context, [log], {}]))
        m.submit(FunctionCall("gone", "_ping", 7))
        assert [t.output for t in _drain(m)] == [7]


def check_temp_between_tasks(make: MakeManager, tmp: str) -> None:
    with make() as m:
        p1, p2 = PythonTask(_make_dict, 3), PythonTask(_make_dict, 4)
        f1, f2 = p1.enable_temp_output(), p2.enable_temp_output()
        consumer = PythonTask(_sum_n, f1, f2)
        m.submit(consumer)  # submitted first: must wait for its inputs
        m.submit(p1)
        m.submit(p2)
        done = {t.id: t for t in _drain(m)}
        assert done[p1.id].result == "success" and p1.output is None  # the value stayed on the worker
        assert consumer.result == "success" and consumer.output == 7, (consumer.result, consumer.output)
        assert m.fetch_value(f1) == {"n": 3, "payload": [0, 1, 2]}
        buf = m.declare_buffer(b"hello vine")
        reader = PythonTask(_read_input, "in.txt")
        reader.add_input(buf, "in.txt")
        out = m.declare_temp()
        writer = PythonTask(_write_output, "out.bin", b"written")
        writer.add_output(out, "out.bin")
        m.submit(reader)
        m.submit(writer)
        _drain(m)
        assert reader.output == b"hello vine", (reader.result, reader.output)
        assert writer.result == "success" and m.fetch_file(out) == b"written"


def check_memory_exhaustion(make: MakeManager, tmp: str) -> None:
    with make(workers=2) as m:
        keep = PythonTask(_make_dict, 5)
        kept = keep.enable_temp_output()
        m.submit(keep)
        _drain(m)
        hog = PythonTask(_hog, 400)
        hog.set_memory(200)
        normal = PythonTask(_add, 1, 1)
        normal.set_memory(200)
        m.submit(hog)
        m.submit(normal)
        _drain(m)
        assert hog.result == "resource exhaustion", (hog.result, hog.output)
        assert normal.result == "success" and normal.output == 2
        after = PythonTask(_sum_n, kept)
        m.submit(after)
        _drain(m)
        assert after.result == "success" and after.output == 5, (after.result, after.output)


def check_time_limit(make: MakeManager, tmp: str) -> None:
    with make() as m:
        t = PythonTask(_sleep, 30)
        t.set_time_max(1)
        t0 = time.monotonic()
        m.submit(t)
        _drain(m)
        assert t.result == "max wall time", (t.result, t.output)
        assert time.monotonic() - t0 < 10
        ok = PythonTask(_add, 2, 3)
        m.submit(ok)
        _drain(m)
        assert ok.output == 5


def check_exit_in_task(make: MakeManager, tmp: str) -> None:
    log = os.path.join(tmp, "contexts.log")
    with make(workers=1) as m:
        if getattr(m.engine, "in_process", False):
            return  # os._exit would end the caller's own process: nothing to check
        lib = m.create_library_from_functions("ctx", _whoami, library_context_info=[_context, [log], {}])
        m.install_library(lib)
        first = FunctionCall("ctx", "_whoami", 1)
        m.submit(first)
        _drain(m)
        t = PythonTask(_exit_now, 3)
        m.submit(t)
        _drain(m)
        assert t.result == "worker lost", (t.result, t.output)
        again = FunctionCall("ctx", "_whoami", 2)
        m.submit(again)
        _drain(m)
        assert again.result == "success", (again.result, again.output)
        assert again.output[2] != first.output[2], "the replacement worker reused the dead worker's context"


def check_retries(make: MakeManager, tmp: str) -> None:
    with make() as m:
        ok = PythonTask(_flaky, os.path.join(tmp, "c1"), 2)
        ok.set_retries(2)
        bad = PythonTask(_flaky, os.path.join(tmp, "c2"), 5)
        bad.set_retries(1)
        m.submit(ok)
        m.submit(bad)
        _drain(m)
        assert ok.result == "success" and ok.output == 2 and ok.attempts == 3, (ok.result, ok.output, ok.attempts)
        assert bad.result == "exception" and bad.attempts == 2 and "flaky failure 2" in str(bad.output)


def check_priorities(make: MakeManager, tmp: str) -> None:
    log = os.path.join(tmp, "order.log")
    names: dict[int, str] = {}
    with make(workers=2) as m:
        workers = m.statistics().workers
        for i in range(workers):
            names[m.submit(PythonTask(_sleep, 0.5, log, f"block{i}"))] = f"block{i}"
        for i in range(4):
            t = PythonTask(_sleep, 0, log, f"low{i}")
            t.set_priority(1)
            names[m.submit(t)] = f"low{i}"
        for i in range(4):
            t = PythonTask(_sleep, 0, log, f"high{i}")
            t.set_priority(10)
            names[m.submit(t)] = f"high{i}"
        _drain(m)
        transactions = os.path.join(m.run_dir, "transactions.jsonl")
        with open(log) as f:
            lines = [line.split()[1:] for line in f.read().splitlines()]
        order = [name for name, _ in lines]
        if getattr(m.engine, "queue_depth", 1) > 1:
            # an engine that queues attempts ahead on busy processes orders them by priority when it
            # dispatches them; a high one queued behind a long task may start after a low one started
            # on another process, but never after a low one on its own process
            by_process: dict[str, list[str]] = {}
            for name, pid in lines:
                if not name.startswith("block"):
                    by_process.setdefault(pid, []).append(name[:3])
            assert all(seq == sorted(seq) for seq in by_process.values()), lines  # "hig" < "low"
            return
    # every high-priority task is dispatched before any low one (the order in which the processes then
    # start them is theirs: a free worker may start a low one before another starts the last high one)
    with open(transactions) as f:
        records = [json.loads(line) for line in f]
    dispatched = [names[r["task"]] for r in records if r["state"] == "running" and r["task"] in names]
    started = [n for n in dispatched if not n.startswith("block")]
    assert sorted(started[:4]) == [f"high{i}" for i in range(4)], (dispatched, order)
    assert sorted(started[4:]) == [f"low{i}" for i in range(4)], (dispatched, order)


def check_cancel(make: MakeManager, tmp: str) -> None:
    pid_path = os.path.join(tmp, "long.pid")
    with make(workers=1) as m:
        long = PythonTask(_sleep_in, pid_path, 60)
        queued = PythonTask(_add, 1, 2)
        m.submit(long)
        m.submit(queued)
        if m.statistics().engine != "sync":  # let the long task start on its worker
            deadline = time.monotonic() + 30
            while not os.path.exists(pid_path):
                assert time.monotonic() < deadline, "the long task did not start within 30 s"
                m.wait(0.05)
        assert m.cancel_by_task_id(queued.id)
        assert m.cancel_by_task_id(long.id)
        t0 = time.monotonic()
        done = _drain(m, timeout=30)
        assert {t.id for t in done} == {long.id, queued.id}
        assert long.result == "cancelled" and queued.result == "cancelled"
        assert time.monotonic() - t0 < 10
        if m.statistics().engine != "sync" and os.path.exists(pid_path):  # the attempt itself was stopped
            with open(pid_path) as f:
                pid = int(f.read())
            while _alive(pid) and time.monotonic() - t0 < 10:
                time.sleep(0.05)
            assert not _alive(pid), f"the cancelled task still runs in process {pid}"
        assert not m.cancel_by_task_id(long.id)
        nxt = PythonTask(_add, 3, 4)
        m.submit(nxt)
        _drain(m)
        assert nxt.output == 7


def check_hungry_and_statistics(make: MakeManager, tmp: str) -> None:
    with make(workers=2) as m:
        s = m.statistics()
        assert s.workers >= 1 and s.cores >= s.workers and s.tasks_submitted == 0
        assert m.workers_connected() == s.workers
        appetite = m.hungry()
        assert appetite >= 2 * s.workers
        tasks = [PythonTask(_sleep, 0.2) for _ in range(appetite)]
        for t in tasks:
            m.submit(t)
        assert m.hungry() == 0
        s = m.statistics()
        assert s.tasks_submitted == appetite and s.tasks_waiting + s.tasks_running == appetite
        bad = PythonTask(_boom, "x")
        m.submit(bad)
        _drain(m)
        s = m.statistics()
        assert s.tasks_done == appetite + 1 and s.tasks_failed == 1 and s.tasks_running == 0
        assert m.hungry() == appetite


def check_errors_and_close(make: MakeManager, tmp: str) -> None:
    import threading

    m = make()
    with m:
        lock = threading.Lock()
        try:
            m.submit(PythonTask(_add, lock, 1))
        except TaskSubmissionError as exc:
            assert "cannot be pickled" in str(exc)
        else:
            raise AssertionError("an unpicklable argument was accepted")
        try:
            m.submit(FunctionCall("nope", "f"))
        except TaskSubmissionError as exc:
            assert "not installed" in str(exc)
        else:
            raise AssertionError("a call to a missing library was accepted")
        t = PythonTask(_add, 1, 2)
        m.submit(t)
        _drain(m)
        log = os.path.join(m.run_dir, "transactions.jsonl")
        assert os.path.exists(log)
    try:
        m.submit(PythonTask(_add, 1, 2))
    except ManagerClosedError as exc:
        assert "closed" in str(exc)
    else:
        raise AssertionError("submit after close did not raise")


CHECKS = {name[len("check_"):]: fn for name, fn in sorted(globals().items()) if name.startswith("check_")}


def run_all(make: MakeManager, tmp: str) -> None:
    for name, check in CHECKS.items():
        d = os.path.join(tmp, name)
        os.makedirs(d, exist_ok=True)
        check(make, d)


# ------------------------------------------------- a real dask cluster here
class DaskProcesses:
    """A dask scheduler and workers started with the ``dask`` command, on 127.0.0.1.

    For tests and demos of the dask engine against real processes::

        with DaskProcesses(workers=2) as cluster:
            Manager(engine="dask", scheduler_file=cluster.scheduler_file)

    ``nanny=False`` starts workers without a nanny, so a killed worker stays
    dead; with the nanny (default) a killed worker is restarted at a new address.
    """

    def __init__(self, workers: int = 2, *, nthreads: int = 1, directory: str, nanny: bool = True,
                 memory_limit: str = "4GiB", timeout: float = 60.0, extra_args: tuple[str, ...] = ()) -> None:
        self.n_workers = workers
        self.nthreads = nthreads
        self.directory = directory
        self.nanny = nanny
        self.memory_limit = memory_limit
        self.timeout = timeout
        self.extra_args = list(extra_args)  # e.g. TLS options, given to the scheduler and every worker
        self.scheduler_file = os.path.join(directory, "scheduler.json")
        self.scheduler: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []

    @staticmethod
    def _dask_command() -> list[str]:
        exe = os.path.join(os.path.dirname(sys.executable), "dask")
        if os.path.exists(exe):
            return [exe]
        found = shutil.which("dask")
        if found is None:
            raise RuntimeError("the `dask` command was not found next to this Python or on PATH; "
                               "install it with: pip install 'dask[distributed]'")
        return [found]

    def __enter__(self) -> "DaskProcesses":
        os.makedirs(self.directory, exist_ok=True)
        dask = self._dask_command()
        log = open(os.path.join(self.directory, "scheduler.log"), "wb")
        self.scheduler = subprocess.Popen(
            [*dask, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
             "--scheduler-file", self.scheduler_file, *self.extra_args], stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + self.timeout
        while not self._scheduler_file_written():  # the scheduler writes it in place, not atomically
            if self.scheduler.poll() is not None or time.monotonic() > deadline:
                self.__exit__()
                raise RuntimeError(f"dask scheduler did not start; see {self.directory}/scheduler.log")
            time.sleep(0.05)
        for i in range(self.n_workers):
            self.add_worker(f"w{i}")
        return self

    def add_worker(self, name: str) -> subprocess.Popen:
        """Start one more ``dask worker`` process."""
        dask = self._dask_command()
        wdir = os.path.join(self.directory, name)
        os.makedirs(wdir, exist_ok=True)
        log = open(os.path.join(self.directory, f"{name}.log"), "wb")
        cmd = [*dask, "worker", "--scheduler-file", self.scheduler_file, "--host", "127.0.0.1",
               "--nthreads", str(self.nthreads), "--no-dashboard", "--name", name,
               "--local-directory", wdir, "--death-timeout", "30", "--memory-limit", self.memory_limit,
               *self.extra_args]
        if not self.nanny:
            cmd.append("--no-nanny")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        self.workers.append(proc)
        return proc

    def _scheduler_file_written(self) -> bool:
        try:
            with open(self.scheduler_file) as f:
                return "address" in json.load(f)
        except (OSError, ValueError):
            return False

    @property
    def address(self) -> str:
        with open(self.scheduler_file) as f:
            return json.load(f)["address"]

    def __exit__(self, *exc: object) -> None:
        for proc in [*self.workers, self.scheduler]:
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in [*self.workers, self.scheduler]:
            if proc is None:
                continue
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
