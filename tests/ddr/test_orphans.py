"""``ddr run`` killed mid-chunk leaves no worker process behind.

The real command runs a processor that spins on every chunk; once a worker is
busy, the ``ddr`` process gets ``kill -9`` or SIGTERM, and within 2 s no
process it started remains. The same holds for the library processes beside a
dask worker when that dask worker is killed.
"""

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from tests._helpers import generate, wait_for

pytestmark = pytest.mark.slow

SLOW = '''\
import os
import time

from coffea import processor

BUSY_DIR = {busy!r}


class Spinning(processor.ProcessorABC):
    """Tells the test it started (a file named by its pid), then spins for minutes."""

    def process(self, events):
        with open(os.path.join(BUSY_DIR, str(os.getpid())), "w"):
            pass
        end, n = time.monotonic() + 300, 0
        while time.monotonic() < end:
            n += 1
        return {{"n": n}}

    def postprocess(self, accumulator):
        return accumulator
'''


@pytest.fixture(scope="module")
def fileset(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("orphans"), files=1, events_per_file=2000, chunk=1000)


def gone(pid):
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE  # exited, not reaped yet
    except psutil.NoSuchProcess:
        return True


def assert_all_gone_within(pids, seconds):
    t0 = time.monotonic()
    try:
        wait_for(lambda: all(gone(p) for p in pids), seconds, f"processes {sorted(pids)} to exit")
    finally:
        for p in pids:
            if not gone(p):
                os.kill(p, signal.SIGKILL)
    return time.monotonic() - t0


def start(tmp_path, fileset, *extra):
    busy = tmp_path / "busy"
    busy.mkdir()
    analysis = tmp_path / "spinning.py"
    analysis.write_text(SLOW.format(busy=str(busy)))
    proc = subprocess.Popen([sys.executable, "-m", "ddr.cli", "run", str(analysis), "--datasets", str(fileset),
                             "--chunk-size", "1000", "--run-dir", str(tmp_path / "run"), "--quiet", *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return proc, busy


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "sigterm"])
def test_no_worker_outlives_a_killed_ddr_run(tmp_path, fileset, sig):
    proc, busy = start(tmp_path, fileset, "--workers", "2")
    try:
        wait_for(lambda: any(busy.iterdir()) or proc.poll() is not None, 120, "a worker to start a chunk")
        assert proc.poll() is None, proc.stderr.read().decode()
        tree = {c.pid for c in psutil.Process(proc.pid).children(recursive=True)}
        # the workers, and the zygote they were forked from when they were (vinecore/engines/_zygote.py)
        zygotes = {c.pid for c in psutil.Process(proc.pid).children() if c.children()}
        workers = tree - zygotes
        busy_pids = {int(p.name) for p in busy.iterdir()}
        assert busy_pids and busy_pids <= workers and len(workers) == 2 and len(zygotes) <= 1, (busy_pids, tree)
        proc.send_signal(sig)
        proc.wait(60)
        assert_all_gone_within(tree, 2.0)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()


@pytest.mark.distributed
def test_library_processes_do_not_outlive_their_dask_worker(tmp_path, fileset):
    from vinecore.testing import DaskProcesses

    with DaskProcesses(workers=1, directory=str(tmp_path / "cluster"), nanny=False) as cluster:
        dask_worker = cluster.workers[0]
        proc, busy = start(tmp_path, fileset, "--scheduler", cluster.address)
        try:
            wait_for(lambda: any(busy.iterdir()) or proc.poll() is not None, 180, "a library process to start a chunk")
            assert proc.poll() is None, proc.stderr.read().decode()
            library = {c.pid for c in psutil.Process(dask_worker.pid).children(recursive=True)}
            assert {int(p.name) for p in busy.iterdir()} <= library, library
            dask_worker.kill()
            dask_worker.wait(30)
            assert_all_gone_within(library, 2.0)
        finally:
            proc.kill()
            proc.wait()
            proc.stderr.close()
