"""Remote input on loopback: local files vs root:// with a cold node cache vs a warm one (and read in place).

    python tests/benchmarks/bench_remote.py [--files 4] [--events-per-file 2000000] [--workers 2] [--repeats 3]
                                            [--data-dir DIR] [--contenders local,cold,warm,in_place,always]

The 8M-event narrow synthetic dataset (``datasets/generate.py``: 4 files x 2M events, 39 branches), served
by a real ``xrootd`` (Debian's xrootd-server) on 127.0.0.1, the dimuon / ADL Q5 analysis
(``analyses/dimuon.py``), ``CoffeaDynamicDataReduction`` on the local engine with 2 workers, each run on
fresh worker processes (started inside the timed call, as in bench_throughput's "ddr").

* ``local``: the files on local disk;
* ``cold``: ``root://`` with ``cache="auto"`` and an empty node cache: files are read in place while
  the node downloads them in the background (timed until the run's result; the downloads then finish
  untimed, ``prefetch_tail_seconds``, before the next contender starts);
* ``warm``: the same with the cache already filled by an earlier run (a re-run with a changed cut);
* ``in_place``: ``root://`` with ``cache="never"`` (uproot's XRootD reader, ranged reads);
* ``always``: ``root://`` with ``cache="always"`` and an empty cache: every file is downloaded whole
  before its chunks are read.

Each contender runs ``--repeats`` times; the median is reported with every sample, the machine's load
average around each, and the bytes the server sent (its trace log). The mass histograms must agree.
Loopback makes transfers nearly free, so this measures ddr's overheads, not a network; on a real one the
warm cache saves the whole transfer. Prints JSON (see ``_common.emit``).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))
from _common import emit  # noqa: E402


def _mass_counts(result) -> np.ndarray:
    out = result if "mass" in result else next(iter(result.values()))
    return np.asarray(out["mass"].project("mass").values(), dtype=np.int64)


def make_data(data_dir: pathlib.Path, files: int, events_per_file: int) -> tuple[pathlib.Path, float]:
    """A folder the xrootd user can read, holding the generated files (made once)."""
    from tests._helpers import generate

    out = data_dir / f"narrow-{files}x{events_per_file}"
    fileset = out / "fileset.json"
    seconds = 0.0
    if not fileset.exists():
        t0 = time.perf_counter()
        generate(out, files=files, events_per_file=events_per_file, jobs=2)
        seconds = time.perf_counter() - t0
    for p in [data_dir, out, *out.iterdir()]:
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    return fileset, seconds


def url_fileset(fileset: pathlib.Path, url_of, dest: pathlib.Path) -> pathlib.Path:
    spec = json.loads(fileset.read_text())
    for ds in spec.values():
        ds["files"] = {url_of(name): tree for name, tree in ds["files"].items()}
    dest.write_text(json.dumps(spec))
    return dest


def timed(fileset: pathlib.Path, workers: int, remote=None) -> dict:
    import ddr
    from analyses.dimuon import DimuonProcessor

    job = ddr.CoffeaDynamicDataReduction(str(fileset), DimuonProcessor(), workers=workers, remote=remote)
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    out = job.compute()
    wall = time.perf_counter() - t0
    rep = job.report["datasets"]
    read = {k: sum(d["bytes_read"][k] for d in rep.values()) for k in ("remote", "cache", "local")}
    return {"seconds": wall, "mass": np.sum([_mass_counts(v) for v in out.values()], axis=0),
            "load_before": load0, "load_after": os.getloadavg()[0], "bytes_read": read}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=4)
    ap.add_argument("--events-per-file", type=int, default=2_000_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--data-dir", default=os.path.join(tempfile.gettempdir(), "ddr-bench-remote"),
                    help="where the synthetic files are generated (must be readable by the xrootd user)")
    ap.add_argument("--contenders", default="local,cold,warm,in_place")
    args = ap.parse_args()

    from ddr import RemoteOptions
    from tests.remote._servers import XRootDServer, make_data_dir, missing_reason, wait_for_prefetches

    why = missing_reason("xrootd", "xrootd-server")
    if why:
        sys.exit(f"bench_remote: {why}")
    data_dir = pathlib.Path(args.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    fileset, gen_seconds = make_data(data_dir, args.files, args.events_per_file)
    work = pathlib.Path(make_data_dir("ddr-bench-xrootd-"))
    cache_dir = work / "cache"
    server = XRootDServer(str(fileset.parent), str(work / "xrootd"), trace=True).start()
    try:
        remote = url_fileset(fileset, server.url, work / "remote.json")
        def cold(mode: str) -> dict:
            shutil.rmtree(cache_dir, ignore_errors=True)
            return timed(remote, args.workers, RemoteOptions(cache=mode, cache_dir=str(cache_dir)))

        contenders = {
            "local": lambda: timed(fileset, args.workers),
            "cold": lambda: cold("auto"),
            "warm": lambda: timed(remote, args.workers, RemoteOptions(cache="auto", cache_dir=str(cache_dir))),
            "in_place": lambda: timed(remote, args.workers, RemoteOptions(cache="never")),
            "always": lambda: cold("always"),
        }
        chosen = [c.strip() for c in args.contenders.split(",") if c.strip()]
        unknown = [c for c in chosen if c not in contenders]
        if unknown:
            sys.exit(f"bench_remote: unknown contenders {unknown}; choose from {sorted(contenders)}")
        if "warm" in chosen:  # fill the cache once, untimed
            timed(remote, args.workers, RemoteOptions(cache="always", cache_dir=str(cache_dir)))
        results: dict[str, dict] = {}
        reference = None
        for _ in range(args.repeats):  # interleaved, so that load changes hit every contender alike
            for name in chosen:
                if name == "warm":  # another contender may have emptied the cache: fill it, untimed
                    timed(remote, args.workers, RemoteOptions(cache="always", cache_dir=str(cache_dir)))
                served0 = server.bytes_read()
                r = contenders[name]()
                t_tail = time.perf_counter()
                wait_for_prefetches(str(cache_dir), timeout=600)  # background downloads end before the next
                r["prefetch_tail"] = time.perf_counter() - t_tail
                r["server_bytes"] = server.bytes_read() - served0
                if reference is None:
                    reference = r["mass"]
                elif not np.array_equal(reference, r["mass"]):
                    sys.exit(f"bench_remote: {name} gave another mass histogram than the first contender")
                results.setdefault(name, []).append(r)
        size = sum(p.stat().st_size for p in fileset.parent.glob("*.root"))
        events = args.files * args.events_per_file
        summary: dict[str, dict] = {}
        for name, runs in results.items():
            secs = [r["seconds"] for r in runs]
            med = statistics.median(secs)
            summary[name] = {"median_seconds": round(med, 3), "events_per_second": round(events / med),
                             "samples_seconds": [round(s, 3) for s in secs],
                             "load_average_1min": [[round(r["load_before"], 2), round(r["load_after"], 2)]
                                                   for r in runs],
                             "server_bytes_per_run": [r["server_bytes"] for r in runs],
                             "prefetch_tail_seconds": [round(r["prefetch_tail"], 2) for r in runs],
                             "bytes_read_per_run": runs[-1]["bytes_read"]}
        if "local" in summary:
            local = summary["local"]["median_seconds"]
            for name in summary:
                summary[name]["vs_local"] = round(summary[name]["median_seconds"] / local, 3)
        emit("bench_remote", {
            "dataset": {"files": args.files, "events": events, "bytes": size, "width": "narrow",
                        "generated_seconds": round(gen_seconds, 1)},
            "workers": args.workers, "repeats": args.repeats, "analysis": "analyses/dimuon.py",
            "server": "xrootd (Debian xrootd-server) on 127.0.0.1, trace log on", "contenders": summary,
            "targets": {"warm_vs_local": "<= 1.10", "cold_vs_local": "<= 1.25"}})
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
