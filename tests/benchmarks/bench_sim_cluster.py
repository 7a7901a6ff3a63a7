"""The manager at cluster scale: ddr on a simulated cluster of 1,000 and 10,000 workers.

    python tests/benchmarks/bench_sim_cluster.py [--workers 1000 10000] [--chunks 200000]
        [--chunk-seconds 2 | --demand 5000] [--loss-rate 0] [--repeat 3] [--profile]
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

Two questions, two modes. ``--chunk-seconds T`` (default 2): the same chunks
for every size, so 1,000 workers ask the manager for 1,000 / T completions per
second and 10,000 workers for ten times that. Below the manager's capacity each
step handles one or two completions and each pays a step's fixed cost, so the
CPU per chunk there is the manager's cost at low load, not what it can sustain.
``--demand R``: each size gets chunks of workers / R seconds, so every size asks
for R completions per second (R = 5,000: 0.2 s chunks at 1,000 workers, 2 s at
10,000); the manager sustains R when the workers stay busy (``utilization``)
and ``manager_busy_share`` (its CPU over the virtual time) stays below 1.
Each run prints ``demanded_completions_per_second`` and
``completions_per_virtual_second`` (what the simulated cluster delivered), over
the whole run and in ``steady_state`` (from 10 % to 90 % of the chunks done: a
run of ten chunks per worker spends a good part of its time ramping up and
draining, which says nothing about how well the manager keeps workers fed).
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


def chunk_seconds(args, workers: int) -> float:
    """The mean chunk duration of a size: ``--chunk-seconds``, or workers / ``--demand``."""
    return workers / args.demand if args.demand else args.chunk_seconds


def _engine(args, workers: int):
    from vinecore.engines.sim import Durations, SimEngine

    durations = Durations.from_file(args.input).scaled("processing", chunk_seconds(args, workers))
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


def steady_state(samples: list[dict], workers: int, seconds: float) -> dict | None:
    """Between the samples at 10 % and 90 % of the chunks done: the run without its ramp-up (the first
    tasks planned and submitted while workers wait) and its tail (the last chunks and merges, fewer than
    the workers). ``processing_share_of_workers``: completions per virtual second x mean chunk seconds /
    workers, the share of the workers' time spent on chunks (merges take the rest, and idling)."""
    if len(samples) < 9:
        return None
    a, b = samples[0], samples[8]
    span = b["virtual_s"] - a["virtual_s"]
    chunks = b["chunks_done"] - a["chunks_done"]
    cpu = b["manager_cpu_s"] - a["manager_cpu_s"]
    if span <= 0 or chunks <= 0:
        return None
    rate = chunks / span
    return {"from_chunks_done": a["chunks_done"], "to_chunks_done": b["chunks_done"],
            "completions_per_virtual_second": round(rate, 1),
            "processing_share_of_workers": round(rate * seconds / workers, 4),
            "manager_busy_share": round(cpu / span, 4),
            "manager_cpu_per_chunk_us": round(cpu / chunks * 1e6, 1)}


def one(args, workers: int) -> dict:
    """One configuration, in this process."""
    engine = _engine(args, workers)
    report, wall = _run(args, engine)
    s = engine.stats()
    cpu = s["manager_cpu_seconds"]
    chunks = s["completed"].get("processing", 0)
    rate = chunks / cpu if cpu else None
    seconds = chunk_seconds(args, workers)
    return {
        "workers": workers, "chunks": chunks, "chunk_seconds_mean": seconds,
        "demanded_completions_per_second": round(workers / seconds, 1),
        "completions_per_virtual_second": round(chunks / s["virtual_seconds"], 1),
        "manager_busy_share": round(cpu / s["virtual_seconds"], 4),
        "tasks_completed": s["completed"], "loss_rate_per_virtual_second": args.loss_rate,
        "losses": s["losses"], "recomputations": s["recomputations"],
        "manager_cpu_seconds": cpu, "engine_cpu_seconds": s["engine_cpu_seconds"], "wall_seconds": round(wall, 2),
        "manager_cpu_per_chunk_us": round(cpu / chunks * 1e6, 1) if chunks else None,
        "chunk_completions_per_manager_cpu_second": round(rate, 1) if rate else None,
        "workers_fed_at_this_chunk_duration": int(rate * seconds) if rate else None,
        "virtual_seconds": s["virtual_seconds"],
        "ideal_virtual_seconds": round(chunks * seconds / workers, 2),
        "utilization": s["utilization"], "dispatch_latency_ms": s["dispatch_latency_ms"],
        "steady_state": steady_state(s["rss_samples"], workers, seconds),
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
        out.append({"workers": n, "runs": len(mine), "chunk_seconds_mean": mine[0]["chunk_seconds_mean"],
                    "chunk_completions_per_manager_cpu_second": {"median": round(statistics.median(rates), 1),
                                                                 "min": rates[0], "max": rates[-1]},
                    "manager_cpu_per_chunk_us_median": round(statistics.median(per_chunk), 1),
                    "utilization_median": round(statistics.median(r["utilization"] for r in mine), 4),
                    "manager_busy_share_median": round(statistics.median(r["manager_busy_share"] for r in mine), 4),
                    "steady_state_processing_share_of_workers_median": _median_of(
                        r["steady_state"] and r["steady_state"]["processing_share_of_workers"] for r in mine),
                    "max_rss_mb": max(r["max_rss_mb"] for r in mine)})
    return out


def _median_of(values) -> float | None:
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 4) if values else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--chunks", type=int, default=200_000)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--chunk-seconds", type=float, default=2.0, help="mean chunk duration for every size")
    mode.add_argument("--demand", type=float, help="completions per second every size asks for: chunks of "
                      "workers / DEMAND seconds (see above)")
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
    if args.demand is not None and args.demand <= 0:
        ap.error(f"--demand must be > 0 completions per second (got {args.demand:g})")
    if args.one:
        print(json.dumps(one(args, args.one)))
        return
    if args.profile_one:
        print(json.dumps(profile(args, args.profile_one)))
        return
    from _common import emit

    common = ["--demand", str(args.demand)] if args.demand else ["--chunk-seconds", str(args.chunk_seconds)]
    common += ["--loss-rate", str(args.loss_rate),
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
               "mode": f"demand {args.demand:g} completions per second" if args.demand
               else f"chunks of {args.chunk_seconds:g} s",
               "target": {"chunk_completions_per_manager_cpu_second": ">= 5000",
                          "meaning": "one manager sustains 5,000 completions per second: at --demand 5000 the "
                                     "workers stay busy and the manager's busy share stays below 1"}}
    if args.profile:
        out = subprocess.run([sys.executable, __file__, "--profile-one", str(max(args.workers)),
                              "--chunks", str(args.profile_chunks), *common],
                             check=True, capture_output=True, text=True).stdout
        results["profile"] = json.loads(out.strip().splitlines()[-1])
    emit("sim-cluster-manager", results)


if __name__ == "__main__":
    main()
