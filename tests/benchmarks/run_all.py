"""Every ddr benchmark in one command (under 10 minutes on 2 cores, data generation included).

    python tests/benchmarks/run_all.py [--out results.json] [--data-dir ~/.cache/ddr-bench]

Runs, each in its own process so that they do not disturb one another's memory figures:
bench_vinecore (engine overheads), bench_throughput narrow and wide (ddr vs coffea Runner with
FuturesExecutor vs an uproot floor), bench_planning (10^3..10^6 chunk specs vs dask-awkward graph
construction), bench_overheads (no-op chunks, first partial result of `ddr run`) and bench_warm
(cold vs warm first partial through a RunHandle, changed cut, after cancel). Prints one JSON
document with every figure and the total wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import machine, versions  # noqa: E402


def _run(script: str, *args: str) -> dict:
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, str(HERE / script), *args], capture_output=True, text=True)
    seconds = round(time.perf_counter() - t0, 1)
    if r.returncode != 0:
        return {"error": (r.stderr.strip().splitlines() or [f"exit {r.returncode}"])[-1], "seconds": seconds}
    doc = json.loads(r.stdout[r.stdout.index("{"):])
    return {"seconds": seconds, **doc["results"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="also write the JSON here")
    ap.add_argument("--data-dir", default=os.path.expanduser("~/.cache/ddr-bench"))
    args = ap.parse_args()
    t0 = time.perf_counter()
    results = {
        "vinecore": _run("bench_vinecore.py", "--workers", "2"),
        "narrow": _run("bench_throughput.py", "--data-dir", args.data_dir),
        "wide": _run("bench_throughput.py", "--width", "wide", "--files", "4", "--events-per-file", "1000000",
                     "--data-dir", args.data_dir),
        "planning": _run("bench_planning.py", "--cache-dir", args.data_dir),
        "overheads": _run("bench_overheads.py"),
        "warm": _run("bench_warm.py", "--repeats", "3"),
    }
    doc = {"benchmark": "all", "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": machine(),
           "versions": versions("ddr-hep", "coffea", "uproot", "awkward", "dask", "distributed", "numpy"),
           "total_seconds": round(time.perf_counter() - t0, 1), "results": results}
    text = json.dumps(doc, indent=2)
    print(text)
    if args.out:
        pathlib.Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
