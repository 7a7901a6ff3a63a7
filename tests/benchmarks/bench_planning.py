"""Planning scale: time to first dispatch and manager memory for 10^3 .. 10^6 chunk specs.

    python tests/benchmarks/bench_planning.py [--sizes 1000,10000,100000,1000000] [--dask-cap-seconds 60]

ddr: a preprocessed fileset of 1,000 files whose entry counts give N chunks at a fixed chunk size; the
manager loads it and submits its first tasks (the driver's first submissions on a sync engine, nothing run).
Chunks are cut lazily, so neither time nor memory should grow with N beyond the fileset itself.

dask-awkward (in its own virtual environment: dask-awkward 2026.2 pins dask 2025.3, which conflicts
with the dask/distributed 2026.8 that ddr uses; coffea 2026 no longer installs it): ``dak.from_map`` over N
partitions, a small selection and a sum, then the low-level task
graph that a scheduler would receive is materialised; this is what coffea + dask-awkward pays before the
first task runs. Sizes beyond ``--dask-cap-seconds`` of the previous size's extrapolation are skipped.

Each measurement runs in a fresh subprocess; memory is the child's peak RSS minus its RSS after imports.
Prints JSON (see ``_common.emit``).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _common import dask_awkward_python, emit  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]

_DDR_CHILD = r"""
import json, os, resource, sys, time
sys.path.insert(0, {root!r})
import vinecore, ddr
from ddr._analysis import load_analysis
n, files, fileset = {n}, {files}, {fileset!r}
proc = next(iter(load_analysis({analysis!r}).values()))
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
base = rss()
t0 = time.perf_counter()
job = ddr.CoffeaDynamicDataReduction(fileset, proc, chunk_size=100, engine="sync")
with vinecore.Manager(engine="sync", workers=2) as m:
    run = job._start(m)
    from ddr._reduction import Capacity
    run._apply(run.machine.handle(Capacity(m.hungry(), 0.0, m.statistics().workers)))  # first submissions
    t1 = time.perf_counter()
    submitted = m.statistics().tasks_submitted
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({{"first_dispatch_seconds": round(t1 - t0, 4), "tasks_submitted": submitted,
                  "peak_mb_above_imports": round(peak - base, 1)}}))
"""

_DASK_CHILD = r"""
import json, os, resource, time
import awkward as ak
import dask
import dask_awkward as dak
import numpy as np
n = {n}
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
class Load:
    def __call__(self, i):
        return ak.Array({{"pt": np.arange(10.0) + i}})
meta = ak.Array({{"pt": np.arange(1.0)}}).layout.to_typetracer(forget_length=True)
base = rss()
t0 = time.perf_counter()
arr = dak.from_map(Load(), list(range(n)), label="load", meta=ak.Array(meta))
selected = arr.pt[arr.pt > 3] * 2
total = dak.sum(selected, axis=None)
(opt,) = dask.optimize(total)
graph = dict(opt.__dask_graph__())
t1 = time.perf_counter()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({{"graph_seconds": round(t1 - t0, 4), "graph_tasks": len(graph),
                  "peak_mb_above_imports": round(peak - base, 1)}}))
"""


def _fileset(path: pathlib.Path, n: int, files: int) -> None:
    per_file = max(1, n // files) * 100  # entries: chunk size 100 gives n // files chunks per file
    spec = {"Synthetic": {"files": {f"/data/does-not-need-to-exist/f{i:05d}.root":
                                    {"object_path": "Events", "num_entries": per_file, "uuid": f"{i:032x}"}
                                    for i in range(files)}}}
    path.write_text(json.dumps(spec))


def _child(code: str, timeout: float, python: str = sys.executable) -> dict:
    r = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        return {"error": r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"exit {r.returncode}"}
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000,10000,100000,1000000")
    ap.add_argument("--files", type=int, default=1000)
    ap.add_argument("--dask-cap-seconds", type=float, default=60.0)
    ap.add_argument("--dask-python", help="a Python with dask-awkward (default: a venv made in --cache-dir)")
    ap.add_argument("--cache-dir", default=os.path.expanduser("~/.cache/ddr-bench"))
    ap.add_argument("--no-print", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    out: dict = {"ddr": {}, "dask_awkward": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            fs = pathlib.Path(tmp) / f"fs{n}.json"
            files = min(args.files, n)
            _fileset(fs, n, files)
            code = _DDR_CHILD.format(root=str(ROOT), n=n, files=files, fileset=str(fs),
                                     analysis=str(ROOT / "analyses" / "dimuon.py"))
            out["ddr"][str(n)] = _child(code, 600)
    dask_python = args.dask_python or dask_awkward_python(pathlib.Path(args.cache_dir))
    versions = subprocess.run([dask_python, "-c", "import dask, dask_awkward, awkward; print(dask.__version__, "
                               "dask_awkward.__version__, awkward.__version__)"], capture_output=True, text=True)
    out["dask_awkward_env"] = dict(zip(["dask", "dask_awkward", "awkward"], versions.stdout.split()))
    last = None
    for n in sizes:
        if last is not None and last[1] * n / last[0] > args.dask_cap_seconds:
            out["dask_awkward"][str(n)] = {"skipped": f"extrapolated {last[1] * n / last[0]:.0f} s > cap"}
            continue
        try:
            res = _child(_DASK_CHILD.format(n=n), args.dask_cap_seconds * 3, dask_python)
        except subprocess.TimeoutExpired:
            res = {"skipped": f"over {args.dask_cap_seconds * 3:.0f} s"}
        out["dask_awkward"][str(n)] = res
        if "graph_seconds" in res:
            last = (n, res["graph_seconds"])
    if not args.no_print:
        emit("planning-scale", out)
    return out


if __name__ == "__main__":
    main()
