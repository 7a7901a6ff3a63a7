"""Driving runs through their handle, on the shipped NanoAOD samples with the dimuon analysis.

One local Manager (two worker processes) serves every test of the module, as one notebook session would:
live partial results that never go backwards and whose fraction matches the events inside them, a final
result equal to a blocking compute() bin for bin, a handle used from inside a running asyncio event loop,
warm re-runs on the same worker processes, and cancel() leaving the manager ready for the next run.
"""

import asyncio
import concurrent.futures
import io
import json
import os
import sys
import threading
import time

import cloudpickle
import numpy as np
import psutil
import pytest
import uproot

import ddr
import vinecore
from analyses.dimuon import DimuonProcessor
from tests.conftest import DATASETS

pytestmark = pytest.mark.slow

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this test module

SAMPLES_JSON = str(DATASETS / "samples.json")


class GatedAfterFirstChunk(DimuonProcessor):
    """The dimuon analysis, blocked on every chunk but the first of each file until ``gate`` exists."""

    def __init__(self, gate):
        self.gate = gate

    def process(self, events):
        while events.metadata["entrystart"] > 0 and not os.path.exists(self.gate):
            time.sleep(0.02)
        return super().process(events)


def _until(condition, what, timeout=60.0):
    """Poll ``condition`` until it holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout} s"
        time.sleep(0.02)


class GatedDimuon(DimuonProcessor):
    """No chunk finishes before the file ``gate`` exists."""

    def __init__(self, gate):
        self.gate = gate

    def process(self, events):
        while not os.path.exists(self.gate):
            time.sleep(0.02)
        return super().process(events)


class PidDimuon(DimuonProcessor):
    """The dimuon analysis, plus which worker processes ran it."""

    def process(self, events):
        out = super().process(events)
        out["pids"] = {os.getpid()}
        return out


@pytest.fixture(scope="module")
def expected_events():
    """Events per dataset, read with uproot directly from the files samples.json names."""
    with open(SAMPLES_JSON) as f:
        fileset = json.load(f)
    out = {}
    for ds, spec in fileset.items():
        out[ds] = sum(uproot.open(DATASETS / path)[tree].num_entries for path, tree in spec["files"].items())
    return out


@pytest.fixture(scope="module")
def manager(tmp_path_factory):
    with vinecore.Manager(engine="local", workers=2, run_dir=tmp_path_factory.mktemp("run")) as m:
        yield m


@pytest.fixture(scope="module")
def reference(manager, expected_events):
    """A blocking compute() with adaptive chunks: what every handle run must reproduce."""
    out = ddr.CoffeaDynamicDataReduction(SAMPLES_JSON, DimuonProcessor(), manager=manager).compute()
    assert {ds: out[ds]["cutflow"][f"{ds}/all"] for ds in out} == expected_events
    return out


def _same(a, b, where="result"):
    """Equal bin for bin (flow bins included), with the same axes; dicts and numbers exactly."""
    if isinstance(a, dict):
        assert set(a) == set(b), f"{where}: keys {sorted(a)} != {sorted(b)}"
        for k in a:
            _same(a[k], b[k], f"{where}[{k!r}]")
    elif hasattr(a, "axes") and hasattr(a, "values"):
        assert a.axes == b.axes, where
        assert np.array_equal(a.values(flow=True), b.values(flow=True)), f"{where}: bin contents differ"
        assert a == b, where
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def _events_in(value, ds):
    return 0 if value is None else value["cutflow"][f"{ds}/all"]


@pytest.fixture(scope="module")
def watched(manager, reference, expected_events, tmp_path_factory):
    """A run watched the way a notebook does: partial() and progress polled from several threads.
    Chunks past the first of each file wait for a gate, opened once a mid-run partial was seen."""
    gate = tmp_path_factory.mktemp("watched") / "gate"
    job = ddr.CoffeaDynamicDataReduction(SAMPLES_JSON, GatedAfterFirstChunk(str(gate)), manager=manager,
                                         chunk_size=40, accumulation_size=3)
    handle = job.submit()
    shown = io.StringIO()
    shower = threading.Thread(target=handle.show, kwargs=dict(interval=0.1, wait=True, stream=shown))
    shower.start()
    seen = {"main": [], "thread-0": [], "thread-1": []}
    progress = []
    errors = []

    def poll(name):
        try:
            while not handle.done():
                seen[name].append(handle.partial(timeout=60))
                progress.append(handle.progress)
                time.sleep(0.03)
            seen[name].append(handle.partial(timeout=60))  # after the end: the final result
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    total = sum(expected_events.values())

    def mid_run_seen():
        return any(0 < sum(_events_in(snap[ds][0], ds) for ds in snap) < total
                   for snaps in list(seen.values()) for snap in list(snaps))

    threads = [threading.Thread(target=poll, args=(name,)) for name in seen]
    for t in threads:
        t.start()
    _until(mid_run_seen, "a partial result while the run goes on")
    gate.touch()
    for t in threads:
        t.join(60)
    shower.join(60)
    assert not errors, errors
    return {"job": job, "handle": handle, "result": handle.result(timeout=60), "seen": seen,
            "progress": progress, "shown": shown.getvalue()}


@pytest.mark.timeout(180)
def test_partials_never_decrease_and_their_fraction_matches(watched, expected_events):
    total = sum(expected_events.values())
    mid_run = 0
    for name, snaps in watched["seen"].items():
        assert snaps and all(set(s) == set(expected_events) for s in snaps), name
        for ds, n in expected_events.items():
            events = [_events_in(s[ds][0], ds) for s in snaps]
            fractions = [s[ds][1] for s in snaps]
            assert events == sorted(events), f"{name}: partial results of {ds} went backwards: {events}"
            assert fractions == sorted(fractions), f"{name}: fractions of {ds} went backwards: {fractions}"
            for e, f in zip(events, fractions):  # the fraction is exactly the share of events inside
                assert f == pytest.approx(e / n, abs=1e-12), (name, ds, e, f)
            assert events[-1] == n and fractions[-1] == 1.0
        mid_run += sum(0 < sum(_events_in(s[ds][0], ds) for ds in s) < total for s in snaps)
    assert mid_run > 0, "no partial result was seen while the run was going on"


@pytest.mark.timeout(180)
def test_progress_counts_up_to_the_events_and_is_displayed(watched, expected_events):
    history = watched["progress"]
    for ds, n in expected_events.items():
        done = [p.events_done for snaps in history for p in snaps if p.dataset == ds]
        assert done == sorted(done), f"progress of {ds} went backwards"
    final = {p.dataset: p for p in watched["handle"].progress}
    assert set(final) == set(expected_events)
    for ds, n in expected_events.items():
        p = final[ds]
        assert p.finished and p.events_done == p.events_total == n and p.chunks_failed == 0
        assert p.chunks_done == -(-n // 40)  # chunk_size=40
        assert p.events_per_second > 0 and p.eta_seconds == 0
    handle = watched["handle"]
    assert handle.status == "finished" and handle.done() and not handle.cancelled()
    text = watched["shown"]  # handle.show() on a stream that is not a terminal: plain lines, last one final
    for ds, n in expected_events.items():
        assert f"[ddr] {ds}: {n}/{n} events" in text
    table = repr(handle._view())
    assert table.startswith("ddr run: finished") and "1,000/1,000" in table and "100.0%" in table
    assert "<table>" in handle._repr_html_() and "EGamma2023" in handle._repr_html_()


@pytest.mark.timeout(180)
def test_result_equals_blocking_compute_bin_for_bin(watched, reference):
    _same(watched["result"], reference)
    final = watched["handle"].partial()
    _same({ds: v for ds, (v, _) in final.items()}, reference, "final partial")
    assert watched["handle"].report["complete"]


@pytest.mark.timeout(180)
def test_partial_results_are_plottable_mid_run(watched, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    mid = next(s for s in watched["seen"]["main"] if 0 < s["EGamma2023"][1] < 1)
    ax = ddr.plot(mid, "mass", dataset=["EGamma2023"])
    fraction = mid["EGamma2023"][1]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [f"EGamma2023 ({fraction:.0%} of events)"]
    assert ax.get_xlabel() == r"$m_{\mu\mu}$ [GeV]" and ax.get_title() == "mass (partial result)"
    ax.figure.savefig(tmp_path / "mid.png")
    assert (tmp_path / "mid.png").stat().st_size > 5000


@pytest.mark.timeout(180)
def test_handle_inside_a_running_event_loop(manager, reference, tmp_path):
    """submit(), partial(), progress and ``await handle`` from the thread of a running event loop.

    No chunk can finish before the loop opens the gate file, and the loop only opens it after
    awaiting the handle in another task: had any of these calls blocked the loop, the run could never
    end and the test would hit its timeout.
    """
    gate = tmp_path / "gate"

    async def main():
        handle = ddr.CoffeaDynamicDataReduction(SAMPLES_JSON, GatedDimuon(str(gate)), manager=manager,
                                                chunk_size=100).submit()
        waiter = asyncio.ensure_future(handle)  # `await handle` in another task
        await asyncio.sleep(0)
        assert not handle.done() and not waiter.done()
        snap = handle.partial(timeout=60)  # answered by the run's thread while it is stuck at the gate
        assert snap == {ds: (None, 0.0) for ds in reference}
        assert all(p.events_done == 0 for p in handle.progress)
        with pytest.raises(ddr.DDRError, match="already running a reduction"):
            ddr.CoffeaDynamicDataReduction(SAMPLES_JSON, DimuonProcessor(), manager=manager).submit()
        gate.touch()
        return await waiter, handle

    result, handle = asyncio.run(main())
    _same(result, reference)
    assert handle.status == "finished"


def _worker_pids(manager):
    """The manager's live worker processes (children of this process, or of its zygote when forked)."""
    pids = set(manager.engine.worker_pids().values())
    return {p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE}


