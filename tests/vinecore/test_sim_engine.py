"""The simulated cluster (vinecore/engines/sim.py): conformance where virtual time makes sense,
virtual-time accounting, and ddr runs that account for every event, with and without worker losses."""

import pytest

import ddr
import vinecore
from vinecore import PythonTask
from vinecore.engines.sim import Durations, SimEngine
from vinecore.testing import CHECKS

# checks that need real processes or real time: memory and time limits are enforced in a worker
# process (the simulator only draws them), os._exit would end this process, and cancel sleeps a minute
# inside the task, which the simulator would really run
_REAL_ONLY = {"memory_exhaustion", "time_limit", "exit_in_task", "cancel"}
SIM_CHECKS = sorted(set(CHECKS) - _REAL_ONLY)


@pytest.fixture
def make_manager(tmp_path):
    def make(workers=None, **kw):
        make.count += 1
        engine = SimEngine(workers or 2, durations=Durations.constant(0.5), manager_time=False)
        return vinecore.Manager(engine=engine, run_dir=tmp_path / f"run-{make.count}", **kw)

    make.count = 0
    return make


@pytest.mark.parametrize("check", [pytest.param(c, marks=pytest.mark.slow) if c in ("priorities", "hungry_and_statistics", "remove_library")
                                   else c for c in SIM_CHECKS])
def test_conformance(make_manager, check, tmp_path):
    CHECKS[check](make_manager, str(tmp_path))


def _square(x):
    return x * x


def test_virtual_time_runs_ahead_without_sleeping(tmp_path):
    engine = SimEngine(10, durations=Durations.constant(3.0), manager_time=False, latency=0.0)
    with vinecore.Manager(engine=engine, run_dir=tmp_path / "run") as m:
        tasks = [PythonTask(_square, i) for i in range(100)]
        for t in tasks:
            m.submit(t)
        while not m.empty():
            m.wait(1)
        assert [t.output for t in tasks] == [i * i for i in range(100)]
        assert {t.resources_measured.wall_time for t in tasks} == {3.0}
        s = engine.stats()
    assert s["virtual_seconds"] == pytest.approx(30.0)  # 100 tasks of 3 s on 10 workers
    assert s["utilization"] == pytest.approx(1.0)
    assert s["completed"] == {"default": 100}
    assert s["dispatch_latency_ms"]["n"] == 100


def test_durations_from_a_real_transactions_log(tmp_path):
    with vinecore.Manager(engine="sync", run_dir=tmp_path / "run") as m:
        for i in range(5):
            t = PythonTask(_square, i)
            t.set_category("processing")
            m.submit(t)
        while not m.empty():
            m.wait(1)
    d = Durations.from_file(tmp_path / "run" / "transactions.jsonl")
    assert set(d.samples) == {"processing"} and len(d.samples["processing"]) == 5
    scaled = d.scaled("processing", 2.0)
    assert scaled.mean("processing") == pytest.approx(2.0)
    with pytest.raises(ValueError, match="no 'accumulating' samples"):
        d.scaled("accumulating", 1.0)
    with pytest.raises(ValueError, match="has no successful task results"):
        (tmp_path / "empty.jsonl").write_text("")
        Durations.from_file(tmp_path / "empty.jsonl")


def _chunk(x):
    return {"sum": x, "chunks": 1}


def _merge(a, b):
    return {"sum": a["sum"] + b["sum"], "chunks": a["chunks"] + b["chunks"]}


def _items(spec):
    return ((i, 1000) for i in range(spec["n"]))


@pytest.mark.slow
@pytest.mark.parametrize("loss_rate", [0.0, 4.0])
def test_a_simulated_ddr_run_accounts_for_every_event(loss_rate):
    n = 1200
    engine = SimEngine(60, durations=Durations.constant(1.0), loss_rate=loss_rate, rejoin_after=2.0, seed=3,
                       manager_time=False)  # virtual time independent of this machine's load
    run = ddr.DynamicDataReduction({"a": {"n": n}, "b": {"n": n // 3}}, _chunk, preprocess=_items,
                                   reducer=_merge, engine=engine, accumulation_size=4)
    out = run.compute()
    assert out == {"a": {"sum": n * (n - 1) // 2, "chunks": n},
                   "b": {"sum": (n // 3) * (n // 3 - 1) // 2, "chunks": n // 3}}
    report = run.report
    assert report["complete"]
    assert {ds: r["events_processed"] for ds, r in report["datasets"].items()} == {"a": n * 1000, "b": n // 3 * 1000}
    s = engine.stats()
    assert s["lineage"] == {"temps": 0, "recipes": 0, "consumers": 0}  # nothing left behind
    if loss_rate:
        assert s["losses"] > 5 and s["recomputations"] > 0, s  # lost partials were made again
        assert sum(r["chunks_done"] for r in report["datasets"].values()) == n + n // 3


def _topped_up_run(workers: int, n: int) -> tuple[list[int], float]:
    """A simulated run: the processing tasks of each submit_many, and the run's virtual seconds."""
    from vinecore import Manager

    batches = []
    submit_many = Manager.submit_many

    def counting(self, tasks):
        tasks = list(tasks)
        batches.append(sum(t.category == "processing" for t in tasks))
        return submit_many(self, tasks)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Manager, "submit_many", counting)
        engine = SimEngine(workers, durations=Durations.constant(1.0), seed=5, manager_time=False)
        run = ddr.DynamicDataReduction({"a": {"n": n}}, _chunk, preprocess=_items, reducer=_merge, engine=engine)
        assert run.compute() == {"a": {"sum": n * (n - 1) // 2, "chunks": n}}
    assert sum(batches) == n
    return [b for b in batches if b], engine.stats()["virtual_seconds"]


def test_a_large_cluster_is_topped_up_in_batches_and_kept_as_busy(monkeypatch):
    """ddr plans chunks for a large cluster in batches (once the queue lacks workers / TOPUP_SHARE
    tasks), not one per completion, and the run takes no longer than topping up at every step."""
    import ddr._driver

    n, workers = 4000, 320
    batches, took = _topped_up_run(workers, n)
    floor = workers // ddr._driver.TOPUP_SHARE
    # after the first (which fills the cluster), every top-up but the last (the planner's remainder)
    # plans at least workers / TOPUP_SHARE chunks
    assert len(batches) > 3 and min(batches[1:-1]) >= floor, sorted(batches)[:5]
    monkeypatch.setattr(ddr._driver, "TOPUP_SHARE", 10**9)  # top up whenever anything is missing
    every_step, took_every_step = _topped_up_run(workers, n)
    assert min(every_step[1:-1]) < floor  # (the comparison means something: then batches are smaller)
    assert took <= took_every_step * 1.01, (took, took_every_step)
