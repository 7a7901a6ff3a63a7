"""No-op FunctionCall throughput and round trip on a vinecore engine.

    python tests/benchmarks/bench_vinecore.py [--engine local] [--workers 2] [--calls 20000]

Prints JSON. Throughput keeps ``hungry()`` tasks in flight (as ddr does);
round trip submits one call and waits for it, one at a time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from _common import emit  # noqa: E402

import vinecore  # noqa: E402


def noop(x):
    return x


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--engine", default="local")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--calls", type=int, default=20000)
    ap.add_argument("--roundtrips", type=int, default=2000)
    args = ap.parse_args()
    with vinecore.Manager(engine=args.engine, workers=args.workers) as m:
        m.install_library(m.create_library_from_functions("bench", noop))
        # warm up: workers started, library installed
        for i in range(50):
            m.submit(vinecore.FunctionCall("bench", "noop", i))
        while not m.empty():
            m.wait(10)
        submitted = done = 0
        t0 = time.perf_counter()
        while done < args.calls:
            for _ in range(min(m.hungry(), args.calls - submitted)):
                m.submit(vinecore.FunctionCall("bench", "noop", submitted))
                submitted += 1
            t = m.wait(10)
            if t is not None:
                assert t.result == "success", t.output
                done += 1
        elapsed = time.perf_counter() - t0
        rts = []
        for i in range(args.roundtrips):
            s = time.perf_counter()
            m.submit(vinecore.FunctionCall("bench", "noop", i))
            t = m.wait(10)
            rts.append(time.perf_counter() - s)
            assert t is not None and t.result == "success"
    rts.sort()
    emit("vinecore-noop-calls", {
        "engine": args.engine, "workers": args.workers, "calls": args.calls,
        "calls_per_second": round(args.calls / elapsed, 1),
        "roundtrip_ms": {"median": round(statistics.median(rts) * 1e3, 3),
                         "p90": round(rts[int(0.9 * len(rts))] * 1e3, 3),
                         "p99": round(rts[int(0.99 * len(rts))] * 1e3, 3)},
        "targets": {"calls_per_second": ">= 1000", "median_roundtrip_ms": "< 5"},
    })


if __name__ == "__main__":
    main()
