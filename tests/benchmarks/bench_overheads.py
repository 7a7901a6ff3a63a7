"""ddr's fixed costs: no-op chunk throughput, and time to the first partial result.

    python tests/benchmarks/bench_overheads.py [--chunks 5000] [--workers 2] [--repeats 3]

* no-op chunks: ``DynamicDataReduction`` over N work items whose processor returns ``{"n": 1}``; every
  item is a processing task and the partials are merged on the workers, as in a real run.
* first partial: ``ddr run analyses/dimuon.py --datasets datasets/samples.json`` as a subprocess; the
  time from launching the command (interpreter start included) to its first finished chunk, read from
  the report (``first_result_from_start_seconds``) plus the interpreter and import time before it.

Warm re-runs (a second run on the same manager) are measured by bench_warm.py.

Prints JSON (see ``_common.emit``).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _common import emit  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _one(item):
    return {"n": 1}


def _sum(a, b):
    return {"n": a["n"] + b["n"]}


def noop_chunks(n: int, workers: int) -> dict:
    import ddr

    job = ddr.DynamicDataReduction({"noop": {"n": n}}, _one, preprocess=lambda spec: ((i, 1) for i in range(spec["n"])),
                                   reducer=_sum, workers=workers, accumulation_size=16)
    t0 = time.perf_counter()
    out = job.compute()
    wall = time.perf_counter() - t0
    assert out["noop"]["n"] == n, out
    return {"chunks": n, "seconds": round(wall, 3), "chunks_per_second": round(n / wall)}


def first_partial_cli(repeats: int) -> dict:
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(repeats):
            report = pathlib.Path(tmp) / f"r{i}.json"
            t0 = time.perf_counter()
            before = subprocess.run([sys.executable, "-c", "import time, ddr.cli; print(time.perf_counter())"],
                                    capture_output=True, text=True, check=True)
            startup = time.perf_counter() - t0  # interpreter + imports, measured on its own
            t1 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "ddr.cli", "run", str(ROOT / "analyses" / "dimuon.py"),
                            "--datasets", str(ROOT / "datasets" / "samples.json"), "--quiet", "--report",
                            str(report), "--run-dir", str(pathlib.Path(tmp) / f"run{i}")], check=True,
                           capture_output=True)
            whole = time.perf_counter() - t1
            r = json.loads(report.read_text())
            runs.append({"first_partial_seconds": round(startup + r["first_result_from_start_seconds"], 3),
                         "command_seconds": round(whole, 3)})
            del before
    return {"runs": runs,
            "median_first_partial_seconds": statistics.median(x["first_partial_seconds"] for x in runs),
            "median_command_seconds": statistics.median(x["command_seconds"] for x in runs)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chunks", type=int, default=5000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-print", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    results = {"noop_chunks": noop_chunks(args.chunks, args.workers),
               "first_partial_cli": first_partial_cli(args.repeats)}
    if not args.no_print:
        emit("overheads", results)
    return results


if __name__ == "__main__":
    main()
