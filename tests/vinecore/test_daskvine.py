"""DaskVine end to end on the sync and local engines: every result equals dask's synchronous scheduler.

One DaskVine per engine serves every test of this module, so each test also
checks that the previous ones left the manager clean and usable. The large
graphs (10,000 chunks, 5,000 merged inputs) run on the local engine, the
default; the sync engine, which runs every node in this process, gets graphs
a fifth of that size to keep the suite's time reasonable.
"""

import _thread
import os
import threading
import time

import dask
import dask.array as da
import dask.bag as db
import numpy as np
import pytest
from dask import delayed

import vinecore
from tests.vinecore import _daskvine_cases as cases
from tests.vinecore._daskvine_cases import assert_clean

ENGINES = ["sync", pytest.param("local", marks=pytest.mark.slow)]


@pytest.fixture(scope="module", params=ENGINES)
def dv(request):
    with vinecore.DaskVine(engine=request.param, workers=2) as m:
        yield m
        assert_clean(m)


def sync(*xs):
    out = dask.compute(*xs, scheduler="sync")
    return out if len(xs) > 1 else out[0]


BIG = {"local": 1, "sync": 5}  # divisor of the large graphs' sizes per engine


# ------------------------------------------------------------------ graphs

@pytest.mark.slow
def test_dask_array_ten_thousand_chunk_sum(dv):
    n = 10_000 // BIG[dv.engine.name]
    x = da.arange(n, chunks=1)
    total = x.sum(split_every=100)  # n chunk sums, sums of 100 of them, the total
    assert x.numblocks == (n,)
    assert dask.compute(total, scheduler=dv.get)[0] == sync(total) == sum(range(n))
    assert dv.last_get.nodes > n
    assert dv.last_get.peak_in_flight <= 16  # never the graph up front: what the workers can take
    assert_clean(dv)


def test_dask_array_reshape_heavy_pipeline(dv):
    a = da.arange(2 * 3 * 4 * 5 * 6, chunks=7).reshape(2 * 3, 4 * 5 * 6).rechunk((2, 9))
    b = (a.T.reshape(4, 5, 6, 6).transpose(3, 0, 2, 1).reshape(24, 30) + 1).rechunk((5, 7))
    c = b[::2, 3:].reshape(-1)[5:200].reshape(5, 39) @ da.ones((39, 3), chunks=(10, 3))
    np.testing.assert_array_equal(c.compute(scheduler=dv.get), sync(c))
    assert_clean(dv)


def test_dask_bag_fold(dv):
    b = db.from_sequence(range(1000), npartitions=25)
    folded = b.map(lambda x: x % 97).fold(lambda acc, x: acc + x, lambda a, b: a + b, initial=0)
    assert folded.compute(scheduler=dv.get) == sync(folded)
    freq = b.map(lambda x: x % 7).frequencies()
    assert sorted(freq.compute(scheduler=dv.get)) == sorted(sync(freq))


def test_delayed_graph_with_shared_intermediates(dv):
    graph = cases.shared_intermediates()
    got, want = dask.compute(*graph, scheduler=dv.get), sync(*graph)
    assert got[0] == want[0]
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[2], want[2])
    assert_clean(dv)


def test_task_spec_graph_with_data_aliases_refs_and_containers(dv):
    from dask._task_spec import Alias, DataNode, Dict, List, Task, TaskRef

    dsk = {
        "data": DataNode("data", 5),
        "a": Task("a", cases.scale, TaskRef("data"), 3),
        "alias": Alias("alias", "a"),
        "b": Task("b", sorted, List(TaskRef("alias"), TaskRef("data"), 1)),
        "c": Task("c", dict, Dict(first=TaskRef("b"), total=Task(None, sum, TaskRef("b")))),
    }
    assert dv.get(dsk, ["c", "alias", "data"]) == dask.get(dsk, ["c", "alias", "data"]) == \
        ({"first": [1, 5, 15], "total": 21}, 15, 5)


