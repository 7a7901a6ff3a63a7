"""Throughput of the dimuon / ADL Q5 analysis: ddr vs coffea's Runner vs a plain uproot floor.

    python tests/benchmarks/bench_throughput.py [--width narrow|wide] [--files 8] [--events-per-file 2000000]
                                                [--workers 2] [--data-dir DIR] [--contenders ddr,futures,floor]

Synthetic NanoAOD from ``datasets/generate.py`` (generated once into ``--data-dir``, reused after).
``narrow`` files have ~35 branches; ``wide`` ones are padded to ~1,300 branches like real NanoAOD.

Contenders, all on the same files and the same number of worker processes:

* ``ddr``: ``CoffeaDynamicDataReduction`` with the local engine (adaptive chunks), timed from
  ``compute()``, which starts the worker processes (forked from the manager's process, so with numpy,
  awkward, uproot and coffea already imported; started afresh, ~0.5 s of imports each, where ddr does
  not fork, e.g. in Jupyter: see docs/design.md "Worker start");
* ``ddr_warm``: the same on a manager whose workers are already running (a re-run in a session),
  comparable with the floor's process pool, which forks from a parent that has imported everything;
* ``futures``: coffea ``processor.Runner`` with ``FuturesExecutor(workers=N)`` (its default chunk size);
* ``dask_awkward``: coffea's dask mode, ``preprocess`` + ``apply_to_fileset`` (500k-entry steps) computed on a
  ``distributed.LocalCluster`` of N single-threaded worker processes, the same selection written with
  ``hist.dask`` (``_dask_awkward_dimuon.py``; in its own environment, see ``_common.dask_awkward_python``);
  timed from preprocessing to the result, cluster start-up excluded;
* ``floor``: the same selection (three histograms and the cutflow) written with uproot + awkward only,
  N processes, each file opened once, only the six muon/MET branches read. No framework beats it by much.

Each contender runs ``--repeats`` times (default 3); the median is reported with every sample. The mass
histograms of all contenders are compared; the run fails loudly if they differ.
Prints JSON (see ``_common.emit``); ``data`` says when the files were generated and their total size, so
runs on different files (a changed generator) are told apart.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import datetime
import importlib.util
import json
import os
import pathlib
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _common import emit  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]
MASS_BINS = np.linspace(0.0, 150.0, 151)


def _generator():
    spec = importlib.util.spec_from_file_location("ddr_datasets_generate", ROOT / "datasets" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def make_data(data_dir: pathlib.Path, width: str, files: int, events_per_file: int) -> tuple[pathlib.Path, float]:
    """Fileset path (generated unless already there) and the seconds spent generating."""
    out = data_dir / f"{width}-{files}x{events_per_file}"
    fileset = out / "fileset.json"
    if fileset.exists():
        return fileset, 0.0
    pad = {"pad_hlt": 700, "pad_float": 600} if width == "wide" else {}
    t0 = time.perf_counter()
    path = _generator().generate(out, files=files, events_per_file=events_per_file, jobs=2, **pad)
    return pathlib.Path(path), time.perf_counter() - t0


def _identity(fileset: pathlib.Path) -> dict:
    """When the files were generated and their total size: two runs on different files (the generator
    changed, other compression) are told apart without hashing gigabytes."""
    paths = [pathlib.Path(p) for p, _ in _files(fileset)]
    made = datetime.datetime.fromtimestamp(fileset.stat().st_mtime, datetime.timezone.utc)
    return {"generated_at": made.isoformat(timespec="seconds"), "bytes": sum(p.stat().st_size for p in paths)}


def _files(fileset: pathlib.Path) -> list[tuple[str, str]]:
    spec = json.loads(fileset.read_text())
    out = []
    for ds in spec.values():
        files = ds["files"] if isinstance(ds, dict) else {f: "Events" for f in ds}
        for f, tree in files.items():
            tree = tree if isinstance(tree, str) else tree.get("object_path", "Events")
            p = pathlib.Path(f)
            out.append((str(p if p.is_absolute() else fileset.parent / p), tree))
    return out


def _branch_count(path: str, tree: str) -> int:
    import uproot

    with uproot.open(path) as f:
        return len(f[tree].keys())


def _mass_counts(result) -> np.ndarray:
    out = result if "mass" in result else next(iter(result.values()))
    return np.asarray(out["mass"].project("mass").values(), dtype=np.int64)


# ------------------------------------------------------------------ ddr
def _timed_compute(fileset: pathlib.Path, **options):
    import ddr
    from analyses.dimuon import DimuonProcessor

    job = ddr.CoffeaDynamicDataReduction(str(fileset), DimuonProcessor(), **options)
    t0 = time.perf_counter()
    out = job.compute()
    wall = time.perf_counter() - t0
    return wall, np.sum([_mass_counts(v) for v in out.values()], axis=0)


def run_ddr(fileset: pathlib.Path, workers: int):
    return _timed_compute(fileset, workers=workers)


def run_ddr_warm(fileset: pathlib.Path, workers: int):
    """ddr on worker processes that are already running, as on a re-run in a notebook session: a
    ``vinecore.Manager`` is started and warmed with one run over the shipped samples, then timed."""
    import vinecore

    with vinecore.Manager(workers=workers) as m:
        _timed_compute(ROOT / "datasets" / "samples.json", manager=m)
        return _timed_compute(fileset, manager=m)


# ------------------------------------------------------------ coffea Runner
def run_futures(fileset: pathlib.Path, workers: int):
    from coffea import processor
    from coffea.nanoevents import NanoAODSchema

    from analyses.dimuon import DimuonProcessor

    spec = json.loads(fileset.read_text())
    absolute = {}
    for name, ds in spec.items():
        files = {}
        for f, tree in ds["files"].items():
            p = pathlib.Path(f)
            files[str(p if p.is_absolute() else fileset.parent / p)] = tree if isinstance(tree, str) else "Events"
        absolute[name] = {"files": files}
    runner = processor.Runner(executor=processor.FuturesExecutor(workers=workers, status=False), schema=NanoAODSchema,
                              savemetrics=False)
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # coffea's progress bars: keep stdout pure JSON
        out = runner(absolute, DimuonProcessor(), treename="Events")
    wall = time.perf_counter() - t0
    return wall, _mass_counts(out)


# ------------------------------------------------------- coffea + dask-awkward
_DATA_DIR: list[pathlib.Path] = []  # set by main(): where the dask-awkward environment is kept


def run_dask_awkward(fileset: pathlib.Path, workers: int):
    import subprocess

    from _common import dask_awkward_python

    python = dask_awkward_python(_DATA_DIR[0])
    r = subprocess.run([python, str(pathlib.Path(__file__).with_name("_dask_awkward_dimuon.py")), str(fileset),
                        str(workers)], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"the dask-awkward run failed: {r.stderr.strip().splitlines()[-1:]}")
    doc = json.loads(r.stdout.strip().splitlines()[-1])
    return doc["seconds"], np.asarray(doc["mass"], dtype=np.int64), {
        k: round(doc[k], 2) if isinstance(doc[k], float) else doc[k]
        for k in ("preprocess_seconds", "graph_seconds", "compute_seconds", "steps")}


# -------------------------------------------------------------- the floor
LOG_BINS = np.geomspace(0.25, 300.0, 301)
MET_BINS = np.linspace(0.0, 200.0, 101)


def _floor_file(args: tuple[str, str, int]) -> np.ndarray:
    """The dimuon/Q5 selection with uproot + awkward only: the same three histograms and cutflow."""
    import awkward as ak
    import uproot

    path, tree, step = args
    counts = np.zeros(len(MASS_BINS) - 1, dtype=np.int64)
    log_counts = np.zeros(len(LOG_BINS) - 1, dtype=np.int64)
    met_counts = np.zeros(len(MET_BINS) - 1, dtype=np.int64)
    cutflow = np.zeros(4, dtype=np.int64)
    branches = ["Muon_pt", "Muon_eta", "Muon_phi", "Muon_mass", "Muon_charge", "MET_pt"]
    with uproot.open(path) as f:
        t = f[tree]
        for start in range(0, t.num_entries, step):
            a = t.arrays(branches, entry_start=start, entry_stop=min(start + step, t.num_entries))
            mu = ak.zip({"pt": a.Muon_pt, "eta": a.Muon_eta, "phi": a.Muon_phi, "m": a.Muon_mass,
                         "q": a.Muon_charge})
            two = ak.num(mu, axis=1) >= 2
            mu = mu[two]
            p = ak.combinations(mu, 2, fields=["a", "b"])
            p = p[p.a.q != p.b.q]
            a_, b_ = p.a, p.b
            px = a_.pt * np.cos(a_.phi) + b_.pt * np.cos(b_.phi)
            py = a_.pt * np.sin(a_.phi) + b_.pt * np.sin(b_.phi)
            pz = a_.pt * np.sinh(a_.eta) + b_.pt * np.sinh(b_.eta)
            e = (np.sqrt((a_.pt * np.cosh(a_.eta)) ** 2 + a_.m ** 2)
                 + np.sqrt((b_.pt * np.cosh(b_.eta)) ** 2 + b_.m ** 2))
            m = np.sqrt(np.maximum(e ** 2 - px ** 2 - py ** 2 - pz ** 2, 0))
            flat = ak.to_numpy(ak.flatten(m, axis=1))
            counts += np.histogram(flat, bins=MASS_BINS)[0]
            log_counts += np.histogram(flat, bins=LOG_BINS)[0]
            in_z = ak.any((m > 60.0) & (m < 120.0), axis=1)
            met_counts += np.histogram(ak.to_numpy(a.MET_pt[two][in_z]), bins=MET_BINS)[0]
            cutflow += [len(a), int(ak.sum(two)), int(ak.sum(ak.num(m, axis=1) > 0)), int(ak.sum(in_z))]
    return counts


def run_floor(fileset: pathlib.Path, workers: int, step: int = 500_000):
    files = _files(fileset)
    t0 = time.perf_counter()
    with cf.ProcessPoolExecutor(workers) as pool:
        parts = list(pool.map(_floor_file, [(p, t, step) for p, t in files]))
    wall = time.perf_counter() - t0
    return wall, np.sum(parts, axis=0)


CONTENDERS = {"ddr": run_ddr, "ddr_warm": run_ddr_warm, "futures": run_futures, "dask_awkward": run_dask_awkward,
              "floor": run_floor}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--width", choices=["narrow", "wide"], default="narrow")
    ap.add_argument("--files", type=int, default=8)
    ap.add_argument("--events-per-file", type=int, default=2_000_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="runs per contender; the median is reported")
    ap.add_argument("--data-dir", default=os.path.expanduser("~/.cache/ddr-bench"))
    ap.add_argument("--contenders", default="ddr,ddr_warm,futures,dask_awkward,floor")
    ap.add_argument("--no-print", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    fileset, gen_seconds = make_data(pathlib.Path(args.data_dir), args.width, args.files, args.events_per_file)
    events = args.files * args.events_per_file
    first = _files(fileset)[0]
    results: dict = {"width": args.width, "branches": _branch_count(*first), "events": events,
                     "files": args.files, "workers": args.workers, "generated_seconds": round(gen_seconds, 1),
                     "data": _identity(fileset), "contenders": {}}
    masses = {}
    _DATA_DIR[:] = [pathlib.Path(args.data_dir)]
    for name in args.contenders.split(","):
        walls, extra = [], {}
        try:
            for _ in range(args.repeats):
                wall, mass, *more = CONTENDERS[name](fileset, args.workers)
                walls.append(wall)
                masses.setdefault(name, mass)
                extra = more[0] if more else {}
        except Exception as exc:  # noqa: BLE001 - one contender failing must not hide the others
            results["contenders"][name] = {"error": f"{type(exc).__name__}: {exc}"}
            continue
        wall = statistics.median(walls)
        results["contenders"][name] = {"seconds": round(wall, 2), "events_per_second": round(events / wall),
                                       "samples_seconds": [round(w, 2) for w in walls], **extra}
    ref = next(iter(masses.values()))
    # the floor computes the mass in its own float arithmetic: a few pairs may fall on the other side
    # of a bin edge, but the number of pairs must be the same
    results["mass_histograms_agree"] = {
        n: bool(m.sum() == ref.sum() and np.abs(m - ref).sum() <= max(10, 1e-4 * ref.sum()))
        for n, m in masses.items()}
    results["mass_pairs"] = int(ref.sum())
    rates = {n: c["events_per_second"] for n, c in results["contenders"].items() if "events_per_second" in c}
    if "ddr" in rates:
        results["ratios"] = {f"ddr/{n}": round(rates["ddr"] / r, 3) for n, r in rates.items() if n != "ddr"}
        if "ddr_warm" in rates:
            results["ratios"].update({f"ddr_warm/{n}": round(rates["ddr_warm"] / r, 3) for n, r in rates.items()
                                      if n not in ("ddr", "ddr_warm")})
    if not args.no_print:
        emit(f"throughput-{args.width}", results)
    disagree = [n for n, ok in results["mass_histograms_agree"].items() if not ok]
    if disagree:
        print(f"mass histograms differ for {disagree}: the comparison is not fair", file=sys.stderr)
    return results


if __name__ == "__main__":
    main()
