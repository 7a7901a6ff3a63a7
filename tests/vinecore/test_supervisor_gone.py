"""Local worker processes never outlive their supervisor.

A worker busy in a long task notices within a second that the process that
started it (the manager's, or a dask worker's for the dask engine's library
processes) is gone, after ``kill -9`` or SIGTERM, and exits. A worker whose
manager was created in a thread that has since ended keeps working (the
reason ``PR_SET_PDEATHSIG`` alone would be wrong).
"""

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import psutil
import pytest

import vinecore
from tests._helpers import wait_for

PARENT = textwrap.dedent('''
    import os, sys, time
    import vinecore

    def busy(marker):
        with open(marker + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.replace(marker + ".tmp", marker)
        end, n = time.monotonic() + 300, 0
        while time.monotonic() < end:  # pure Python: the worker's main thread never waits
            n += 1
        return n

    m = vinecore.Manager(engine="local", workers=1, run_dir=sys.argv[2])
    m.submit(vinecore.PythonTask(busy, sys.argv[1]))
    m.wait(600)
''')


def gone(pid):
    """The process has exited (a zombie nobody reaped yet counts as exited)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_gone(pids, timeout=2.0):
    try:
        wait_for(lambda: all(gone(p) for p in pids), timeout, f"worker process(es) {pids} to exit")
    finally:
        for p in pids:  # leave nothing running, whatever the outcome
            if not gone(p):
                os.kill(p, signal.SIGKILL)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "sigterm"])
def test_busy_worker_exits_when_its_manager_process_dies(tmp_path, sig):
    marker = tmp_path / "busy"
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(marker), str(tmp_path / "run")])
    try:
        wait_for(lambda: marker.exists() or parent.poll() is not None, 120, "the task to start")
        assert parent.poll() is None, "the manager process ended before its task started"
        worker = int(marker.read_text())
        ppid = psutil.Process(worker).ppid()  # the manager, or its zygote (workers forked, see _zygote)
        started_by = [ppid] if ppid == parent.pid else [ppid, psutil.Process(ppid).ppid()]
        assert started_by[-1] == parent.pid, started_by
        parent.send_signal(sig)
        parent.wait(30)
        t0 = time.monotonic()
        wait_gone([worker, *started_by[:-1]])  # the worker and the zygote
        assert time.monotonic() - t0 < 2.0
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


def _getpid():
    return os.getpid()


@pytest.mark.slow
def test_manager_created_in_a_thread_that_ends_keeps_its_workers(tmp_path):
    made = {}

    def create():
        m = vinecore.Manager(engine="local", workers=1, run_dir=tmp_path / "run")
        m.submit(vinecore.PythonTask(_getpid))
        t = m.wait(120)
        made.update(manager=m, pid=t.output if t is not None and t.successful else None)

    thread = threading.Thread(target=create)
    thread.start()
    thread.join()
    m = made["manager"]
    try:
        assert made["pid"] is not None
        for _ in range(3):  # the thread that started the worker is gone; the worker is not
            m.submit(vinecore.PythonTask(_getpid))
            t = m.wait(120)
            assert t is not None and t.successful and t.output == made["pid"], (t and t.result, t and t.output)
    finally:
        m.close()
    wait_gone([made["pid"]], timeout=5.0)
