"""DaskVine on real ``dask scheduler`` / ``dask worker`` processes (vinecore.testing.DaskProcesses).

The same cases as test_daskvine.py, with smaller graphs: a vinecore task on the
dask engine costs ~10 ms on the 2-core CI machine (tests/benchmarks/bench_vinecore.py),
so the 10,000-chunk and 5,000-input graphs run on the sync and local engines only.
"""

import os

import dask
import dask.array as da
import dask.bag as db
import numpy as np
import pytest
from dask import delayed

import vinecore
from tests.vinecore import _daskvine_cases as cases
from tests.vinecore._daskvine_cases import assert_clean
from tests.vinecore.test_daskvine import interrupt_when, sync
from vinecore.testing import DaskProcesses

# the references run on dask's sync scheduler while the dask engine's Client exists (dask 2025.3 warns)
pytestmark = [pytest.mark.distributed, pytest.mark.slow,
              pytest.mark.filterwarnings("ignore:Running on a single-machine scheduler")]


@pytest.fixture(scope="module")
def dv(tmp_path_factory):
    with DaskProcesses(workers=2, directory=str(tmp_path_factory.mktemp("dask"))) as cluster:
        with vinecore.DaskVine(engine="dask", workers=2, run_dir=tmp_path_factory.mktemp("run"),
                               scheduler_file=cluster.scheduler_file) as m:
            yield m
            assert_clean(m)


def test_array_sum_reshape_bag_and_shared_intermediates(dv):
    total = (da.ones(200, chunks=1, dtype="i8") * da.arange(200, chunks=1)).sum()
    assert total.compute(scheduler=dv.get) == sync(total) == sum(range(200))
    a = da.arange(240, chunks=20).reshape(12, 20).rechunk((5, 7)).T.reshape(-1).reshape(4, 60)[:, ::3]
    np.testing.assert_array_equal(a.compute(scheduler=dv.get), sync(a))
    folded = db.from_sequence(range(300), npartitions=6).fold(lambda acc, x: acc + x, lambda a, b: a + b)
    assert folded.compute(scheduler=dv.get) == sync(folded)
    graph = cases.shared_intermediates()
    got, want = dask.compute(*graph, scheduler=dv.get), sync(*graph)
    assert got[0] == want[0]
    np.testing.assert_array_equal(got[1], want[1])
    assert_clean(dv)


def test_associative_merges(dv):
    total = cases.merge_graph(300)
    got = dask.compute(total, scheduler=dv.get, fan_in=8)[0]
    assert got == sync(total) and got[4] is True
    (shape,) = dv.last_get.reductions.values()
    assert (shape.inputs, shape.depth, shape.max_fan_in) == (300, 3, 8)
    total = cases.sum_graph(100)
    assert dask.compute(total, scheduler=dv.get, fan_in=5)[0] == sync(total)
    (shape,) = dv.last_get.reductions.values()
    assert shape.commutative and shape.calls == -(-99 // 4) and shape.max_fan_in == 5


def test_task_groups_keep_chains_on_one_dask_worker(dv):
    got = dask.compute(*cases.chains(2, 3), scheduler=dv.get)
    assert [len(g) for g in got] == [100_030] * 2
    assert dv.last_get.bytes_moved == 0 and dv.last_get.reads_local == 6


def test_memory_exhaustion_by_key_then_usable(dv):
    fine = [delayed(cases.scale)(i, 2) for i in range(4)]
    with dask.annotate(resources={"memory": 300}):
        big = delayed(cases.hog)(fine[0])
    with pytest.raises(vinecore.DaskNodeError) as info:
        delayed(sum)([*fine, big]).compute(scheduler=dv.get)
    assert info.value.key == big.key and info.value.result == "resource exhaustion"
    assert_clean(dv)
    assert delayed(sum)(fine).compute(scheduler=dv.get) == 12


def test_exception_and_keyboard_interrupt(dv, tmp_path):
    bad = delayed(cases.boom)(3)
    with pytest.raises(ValueError, match="bad value 3") as info:
        bad.compute(scheduler=dv.get)
    assert "Remote traceback" in "\n".join(info.value.__notes__)
    marker = str(tmp_path / "started")
    watcher = interrupt_when(marker)
    with pytest.raises(KeyboardInterrupt):
        delayed(sum)([delayed(cases.slow)(marker), delayed(cases.scale)(1, 1)]).compute(scheduler=dv.get)
    assert not os.path.exists(marker + ".done")
    watcher.join(10)
    assert_clean(dv)
    assert delayed(cases.scale)(4, 4).compute(scheduler=dv.get) == 16