def test_graph_functions_are_shipped_once_per_worker_not_per_task(dv, tmp_path):
    log = tmp_path / "unpickled"
    fn = cases.Logged(str(log))
    dsk = {("x", i): (fn, i) for i in range(40)}
    assert dv.get(dsk, [("x", i) for i in range(40)]) == tuple(range(1, 41))
    assert len(log.read_text().split()) == 2  # one library context per worker
    assert dv.last_get.library_bytes > 0


def test_config_set_scheduler_legacy_graph_and_nested_keys(dv):
    xs = [delayed(cases.scale)(i, 3) for i in range(5)]
    with dask.config.set(scheduler=dv.get):
        assert dask.compute(xs, {"a": xs[0]}) == ([0, 3, 6, 9, 12], {"a": 0})
    dsk = {"a": 1, "b": (cases.scale, "a", 10), "c": "b", ("d", 0): (sum, ["b", "c", "a"])}
    assert dv.get(dsk, [["c", ("d", 0)], "a"]) == dask.get(dsk, [["c", ("d", 0)], "a"]) == ((10, 21), 1)
    assert dv.get(dsk, "c") == 10


@pytest.mark.slow
@pytest.mark.parametrize("graph,n", [(cases.merge_graph, 5000), (cases.sum_graph, 1000)])
def test_associative_merge_equals_the_flat_call(dv, graph, n):
    n //= BIG[dv.engine.name]
    total = graph(n)
    # optimize_graph=False: dask's optimisation of one delayed with n inputs costs O(n^2), and
    # has nothing to fuse here
    want = dask.compute(total, scheduler="sync", optimize_graph=False)[0]
    got = dask.compute(total, scheduler=dv.get, fan_in=8, optimize_graph=False)[0]
    assert got == want
    (shape,) = dv.last_get.reductions.values()
    assert shape.inputs == n and shape.max_fan_in == 8 and shape.min_fan_in >= 2
    if graph is cases.merge_graph:  # order kept: a fixed tree of ceil(log_8 n) levels
        assert got[4] is True and shape.depth == {5000: 5, 1000: 4}[n] and not shape.commutative
    else:  # grouped in completion order: ceil((n - 1) / 7) calls
        assert shape.calls == -(-(n - 1) // 7) and shape.commutative
    assert dv.last_get.peak_held_temps < 100  # not n: partials run as inputs arrive
    assert_clean(dv)


def test_associative_annotation_and_list_form(dv):
    parts = [delayed(cases.scale)(i, 1) for i in range(30)]
    with dask.annotate(associative="commutative"):
        total = delayed(sum)(parts)
    assert total.compute(scheduler=dv.get, fan_in=4) == sum(range(30))
    (shape,) = dv.last_get.reductions.values()
    assert shape.commutative and shape.max_fan_in == 4 and shape.inputs == 30
    flat = delayed(sum)(parts)
    assert flat.compute(scheduler=dv.get) == sum(range(30)) and dv.last_get.reductions == {}


def test_without_rewrite_the_flat_reduction_holds_every_input(dv):
    total = cases.merge_graph(40)
    assert dask.compute(total, scheduler=dv.get, associative=False)[0] == sync(total)
    assert dv.last_get.reductions == {} and dv.last_get.peak_held_temps >= 40


def test_task_groups_keep_chains_on_one_worker(dv):
    chains = cases.chains(4, 4)
    got = dask.compute(*chains, scheduler=dv.get)
    assert [len(g) for g in got] == [100_040] * 4
    s = dv.last_get
    assert s.bytes_moved == 0 and s.reads_local == 16 and s.bytes_local > 1_600_000


# ---------------------------------------------------------------- failures

def test_memory_exhaustion_is_reported_by_key_and_the_manager_stays_usable(dv):
    fine = [delayed(cases.scale)(i, 2) for i in range(6)]
    with dask.annotate(resources={"memory": 300}):
        big = delayed(cases.hog)(fine[0])
    total = delayed(sum)([*fine, big])
    with pytest.raises(vinecore.DaskNodeError) as info:
        total.compute(scheduler=dv.get)
    err = info.value
    assert err.key == big.key and err.result == "resource exhaustion"
    assert repr(big.key) in str(err) and "300 MB" in str(err) and "resources={'memory'" in str(err)
    assert_clean(dv)
    assert delayed(sum)(fine).compute(scheduler=dv.get) == 30


def test_a_node_no_worker_can_fit_is_reported_by_key(dv):
    with dask.annotate(resources={"cores": 64}):
        huge = delayed(cases.scale)(1, 2)
    with pytest.raises(vinecore.DaskNodeError, match="can never run") as info:
        delayed(sum)([huge, delayed(cases.scale)(2, 2)]).compute(scheduler=dv.get)
    assert info.value.key == huge.key and info.value.result == "unsatisfiable"
    assert_clean(dv)


def test_exception_is_reraised_with_key_and_remote_traceback(dv):
    bad = delayed(cases.boom)(delayed(cases.scale)(2, 3))
    with pytest.raises(ValueError, match="bad value 6") as info:
        dask.compute(bad, scheduler=dv.get)
    notes = "\n".join(getattr(info.value, "__notes__", []))
    assert repr(bad.key) in notes and "Remote traceback" in notes and "in boom" in notes
    assert info.value.dask_key == bad.key
    assert_clean(dv)


def interrupt_when(marker):
    def watch():
        deadline = time.monotonic() + 60
        while not os.path.exists(marker) and time.monotonic() < deadline:
            time.sleep(0.01)
        _thread.interrupt_main()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_keyboard_interrupt_cancels_the_get_and_leaves_the_manager_usable(dv, tmp_path):
    marker = str(tmp_path / "started")
    graph = delayed(sum)([delayed(cases.slow)(marker), *[delayed(cases.scale)(i, 1) for i in range(20)]])
    watcher = interrupt_when(marker)
    with pytest.raises(KeyboardInterrupt):
        graph.compute(scheduler=dv.get)
    assert not os.path.exists(marker + ".done")  # stopped, not waited for
    watcher.join(10)
    assert_clean(dv)
    assert delayed(sum)([delayed(cases.scale)(i, 1) for i in range(20)]).compute(scheduler=dv.get) == 190


def test_get_refuses_a_busy_manager_and_unknown_options(dv):
    t = vinecore.PythonTask(cases.scale, 1, 2)
    dv.submit(t)
    with pytest.raises(vinecore.TaskSubmissionError, match="needs the manager to itself"):
        dv.get({"a": (cases.scale, 1, 2)}, ["a"])
    while not dv.empty():
        dv.wait(10)
    assert t.output == 2
    with pytest.raises(TypeError, match="unknown option 'fanin'"):
        dv.get({"a": (cases.scale, 1, 2)}, ["a"], fanin=3)
    with pytest.raises(ValueError, match="fan_in must be"):
        dv.get({"a": (cases.scale, 1, 2)}, ["a"], fan_in=1)


def test_ctrl_c_during_a_get_is_a_flag_that_the_loop_raises():
    """SIGINT during a get (main thread, default handler) only sets a flag; the loop raises it. So a
    KeyboardInterrupt can never be raised inside a finalizer running at that moment, where Python
    would print and drop it and the get would go on."""
    import signal

    from vinecore._daskvine import _Interrupts

    before = signal.getsignal(signal.SIGINT)
    assert before is signal.default_int_handler
    with _Interrupts() as flag:
        _thread.interrupt_main()
        for _ in range(1000):  # the handler runs at the next bytecode boundaries: no exception here
            pass
        assert flag.hit
        with pytest.raises(KeyboardInterrupt):
            flag.check()
        flag.check()  # raised once
    assert signal.getsignal(signal.SIGINT) is before
    with _Interrupts(enabled=False):  # in-process engines: Ctrl-C must stop the running node itself
        assert signal.getsignal(signal.SIGINT) is before