@pytest.mark.timeout(180)
def test_warm_rerun_uses_the_same_worker_processes(manager, reference):
    first = ddr.CoffeaDynamicDataReduction(SAMPLES_JSON, PidDimuon(), manager=manager, chunk_size=100).submit()
    pids_first = set().union(*(v["pids"] for v in first.result(timeout=120).values()))
    before = _worker_pids(manager)
    second = ddr.CoffeaDynamicDataReduction(SAMPLES_JSON, PidDimuon(), manager=manager, chunk_size=100).submit()
    out = second.result(timeout=120)
    pids_second = set().union(*(v["pids"] for v in out.values()))
    assert pids_first <= before and pids_second <= before, (pids_first, pids_second, before)  # nothing new started
    _same({ds: {k: v for k, v in r.items() if k != "pids"} for ds, r in out.items()}, reference)


class ClosingPostprocess:
    """A postprocess that leaves a mark when its worker closes it (as the coffea opener closes its files)."""

    def __init__(self, directory):
        self.directory = directory

    def __call__(self, item):
        return item

    def close(self):
        open(os.path.join(self.directory, f"closed-{os.getpid()}"), "w").close()


def _numbers(spec):
    for i in range(spec["n"]):
        yield i, 1


@pytest.mark.timeout(180)
def test_a_finished_run_closes_its_context_on_the_kept_workers(manager, tmp_path):
    run = ddr.DynamicDataReduction({"ds": {"n": 40}}, lambda x: {"sum": x, "pids": {os.getpid()}},
                                   preprocess=_numbers, postprocess=ClosingPostprocess(str(tmp_path)),
                                   manager=manager)
    out = run.compute()
    assert out["ds"]["sum"] == sum(range(40))
    workers = _worker_pids(manager)
    assert out["ds"]["pids"] <= workers
    def closed():  # every worker built the context at install: every one must close it
        return {int(p.name.split("-")[1]) for p in tmp_path.glob("closed-*")}

    _until(lambda: closed() == workers, "closing the finished run's library context on every worker")
    again = ddr.CoffeaDynamicDataReduction(SAMPLES_JSON, DimuonProcessor(), manager=manager).submit()
    assert again.result(timeout=120)  # the manager serves the next run as before


