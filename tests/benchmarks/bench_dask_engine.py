"""No-op calls/s: vinecore's dask engine against plain dask, on the same real cluster, side by side.

    python tests/benchmarks/bench_dask_engine.py [--workers 2 8] [--calls 3000] [--repeats 3]

For each worker count a real ``dask scheduler`` and that many single-thread
``dask worker`` processes (no nanny) are started on 127.0.0.1
(``vinecore.testing.DaskProcesses``).
Then, alternating on the same cluster and the same ``distributed.Client``:

* dask: ``Client.submit(noop, i, pure=False)`` with ``as_completed``, keeping
  ``in_flight`` calls submitted (each completion submits the next);
* vinecore: ``FunctionCall``s to a library holding ``noop``, on a
  ``vinecore.Manager(engine=client)``, keeping ``Manager.hungry()`` calls
  submitted (what ddr does), which is the same ``in_flight``.

dask also runs with ``--wide`` (16) times as many calls in flight, which suits
its scheduler better; vinecore's share is taken against the better of the two
dask rates. Prints JSON: each repetition's calls/s, the medians, vinecore's
share of dask's rate (target >= 90 %), and the load average before and after.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
from _common import emit  # noqa: E402

import vinecore  # noqa: E402
from vinecore.testing import DaskProcesses  # noqa: E402


def noop(x):
    return x


def dask_rate(client, calls: int, in_flight: int) -> float:
    from distributed import as_completed

    t0 = time.perf_counter()
    ac = as_completed([client.submit(noop, i, pure=False) for i in range(in_flight)])
    submitted = done = in_flight
    done = 0
    for fut in ac:
        fut.result()
        done += 1
        fut.release()
        if submitted < calls:
            ac.add(client.submit(noop, submitted, pure=False))
            submitted += 1
    assert done == calls
    return calls / (time.perf_counter() - t0)


def vinecore_rate(m: vinecore.Manager, calls: int) -> float:
    submitted = done = 0
    t0 = time.perf_counter()
    while done < calls:
        for _ in range(min(m.hungry(), calls - submitted)):
            m.submit(vinecore.FunctionCall("bench", "noop", submitted))
            submitted += 1
        t = m.wait(30)
        if t is not None:
            assert t.result == "success", t.output
            done += 1
    return calls / (time.perf_counter() - t0)


def measure(n_workers: int, calls: int, repeats: int, wide: int) -> dict:
    from distributed import Client

    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-dask-") as tmp:
        # no nanny: half the processes to start on a busy machine; the per-call path is the same
        with DaskProcesses(workers=n_workers, directory=tmp, nanny=False, timeout=600) as cluster, \
                Client(cluster.address) as client:
            client.wait_for_workers(n_workers, timeout=600)
            with vinecore.Manager(engine=client, workers=n_workers, run_dir=os.path.join(tmp, "run")) as m:
                m.install_library(m.create_library_from_functions("bench", noop))
                in_flight = m.hungry()
                vinecore_rate(m, 200)  # warm: library processes up, library installed
                dask_rate(client, 200, in_flight)
                dask_rates, wide_rates, vine_rates = [], [], []
                for _ in range(repeats):
                    dask_rates.append(round(dask_rate(client, calls, in_flight), 1))
                    wide_rates.append(round(dask_rate(client, calls, wide * in_flight), 1))
                    vine_rates.append(round(vinecore_rate(m, calls), 1))
                stats = m.statistics()
    d, dw, v = statistics.median(dask_rates), statistics.median(wide_rates), statistics.median(vine_rates)
    best = [max(a, b) for a, b in zip(dask_rates, wide_rates)]
    return {"dask_workers": n_workers, "threads_per_worker": 1, "vinecore_workers": stats.workers,
            "in_flight": in_flight, "dask_wide_in_flight": wide * in_flight, "calls_per_repeat": calls,
            "dask_calls_per_second": dask_rates, "dask_wide_calls_per_second": wide_rates,
            "vinecore_calls_per_second": vine_rates,
            "dask_median": d, "dask_wide_median": dw, "vinecore_median": v,
            "vinecore_share_of_dask": round(v / max(d, dw), 3),
            "per_repeat_share": [round(a / b, 3) for a, b in zip(vine_rates, best)],
            "load_average_before": [round(x, 2) for x in load0],
            "load_average_after": [round(x, 2) for x in os.getloadavg()]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, nargs="+", default=[2, 8])
    ap.add_argument("--calls", type=int, default=3000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--wide", type=int, default=16, help="dask also runs with this many times more in flight")
    args = ap.parse_args()
    runs = [measure(n, args.calls, args.repeats, args.wide) for n in args.workers]
    emit("dask-engine-vs-dask", {"runs": runs, "target": {"vinecore_share_of_dask": ">= 0.9"}})


if __name__ == "__main__":
    main()
