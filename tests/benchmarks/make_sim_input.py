"""Measure a real ddr run and write the durations extract the simulated cluster draws from.

    python tests/benchmarks/make_sim_input.py [--files 8] [--events-per-file 500000] [--chunk-size 25000]
        [-o tests/benchmarks/data/sim_dimuon.json]

Generates synthetic NanoAOD files (``datasets/generate.py``), runs
``ddr run analyses/dimuon.py`` on them with the local engine and 2 workers,
and keeps from the run's transactions log (``RUN_DIR/transactions.jsonl``)
each successful task's category, wall time and memory, plus the pickled size
of one dataset's result (the size of a partial result: histograms do not grow
with the events they hold). ``bench_sim_cluster.py`` reads the extract.
"""

from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests._helpers import generate  # noqa: E402
from vinecore.engines._sim_model import Durations  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=8)
    ap.add_argument("--events-per-file", type=int, default=500_000)
    ap.add_argument("--chunk-size", type=int, default=25_000)
    ap.add_argument("-o", "--output", default=str(ROOT / "tests" / "benchmarks" / "data" / "sim_dimuon.json"))
    args = ap.parse_args()
    import json

    import cloudpickle
    from coffea.util import load

    with tempfile.TemporaryDirectory(prefix="sim-input-") as tmp:
        fileset = generate(os.path.join(tmp, "data"), files=args.files, events_per_file=args.events_per_file,
                           chunk=min(100_000, args.events_per_file), seed=11)
        run_dir = os.path.join(tmp, "run")
        cmd = [sys.executable, "-m", "ddr.cli", "run", str(ROOT / "analyses" / "dimuon.py"), "--datasets",
               str(fileset), "--workers", "2", "--chunk-size", str(args.chunk_size), "--run-dir", run_dir,
               "-o", os.path.join(tmp, "out.coffea"), "--quiet"]
        load0 = os.getloadavg()
        subprocess.run(cmd, check=True, cwd=ROOT)
        durations = Durations.from_transactions(os.path.join(run_dir, "transactions.jsonl"))
        out = load(os.path.join(tmp, "out.coffea"))
        partial = len(cloudpickle.dumps(next(iter(out.values()))))
    durations = Durations(durations.samples, partial)
    doc = durations.to_json(
        command="ddr run analyses/dimuon.py --workers 2 --chunk-size %d (local engine)" % args.chunk_size,
        data=f"{args.files} synthetic NanoAOD files x {args.events_per_file} events (datasets/generate.py, seed 11)",
        date=datetime.date.today().isoformat(), machine=f"{os.cpu_count()} cores",
        load_average=[round(x, 2) for x in load0])
    pathlib.Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    cats = doc.pop("categories")
    text = json.dumps(doc, indent=1)[:-2] + ',\n "categories": {\n' + ",\n".join(
        f'  "{cat}": [\n' + ",\n".join("   " + json.dumps(row) for row in rows) + "\n  ]"
        for cat, rows in cats.items()) + "\n }\n}\n"
    with open(args.output, "w") as f:
        f.write(text)
    print(json.dumps({cat: len(rows) for cat, rows in cats.items()} | {"partial_bytes": partial}))


if __name__ == "__main__":
    main()
