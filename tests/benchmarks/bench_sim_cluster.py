"""The manager at cluster scale: ddr on a simulated cluster of 1,000 and 10,000 workers.

    python tests/benchmarks/bench_sim_cluster.py [--workers 1000 10000] [--chunks 200000]
        [--chunk-seconds 2] [--loss-rate 0] [--repeat 3] [--profile]
        [--input tests/benchmarks/data/sim_dimuon.json]

Each configuration runs in a fresh Python process: the real ddr driver
(``ddr.DynamicDataReduction`` with a cheap processor that sums item numbers,
so the result is checked exactly) and the real vinecore scheduler, on
``vinecore.engines.sim.SimEngine`` with that many workers. Task durations are
drawn from a measured ddr run (``make_sim_input.py``), processing chunks scaled
to a mean of ``--chunk-seconds``. The engine's own CPU (simulating, running the
functions) is measured apart and left out of the manager's.

Prints JSON per configuration: manager CPU per chunk, chunk completions per
second of manager CPU (target >= 5,000), the workers one manager can feed at
this chunk duration (that rate x chunk seconds), utilization of the simulated
workers and dispatch latency (virtual time, the manager's CPU included), and
the manager's resident memory sampled every tenth of the chunks (it should not
grow with the chunks done). Each size runs ``--repeat`` times, the sizes in
turn; ``summary`` gives each size's median and range. ``--profile`` adds the
manager side's top functions by cumulative share of its CPU (cProfile on a
clock that stops inside engine calls).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, os.path.dirname(__file__))

DEFAULT_INPUT = ROOT / "tests" / "benchmarks" / "data" / "sim_dimuon.json"
EVENTS_PER_CHUNK = 100_000


def process(x):
    return {"sum": x, "chunks": 1}


def reduce_pair(a, b):
    return {"sum": a["sum"] + b["sum"], "chunks": a["chunks"] + b["chunks"]}


def items(spec):
    return ((i, EVENTS_PER_CHUNK) for i in range(spec["n"]))


def _engine(args, workers: int):
    from vinecore.engines.sim import Durations, SimEngine

    durations = Durations.from_file(args.input).scaled("processing", args.chunk_seconds)
    return SimEngine(workers, durations=durations, seed=args.seed, loss_rate=args.loss_rate,
                     sample_every=max(1, args.chunks // 10))


def _run(args, engine) -> tuple[dict, float]:
    import ddr

    t0 = time.perf_counter()
    run = ddr.DynamicDataReduction({"sim": {"n": args.chunks}}, process, preprocess=items, reducer=reduce_pair,
                                   engine=engine)
    out = run.compute()
    wall = time.perf_counter() - t0
    n = args.chunks
    assert out["sim"] == {"sum": n * (n - 1) // 2, "chunks": n}, out["sim"]
    assert run.report["complete"] and run.report["events_processed"] == n * EVENTS_PER_CHUNK, run.report
    return run.report, wall


def one(args, workers: int) -> dict:
    """One configuration, in this process."""
    engine = _engine(args, workers)
    report, wall = _run(args, engine)
    s = engine.stats()
    cpu = s["manager_cpu_seconds"]
    chunks = s["completed"].get("processing", 0)
    rate = chunks / cpu if cpu else None
    return {
        "workers": workers, "chunks": chunks, "chunk_seconds_mean": args.chunk_seconds,
        "tasks_completed": s["completed"], "loss_rate_per_virtual_second": args.loss_rate,
        "losses": s["losses"], "recomputations": s["recomputations"],
        "manager_cpu_seconds": cpu, "engine_cpu_seconds": s["engine_cpu_seconds"], "wall_seconds": round(wall, 2),
        "manager_cpu_per_chunk_us": round(cpu / chunks * 1e6, 1) if chunks else None,
        "chunk_completions_per_manager_cpu_second": round(rate, 1) if rate else None,
        "workers_fed_at_this_chunk_duration": int(rate * args.chunk_seconds) if rate else None,
        "virtual_seconds": s["virtual_seconds"],
        "ideal_virtual_seconds": round(chunks * args.chunk_seconds / workers, 2),
        "utilization": s["utilization"], "dispatch_latency_ms": s["dispatch_latency_ms"],
        "manager_rss_mb_by_chunks_done": [(r["chunks_done"], r["rss_mb"]) for r in s["rss_samples"]],
        "lineage_by_chunks_done": [(r["chunks_done"], r["lineage_temps"], r["lineage_recipes"])
                                   for r in s["rss_samples"]],
        "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }


def profile(args, workers: int, top: int = 25) -> dict:
    """Hot spots of the manager side: cProfile on a clock that stands still inside engine calls."""
    import cProfile
    import pstats

    engine = _engine(args, workers)

    from ddr._handle import RunHandle

    prof = cProfile.Profile(engine.manager_clock)
    main = RunHandle._main

    def profiled_main(self):  # the run's loop is in the handle's thread: profile it there
        prof.enable()
        try:
            main(self)
        finally:
            prof.disable()

    RunHandle._main = profiled_main
    try:
        _run(args, engine)
    finally:
        RunHandle._main = main
    st = pstats.Stats(prof)
    total = sum(tt for (_, _, tt, _, _) in st.stats.values())
    engine_files = ("engines/sim.py", "engines/_lineage.py", "engines/_sim_model.py", "bench_sim_cluster.py")
    rows = []
    for (path, line, name), (_, calls, tt, ct, _) in st.stats.items():
        if any(path.endswith(f) for f in engine_files) or name in ("<module>",):
            continue
        short = path.split("/site-packages/")[-1].replace(str(ROOT) + "/", "")
        rows.append({"function": f"{short}:{line}({name})", "calls": calls,
                     "cumulative_share": round(ct / total, 4), "self_share": round(tt / total, 4)})
    by_cum = sorted(rows, key=lambda r: -r["cumulative_share"])
    return {"workers": workers, "chunks": args.chunks, "profiled_manager_seconds": round(total, 2),
            "note": "shares of the manager's profiled CPU; engine calls excluded; cProfile inflates small calls",
            "top_cumulative": [r for r in by_cum if r["cumulative_share"] < 0.999][:top],
            "top_self": sorted(rows, key=lambda r: -r["self_share"])[:top]}


def _summary(runs: list[dict], sizes: list[int]) -> list[dict]:
    """Per size: the median and range over the repeated runs."""
    out = []
    for n in sizes:
        mine = [r for r in runs if r["workers"] == n]
        rates = sorted(r["chunk_completions_per_manager_cpu_second"] for r in mine)
        per_chunk = sorted(r["manager_cpu_per_chunk_us"] for r in mine)
        out.append({"workers": n, "runs": len(mine),
                    "chunk_completions_per_manager_cpu_second": {"median": round(statistics.median(rates), 1),
                                                                 "min": rates[0], "max": rates[-1]},
                    "manager_cpu_per_chunk_us_median": round(statistics.median(per_chunk), 1),
                    "utilization_median": round(statistics.median(r["utilization"] for r in mine), 4),
                    "max_rss_mb": max(r["max_rss_mb"] for r in mine)})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--chunks", type=int, default=200_000)
    ap.add_argument("--chunk-seconds", type=float, default=2.0)
    ap.add_argument("--loss-rate", type=float, default=0.0, help="simulated worker losses per virtual second")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3, help="runs of each size (CPU time on a shared machine varies "
                    "by a fifth from run to run: the summary gives the median and the range)")
    ap.add_argument("--input", default=str(DEFAULT_INPUT))
    ap.add_argument("--profile", action="store_true", help="also profile the largest configuration")
    ap.add_argument("--profile-chunks", type=int, default=60_000)
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--profile-one", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args, args.one)))
        return
    if args.profile_one:
        print(json.dumps(profile(args, args.profile_one)))
        return
    from _common import emit

    common = ["--chunk-seconds", str(args.chunk_seconds), "--loss-rate", str(args.loss_rate),
              "--seed", str(args.seed), "--input", args.input]
    load0 = [round(x, 2) for x in os.getloadavg()]
    runs = []
    for _ in range(args.repeat):  # the sizes alternate, so a slow spell of the machine hits each alike
        for n in args.workers:  # a fresh process each: clean resident memory
            out = subprocess.run([sys.executable, __file__, "--one", str(n), "--chunks", str(args.chunks), *common],
                                 check=True, capture_output=True, text=True).stdout
            runs.append(json.loads(out.strip().splitlines()[-1]))
    results = {"input": os.path.relpath(args.input, ROOT), "load_average_before": load0,
               "summary": _summary(runs, args.workers), "runs": runs,
               "target": {"chunk_completions_per_manager_cpu_second": ">= 5000"}}
    if args.profile:
        out = subprocess.run([sys.executable, __file__, "--profile-one", str(max(args.workers)),
                              "--chunks", str(args.profile_chunks), *common],
                             check=True, capture_output=True, text=True).stdout
        results["profile"] = json.loads(out.strip().splitlines()[-1])
    emit("sim-cluster-manager", results)


if __name__ == "__main__":
    main()
