"""The dask engine against real ``dask scheduler`` / ``dask worker`` processes on 127.0.0.1.

The whole conformance suite runs on it, plus the two things dask alone does
not give: a task that blows its memory allocation ends as resource exhaustion
while the dask worker (same pid) keeps its data, and a dask worker killed with
SIGKILL costs nothing but recomputation.
"""

import os
import signal
import subprocess
import sys
import time

import cloudpickle
import pytest

import vinecore
from vinecore import PythonTask
from vinecore.testing import CHECKS, DaskProcesses

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

# the dask workers cannot import this test module: ship its functions by value
cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with DaskProcesses(workers=2, directory=str(tmp_path_factory.mktemp("dask"))) as c:
        yield c


@pytest.fixture
def make_manager(cluster, tmp_path):
    def make(workers=None, **kw):
        make.count += 1
        return vinecore.Manager(engine="dask", workers=workers or 2, run_dir=tmp_path / f"run-{make.count}",
                                scheduler_file=cluster.scheduler_file, **kw)

    make.count = 0
    return make


@pytest.mark.parametrize("check", sorted(CHECKS))
def test_conformance(make_manager, check, tmp_path):
    CHECKS[check](make_manager, str(tmp_path))


def _hog(mb):
    block = bytearray(mb * 1024 * 1024)
    return len(block)


def _value(n):
    return list(range(n))


def _value_logged(n, log):
    with open(log, "a") as f:
        f.write(f"{n}\n")
    return list(range(n))


def _length(xs):
    return len(xs)


def _drain(m, timeout=60):
    out = []
    deadline = time.monotonic() + timeout
    while not m.empty():
        assert time.monotonic() < deadline, m.statistics()
        t = m.wait(1)
        if t is not None:
            out.append(t)
    return out


def test_memory_hog_keeps_the_dask_worker_and_its_data(make_manager):
    with make_manager(workers=2) as m:
        engine = m.engine
        keep = [PythonTask(_value, 1000 + i) for i in range(4)]
        kept = [t.enable_temp_output() for t in keep]
        for t in keep:
            m.submit(t)
        _drain(m)
        assert all(t.result == "success" for t in keep), [(t.result, t.output) for t in keep]
        pids = engine.worker_pids()
        assert len(pids) == 2
        hogs = []
        while {h.worker.rsplit("/", 1)[0] for h in hogs} != set(pids):  # until each worker had one
            assert len(hogs) < 8, [h.worker for h in hogs]
            batch = [PythonTask(_hog, 1500) for _ in range(2)]
            for h in batch:
                h.set_memory(300)
                m.submit(h)
            _drain(m)
            hogs += batch
        assert {h.result for h in hogs} == {"resource exhaustion"}, [(h.result, h.output) for h in hogs]
        assert engine.worker_pids() == pids  # the same dask worker processes
        readers = [PythonTask(_length, f) for f in kept]
        for r in readers:
            m.submit(r)
        _drain(m)
        assert [r.output for r in readers] == [1000, 1001, 1002, 1003]


def test_sigkill_of_a_worker_holding_temps_is_recovered(tmp_path):
    with DaskProcesses(workers=2, directory=str(tmp_path / "c"), nanny=False) as cluster:
        with vinecore.Manager(engine="dask", workers=2, run_dir=tmp_path / "run",
                              scheduler_file=cluster.scheduler_file) as m:
            log = str(tmp_path / "producers.log")
            producers = [PythonTask(_value_logged, 100 + i, log) for i in range(6)]
            temps = [p.enable_temp_output() for p in producers]
            for p in producers:
                m.submit(p)
            _drain(m)
            held = {p.worker.rsplit("/", 1)[0] for p in producers}
            assert len(held) == 2, "both workers should hold temps"
            victim_addr = producers[0].worker.rsplit("/", 1)[0]
            pids = m.engine.worker_pids()
            os.kill(pids[victim_addr], signal.SIGKILL)
            consumers = [PythonTask(_length, f) for f in temps]
            for c in consumers:
                # one dispatched to the victim before its loss is seen comes back "worker lost": retried
                c.set_retries(1)
                m.submit(c)
            _drain(m, timeout=120)
            assert [c.result for c in consumers] == ["success"] * 6, [(c.result, c.output) for c in consumers]
            assert [c.output for c in consumers] == [100 + i for i in range(6)]
            assert m.fetch_value(temps[0]) == list(range(100))
            with open(log) as f:
                runs = [int(x) for x in f.read().split()]
            lost = [100 + i for i, p in enumerate(producers) if p.worker.startswith(victim_addr + "/")]
            assert lost and sorted(set(runs)) == [100 + i for i in range(6)]
            assert all(runs.count(n) == 2 for n in lost), f"lost temps {lost} were not recomputed once: {runs}"
            assert len(runs) == 6 + len(lost)