@pytest.mark.timeout(180)
def test_cancel_stops_promptly_and_the_engine_stays_usable(manager, reference, expected_events, tmp_path):
    total = sum(expected_events.values())
    gate = tmp_path / "never-opened"
    job = ddr.CoffeaDynamicDataReduction(SAMPLES_JSON, GatedAfterFirstChunk(str(gate)), manager=manager,
                                         chunk_size=10)
    handle = job.submit()  # first chunks of each file pass; every other chunk blocks for ever
    _until(lambda: sum(p.events_done for p in handle.progress) > 0, "a first chunk")
    assert not handle.done()
    assert handle.cancel(timeout=None)  # the blocked chunks are stopped (bounded by the test's timeout)
    assert handle.done() and handle.cancelled() and handle.status == "cancelled"
    with pytest.raises(concurrent.futures.CancelledError):
        handle.result(timeout=1)
    stats = manager.statistics()
    assert manager.empty() and stats.tasks_running == 0 and stats.tasks_waiting == 0
    report = handle.report
    assert report is not None and report["status"] == "cancelled" and not report["complete"]
    assert report["events_processed"] < total  # only datasets finished before the cancel count here
    # what was merged before the cancel stays available, with fractions that match its contents
    kept = handle.partial()
    assert set(kept) == set(expected_events)
    for ds, (value, fraction) in kept.items():
        assert fraction == pytest.approx(_events_in(value, ds) / expected_events[ds], abs=1e-12)
    assert sum(_events_in(v, ds) for ds, (v, _) in kept.items()) < total
    # the same manager runs the next reduction, to the same result as before
    again = ddr.CoffeaDynamicDataReduction(SAMPLES_JSON, DimuonProcessor(), manager=manager).submit()
    _same(again.result(timeout=120), reference)
    assert manager.statistics().workers == 2
