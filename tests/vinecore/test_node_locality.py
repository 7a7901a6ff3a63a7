"""Node-level locality: a task prefers a worker whose node holds its file in the node cache.

Event-driven tests of the pure scheduler, and the dask engine reporting each dask worker's host as
its node (real ``dask`` processes on 127.0.0.1 and 127.0.0.2, two "nodes" on one machine)."""

import pytest

from vinecore._events import Dispatch, Result, TaskFinished, TaskSubmitted, WorkerJoined
from vinecore._state import Scheduler


def dispatched(actions):
    return [(a.task_id, a.worker_id) for a in actions if isinstance(a, Dispatch)]


def _node_a_has_f1(node):
    """Worker a0 (on ``node``) has read file f1 and is busy again; tasks on f2 (older) and f1 wait."""
    s = Scheduler()
    s.handle(WorkerJoined("a0", node=node))
    assert dispatched(s.handle(TaskSubmitted(1, cores=1, locality="f1"))) == [(1, "a0")]
    s.handle(TaskFinished(1, "a0", Result.SUCCESS))
    assert dispatched(s.handle(TaskSubmitted(2, cores=1))) == [(2, "a0")]
    s.handle(TaskSubmitted(4, cores=1, locality="f2"), TaskSubmitted(5, cores=1, locality="f1"))
    return s


@pytest.mark.parametrize("node", ["hostA", None])
def test_a_free_worker_prefers_files_its_node_has_cached(node):
    s = _node_a_has_f1(node)
    acts = s.handle(WorkerJoined("a1", node=node))  # same node as a0; it has run nothing itself
    if node is None:  # no node known: plain FIFO
        assert dispatched(acts) == [(4, "a1")]
    else:  # f1 is in hostA's cache (a0 read it): a1 takes it before the older f2 task
        assert dispatched(acts) == [(5, "a1")]


def test_a_worker_of_another_node_keeps_fifo_order():
    s = _node_a_has_f1("hostA")
    acts = s.handle(WorkerJoined("b0", node="hostB"))
    assert dispatched(acts) == [(4, "b0")]  # hostB has nothing cached: FIFO


def test_own_open_files_come_before_the_nodes_cache():
    s = Scheduler()
    s.handle(WorkerJoined("a0", node="A"), WorkerJoined("a1", node="A"))
    acts = s.handle(TaskSubmitted(1, cores=1, locality="f1"), TaskSubmitted(2, cores=1, locality="f2"))
    placed = {w: t for t, w in dispatched(acts)}
    s.handle(TaskSubmitted(3, cores=1, locality="f1"), TaskSubmitted(4, cores=1, locality="f2"))
    acts = s.handle(TaskFinished(placed["a1"], "a1", Result.SUCCESS))
    mine = "f1" if placed["a1"] == 1 else "f2"
    assert dispatched(acts) == [({"f1": 3, "f2": 4}[mine], "a1")]


def test_task_group_affinity_and_node_preference_work_together():
    """A consumer that becomes ready goes to the free worker that ran its key (task-group affinity);
    when that worker is busy, a free worker of the same node takes the key's task before older work,
    and a worker of another node keeps FIFO order."""
    s = Scheduler()
    s.handle(WorkerJoined("a0", node="A"))
    assert dispatched(s.handle(TaskSubmitted(1, cores=1, outputs=("t1",), locality="f"))) == [(1, "a0")]
    s.handle(WorkerJoined("a1", node="A"), WorkerJoined("b0", node="B"))
    s.handle(TaskSubmitted(2, cores=1, inputs=("t1",), temps=("t1",), locality="f"))
    assert dispatched(s.handle(TaskFinished(1, "a0", Result.SUCCESS))) == [(2, "a0")]  # affinity, a1/b0 idle
    acts = s.handle(TaskSubmitted(4, cores=1, locality="x"), TaskSubmitted(5, cores=1, locality="f"))
    assert sorted(dispatched(acts)) == [(4, "b0"), (5, "a1")]  # a0 busy: its node's other worker takes f


@pytest.mark.slow
@pytest.mark.distributed
def test_dask_workers_report_their_host_as_node(tmp_path):
    """Two dask workers on two loopback addresses are two nodes to the scheduler."""
    import subprocess

    from vinecore.engines.dask import DaskEngine
    from vinecore.testing import DaskProcesses

    with DaskProcesses(workers=1, directory=str(tmp_path / "dask")) as cluster:
        log = open(tmp_path / "dask" / "node2.log", "wb")
        cluster.workers.append(subprocess.Popen(
            [*cluster._dask_command(), "worker", "--scheduler-file", cluster.scheduler_file, "--host", "127.0.0.2",
             "--nthreads", "1", "--no-dashboard", "--name", "node2", "--death-timeout", "30",
             "--local-directory", str(tmp_path / "dask" / "node2")], stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL))  # stopped with the cluster
        log.close()
        engine = DaskEngine(workers=2, run_dir=str(tmp_path / "run"), scheduler_file=cluster.scheduler_file)
        try:
            joined = [e for e in engine.start() if isinstance(e, WorkerJoined)]
        finally:
            engine.close()
    assert sorted({e.node for e in joined}) == ["127.0.0.1", "127.0.0.2"]  # (several queue positions each)
    for e in joined:
        assert e.worker_id.startswith(f"tcp://{e.node}:")