_MANAGER = """
import sys, vinecore
from vinecore import PythonTask
from vinecore.testing import _sleep_in
m = vinecore.Manager(engine="dask", workers=1, scheduler_file=sys.argv[1], run_dir=sys.argv[3])
m.submit(PythonTask(_sleep_in, sys.argv[2], 120))
m.wait(120)
"""


def _wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_library_processes_die_with_their_manager_and_their_worker(tmp_path):
    from vinecore.testing import _alive, _sleep_in

    pid_file = tmp_path / "task.pid"
    with DaskProcesses(workers=1, directory=str(tmp_path / "c"), nanny=False) as cluster:
        manager = subprocess.Popen([sys.executable, "-c", _MANAGER, cluster.scheduler_file, str(pid_file),
                                    str(tmp_path / "run")])
        try:
            _wait_for(lambda: pid_file.exists() and pid_file.read_text(), 120, "the task never started")
            library = int(pid_file.read_text())
            manager.send_signal(signal.SIGKILL)
            manager.wait()
            t0 = time.monotonic()
            _wait_for(lambda: not _alive(library), 10, "a library process outlived its manager by 10 s")
            print(f"library process gone {time.monotonic() - t0:.2f} s after its manager")
        finally:
            if manager.poll() is None:
                manager.kill()
        assert cluster.workers[0].poll() is None  # the dask worker itself lives on

        pid_file.unlink()
        with vinecore.Manager(engine="dask", workers=1, run_dir=tmp_path / "run2",
                              scheduler_file=cluster.scheduler_file) as m:
            m.submit(PythonTask(_sleep_in, str(pid_file), 120))
            _wait_for(lambda: pid_file.exists() and pid_file.read_text(), 120, "the task never started")
            library = int(pid_file.read_text())
            cluster.workers[0].send_signal(signal.SIGKILL)
            _wait_for(lambda: not _alive(library), 10, "a library process outlived its dask worker by 10 s")


def _workers_to_close(dask_scheduler=None):
    return dask_scheduler.workers_to_close()


def test_temps_spill_to_disk_and_busy_workers_are_not_retired(make_manager):
    from distributed import Client

    with make_manager(workers=2, spill_mb=0) as m:  # no memory budget: all but the newest temp on disk
        producers = [PythonTask(_value, 2000 + i) for i in range(8)]
        temps = [p.enable_temp_output() for p in producers]
        for p in producers:
            m.submit(p)
        _drain(m)
        stats = m.engine.agent_stats()
        assert sum(s["spilled"] for s in stats.values()) >= 6, stats
        readers = [PythonTask(_length, f) for f in temps]
        for r in readers:
            m.submit(r)
        _drain(m)
        assert [r.output for r in readers] == [2000 + i for i in range(8)]
        assert m.fetch_value(temps[0]) == list(range(2000))
        # adaptive scaling (Cluster.adapt) asks the scheduler which workers to close: none while a run uses them
        with Client(m.engine.client.scheduler.address) as c:
            assert c.run_on_scheduler(_workers_to_close) == []


@pytest.mark.parametrize("check", ["python_task", "temp_between_tasks", "cancel", "remove_library"])
def test_conformance_through_the_scheduler(cluster, check, tmp_path):
    """A client that may not connect to the workers (dask-gateway-like networks): every message is
    relayed by the scheduler (``Scheduler.proxy``)."""
    from distributed import Client

    with Client(cluster.address, direct_to_workers=False) as client:
        def make(workers=None, **kw):
            make.count += 1
            return vinecore.Manager(engine=client, workers=workers or 2, run_dir=tmp_path / f"run-{make.count}",
                                    **kw)

        make.count = 0
        CHECKS[check](make, str(tmp_path))
        with make() as m:
            assert set(m.engine.routes().values()) == {"scheduler"}, m.engine.routes()
