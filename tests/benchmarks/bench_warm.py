"""Time to the first partial result through a RunHandle: a cold run against warm re-runs.

    python tests/benchmarks/bench_warm.py [--workers 2] [--repeats 5]

The dimuon analysis (analyses/dimuon.py) over the shipped samples (datasets/samples.json), with ddr's
default chunking, the way a notebook session runs it:

* cold: create a ``vinecore.Manager`` (worker processes start), ``submit()``, then poll ``partial()``
  every 10 ms until some dataset has a merged value; the clock starts before the manager is created;
* warm: a new ``CoffeaDynamicDataReduction`` with the same processor class on the same manager
  (``manager=``), clock started at ``submit()``;
* warm, changed cut: a different processor (muons above 10 GeV) on the same manager;
* warm after cancel: a run cancelled mid-way (its running chunks are stopped, and with them their worker
  processes, which are restarted), then a new run on the same manager.

What is reused on a warm run: the worker processes, with Python, numpy, awkward, uproot and coffea
imported. What is rebuilt: each run installs its own library, so every worker unpickles the run's
processors and builds a new NanoEvents reader (open files and schemas are per run).

Each figure is the median over ``--repeats`` fresh managers; every sample is listed. Prints JSON with the
machine, versions and date (see ``_common.emit``). Not collected by pytest.
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))
from _common import emit  # noqa: E402

import ddr  # noqa: E402
import vinecore  # noqa: E402
from analyses.dimuon import DimuonProcessor  # noqa: E402

SAMPLES = str(ROOT / "datasets" / "samples.json")
EVENTS = 1280  # in the four shipped samples


class TightDimuon(DimuonProcessor):
    """The dimuon analysis with muons above 10 GeV only (the 'changed cut')."""

    def process(self, events):
        events["Muon"] = events.Muon[events.Muon.pt > 10]
        return super().process(events)


class SlowDimuon(DimuonProcessor):
    def process(self, events):
        time.sleep(0.2)
        return super().process(events)


def _first_partial(handle: ddr.RunHandle, t0: float) -> float:
    while True:
        if any(value is not None for value, _ in handle.partial(timeout=120).values()):
            return time.perf_counter() - t0
        if handle.done():
            handle.result()  # raises the run's error, if any
            return time.perf_counter() - t0
        time.sleep(0.01)


def _run(manager: vinecore.Manager, processor, t0: float) -> dict:
    job = ddr.CoffeaDynamicDataReduction(SAMPLES, processor, manager=manager)
    handle = job.submit()
    first = _first_partial(handle, t0)
    out = handle.result(timeout=300)
    total = time.perf_counter() - t0
    events = sum(v["cutflow"][f"{ds}/all"] for ds, v in out.items())
    assert events == EVENTS, events
    run = job.last_run
    return {"first_partial_seconds": round(first, 3), "result_seconds": round(total, 3),
            "driver_first_result_seconds": round(run.first_result_at - run.started, 3)}


def one_session(workers: int) -> dict:
    t0 = time.perf_counter()
    manager = vinecore.Manager(engine="local", workers=workers)
    started = time.perf_counter() - t0
    try:
        cold = _run(manager, DimuonProcessor(), t0)
        cold["manager_start_seconds"] = round(started, 3)
        warm = _run(manager, DimuonProcessor(), time.perf_counter())
        changed = _run(manager, TightDimuon(), time.perf_counter())
        slow = ddr.CoffeaDynamicDataReduction(SAMPLES, SlowDimuon(), manager=manager, chunk_size=20).submit()
        _first_partial(slow, time.perf_counter())
        slow.cancel(timeout=None)
        after_cancel = _run(manager, DimuonProcessor(), time.perf_counter())
    finally:
        manager.close()
    return {"cold": cold, "warm": warm, "warm_changed_cut": changed, "warm_after_cancel": after_cancel}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    sessions = [one_session(args.workers) for _ in range(args.repeats)]
    results: dict = {"workers": args.workers, "repeats": args.repeats, "events": EVENTS,
                     "fileset": "datasets/samples.json", "analysis": "analyses/dimuon.py"}
    for kind in ("cold", "warm", "warm_changed_cut", "warm_after_cancel"):
        results[kind] = {
            "median_first_partial_seconds": round(statistics.median(s[kind]["first_partial_seconds"]
                                                                    for s in sessions), 3),
            "median_result_seconds": round(statistics.median(s[kind]["result_seconds"] for s in sessions), 3),
            "samples": [s[kind] for s in sessions],
        }
    cold = results["cold"]["median_first_partial_seconds"]
    warm = results["warm"]["median_first_partial_seconds"]
    results["warm_first_partial_speedup"] = round(cold / warm, 2) if warm > 0 else None
    results["note"] = ("cold includes starting the worker processes; warm runs reuse them (imports done) but "
                       "rebuild the library context (processors, NanoEvents reader) for every run")
    emit("warm_rerun_first_partial", results)


if __name__ == "__main__":
    main()
