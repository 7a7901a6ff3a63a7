#!/usr/bin/env python
"""Synthetic NanoAOD-like files for benchmarks, seeded from the real samples.

The four real NanoAOD samples in ``datasets/samples`` (2018 DoubleMuon data,
DY and ttbar MC, 2023 EGamma data) hold only 1280 events between them: too
few to measure throughput. This script turns them into as many events as you
like, with the same branch names, types and multiplicities as real NanoAOD:

1. **Events** come from ``nanoaod_synth.py`` (beside this file): real
   events of the samples, bootstrapped, rotated in phi and smeared, a Z ->
   mumu signal in a fraction of them, event IDs (see its docstring).
2. **Width.** ``--pad-hlt N`` adds N ``HLT_Pad*`` booleans (about 1% true:
   few bytes, but each one is a branch to open), ``--pad-float N`` adds N
   float32 ``Pad_f*`` branches (random, about 4 bytes/event each). Real
   NanoAOD has 1000-2700 branches; the unpadded file has 39.

Files are TTrees written with ``uproot.recreate`` + ``mktree`` + ``extend``,
one basket per branch per chunk (``--chunk`` events). (Assigning
``f["Events"] = data`` would write an RNTuple instead.)

**Many files cheaply.** Only the first ``--unique`` files (default 4) are
generated; the others are byte copies of them (reflinked where the file
system can) with a fresh random UUID patched into the file header, so that
coffea, which keys its caches and partitions on the file UUID, sees distinct
files. Clones repeat their original's events, including the event numbers.
Every file gets a random UUID, so regenerating with the same seed never gives
two different files the same UUID.

**Cross-references.** The generated ``Muon_jetIdx``, ``Electron_jetIdx``,
``Jet_muonIdx1/2`` and ``Jet_electronIdx1/2`` are real. NanoAODSchema still
warns about the collections that are absent (Photon, Tau, FatJet,
LowPtElectron, FsrPhoton); silence that with
``NanoAODSchema.warn_missing_crossrefs = False``.

Next to the files it writes ``fileset.json`` (coffea's raw dialect, paths
relative to the folder) and ``fileset_preprocessed.json`` (with
``num_entries``, ``uuid`` and ``steps``, one step per basket unless
``--step-size`` says otherwise).

Command line::

    python datasets/generate.py --out /tmp/syn --files 8 --events-per-file 2000000 \\
        --chunk 200000 --codec zstd --level 5 --seed 1
    python datasets/generate.py --out /tmp/wide --files 4 --events-per-file 500000 \\
        --chunk 100000 --pad-hlt 1000 --pad-float 100

From Python (``datasets`` is not a package; load the file by path, e.g. with
``importlib.util.spec_from_file_location``)::

    fileset_json = generate("/tmp/syn", files=2, events_per_file=100_000)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import sys
import time
import uuid as uuidlib
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = [
    "DEFAULT_SEED_FILES",
    "Seed",
    "load_seed",
    "make_chunk",
    "write_file",
    "clone_with_new_uuid",
    "read_uuid",
    "write_filesets",
    "dump_json",
    "generate",
    "main",
]

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # this folder is not a package: its scripts import each other by name
    sys.path.insert(0, str(HERE))
from nanoaod_synth import COLLECTIONS, DEFAULT_SEED_FILES, Seed, load_seed, make_chunk  # noqa: E402

CODECS = {"zstd": 5, "zlib": 4, "lz4": 4, "lzma": 9, "none": 0}


# --------------------------------------------------------------------------- files


def _compression(codec: str, level: int | None):
    import uproot

    codec = codec.lower()
    if codec not in CODECS:
        raise ValueError(f"unknown codec {codec!r}; choose one of {sorted(CODECS)}")
    if codec == "none":
        return None
    level = CODECS[codec] if level is None else int(level)
    return {"zstd": uproot.ZSTD, "zlib": uproot.ZLIB, "lz4": uproot.LZ4, "lzma": uproot.LZMA}[codec](level)


def _describe_codec(codec: str, level: int | None) -> str:
    codec = codec.lower()
    return "none" if codec == "none" else f"{codec.upper()}({CODECS[codec] if level is None else level})"


_SEED_CACHE: dict[tuple[str, ...], Seed] = {}


def _cached_seed(paths: Sequence[str] | None) -> Seed:
    key = tuple(os.fspath(p) for p in (paths or DEFAULT_SEED_FILES))
    if key not in _SEED_CACHE:
        _SEED_CACHE[key] = load_seed(key)
    return _SEED_CACHE[key]


def write_file(
    path: str | os.PathLike,
    events: int,
    *,
    chunk: int = 100_000,
    codec: str = "zstd",
    level: int | None = None,
    pad_hlt: int = 0,
    pad_float: int = 0,
    signal_fraction: float = 0.3,
    seed: int = 1,
    file_index: int = 0,
    first_event: int = 0,
    seed_files: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Write one synthetic file; returns ``{"path", "num_entries", "uuid", "branches", "seconds"}``."""
    import uproot

    if events < 1:
        raise ValueError("a generated file needs at least one event")
    if chunk < 1:
        raise ValueError("chunk must be positive")
    start = time.perf_counter()
    pool = _cached_seed(seed_files)
    rng = np.random.default_rng([int(seed), int(file_index)])
    nchunks = math.ceil(events / chunk)
    path = os.fspath(path)
    kwargs = dict(first_event=first_event, signal_fraction=signal_fraction, pad_hlt=pad_hlt, pad_float=pad_float)
    with uproot.recreate(path, compression=_compression(codec, level), uuid_function=uuidlib.uuid4) as f:
        tree = None
        done = 0
        while done < events:
            n = min(chunk, events - done)
            kwargs["first_event"] = first_event + done
            data = make_chunk(pool, rng, n, **kwargs)
            if tree is None:
                tree = f.mktree("Events", data, initial_basket_capacity=nchunks + 10)
                nbranches = sum(1 + len(v.fields) if k in COLLECTIONS else 1 for k, v in data.items())
            else:
                tree.extend(data)
            done += n
    uid = read_uuid(path)
    return {"path": path, "num_entries": events, "uuid": uid, "branches": nbranches,
            "seconds": time.perf_counter() - start}


def _uuid_offset(header: bytes) -> int:
    if header[:4] != b"root":
        raise ValueError("not a ROOT file")
    version = int.from_bytes(header[4:8], "big")
    # small files: magic, 7 int32, fUnits (1 byte), 3 int32, then the UUID version (2 bytes)
    # large files (fVersion >= 1000000): fEND, fSeekFree and fSeekInfo are 8 bytes instead of 4
    return 59 if version >= 1_000_000 else 47


def read_uuid(path: str | os.PathLike) -> str:
    """The file UUID from the ROOT header, as uproot reports it (``str(file.uuid)``)."""
    with open(path, "rb") as f:
        header = f.read(80)
    at = _uuid_offset(header)
    return str(uuidlib.UUID(bytes=header[at:at + 16]))


def _copy(src: str, dst: str) -> None:
    """Reflink where the file system supports it, else an ordinary copy."""
    try:
        import fcntl

        with open(src, "rb") as fi, open(dst, "wb") as fo:
            fcntl.ioctl(fo.fileno(), 0x40049409, fi.fileno())  # FICLONE
        return
    except (OSError, ImportError, AttributeError):
        pass
    shutil.copyfile(src, dst)


def clone_with_new_uuid(src: str | os.PathLike, dst: str | os.PathLike, new_uuid: uuidlib.UUID | None = None) -> str:
    """Copy ``src`` to ``dst`` and write a new UUID into the copy's file header."""
    src, dst = os.fspath(src), os.fspath(dst)
    new_uuid = new_uuid or uuidlib.uuid4()
    _copy(src, dst)
    with open(dst, "r+b") as f:
        at = _uuid_offset(f.read(80))
        f.seek(at)
        f.write(new_uuid.bytes)
    got = read_uuid(dst)
    if got != str(new_uuid):  # pragma: no cover - would mean the header layout is not what we think
        raise RuntimeError(f"patching the UUID of {dst} failed")
    return got


# --------------------------------------------------------------------------- filesets


def dump_json(obj: Any) -> str:
    """JSON with two-space indents, but each ``steps`` list on one line."""
    text = json.dumps(obj, indent=2)
    text = re.sub(r"\[\s+(\d+),\s+(\d+)\s+\]", r"[\1, \2]", text)
    return re.sub(r"\[\s+(\[\d+, \d+\](?:,\s+\[\d+, \d+\])*)\s+\]",
                  lambda m: "[" + re.sub(r",\s+", ", ", m.group(1)) + "]", text) + "\n"


def _steps(n: int, step_size: int) -> list[list[int]]:
    return [[a, min(a + step_size, n)] for a in range(0, n, step_size)] or [[0, 0]]


def write_filesets(
    out_dir: str | os.PathLike,
    files: Sequence[Mapping[str, Any]],
    *,
    dataset: str,
    metadata: Mapping[str, Any],
    step_size: int,
    preprocessed: bool = True,
) -> Path:
    out = Path(out_dir)
    raw = {dataset: {"files": {os.path.basename(f["path"]): "Events" for f in files}, "metadata": dict(metadata)}}
    raw_path = out / "fileset.json"
    raw_path.write_text(dump_json(raw))
    if preprocessed:
        pre = {dataset: {"files": {
            os.path.basename(f["path"]): {"object_path": "Events", "steps": _steps(f["num_entries"], step_size),
                                          "num_entries": f["num_entries"], "uuid": f["uuid"]}
            for f in files}, "metadata": dict(metadata)}}
        (out / "fileset_preprocessed.json").write_text(dump_json(pre))
    return raw_path


def _write_file_job(kwargs: dict[str, Any]) -> dict[str, Any]:
    return write_file(**kwargs)


def generate(
    out_dir: str | os.PathLike,
    *,
    files: int = 1,
    events_per_file: int = 100_000,
    chunk: int = 100_000,
    codec: str = "zstd",
    level: int | None = None,
    pad_hlt: int = 0,
    pad_float: int = 0,
    signal_fraction: float = 0.3,
    seed: int = 1,
    unique: int | None = 4,
    jobs: int = 1,
    dataset: str = "Synthetic",
    prefix: str = "synthetic",
    step_size: int | None = None,
    preprocessed: bool = True,
    seed_files: Sequence[str] | None = None,
    log=None,
) -> Path:
    """Generate ``files`` synthetic NanoAOD files in ``out_dir``; returns the path of ``fileset.json``.

    ``unique`` files are generated (``None`` or 0: all of them); the rest are
    UUID-patched clones of those. ``jobs`` > 1 generates the unique files in
    that many processes. ``step_size`` (default: ``chunk``) sets the steps of
    ``fileset_preprocessed.json``. ``log`` is a callable taking a string.
    """
    if files < 1 or events_per_file < 1:
        raise ValueError("need at least one file of at least one event")
    if not 0.0 <= signal_fraction <= 1.0:
        raise ValueError("signal_fraction must be within [0, 1]")
    _compression(codec, level)  # validate early
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    nunique = files if not unique or unique >= files else int(unique)
    width = max(4, len(str(files - 1)))
    paths = [str(out / f"{prefix}_{i:0{width}d}.root") for i in range(files)]
    say = log or (lambda msg: None)
    seed_files = [os.fspath(p) for p in seed_files] if seed_files else None
    _cached_seed(seed_files)  # load (and check) the seed once, before forking
    jobs_kwargs = [dict(path=paths[i], events=events_per_file, chunk=chunk, codec=codec, level=level,
                        pad_hlt=pad_hlt, pad_float=pad_float, signal_fraction=signal_fraction, seed=seed,
                        file_index=i, first_event=i * events_per_file, seed_files=seed_files)
                   for i in range(nunique)]
    start = time.perf_counter()
    results: list[dict[str, Any]] = []
    if jobs > 1 and nunique > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
        with ProcessPoolExecutor(max_workers=min(jobs, nunique), mp_context=ctx) as pool:
            for r in pool.map(_write_file_job, jobs_kwargs):
                results.append(r)
                say(f"wrote {r['path']}: {r['num_entries']} events, {r['branches']} branches, "
                    f"{r['num_entries'] / r['seconds']:,.0f} events/s")
    else:
        for kw in jobs_kwargs:
            r = write_file(**kw)
            results.append(r)
            say(f"wrote {r['path']}: {r['num_entries']} events, {r['branches']} branches, "
                f"{r['num_entries'] / r['seconds']:,.0f} events/s")
    for i in range(nunique, files):
        src = results[i % nunique]
        uid = clone_with_new_uuid(src["path"], paths[i])
        results.append({**src, "path": paths[i], "uuid": uid, "clone_of": os.path.basename(src["path"])})
    if nunique < files:
        say(f"cloned {files - nunique} files with new UUIDs")
    elapsed = time.perf_counter() - start
    uuids = [read_uuid(r["path"]) for r in results]
    if len(set(uuids)) != len(uuids):  # pragma: no cover
        raise RuntimeError("two generated files share a UUID")
    metadata = {
        "is_mc": False,
        "synthetic": True,
        "generator": "datasets/generate.py",
        "seed": int(seed),
        "codec": _describe_codec(codec, level),
        "signal_fraction": float(signal_fraction),
        "events_per_file": int(events_per_file),
        "unique_files": nunique,
        "pad_hlt": int(pad_hlt),
        "pad_float": int(pad_float),
    }
    raw = write_filesets(out, results, dataset=dataset, metadata=metadata, step_size=step_size or chunk,
                         preprocessed=preprocessed)
    total = files * events_per_file
    made = nunique * events_per_file
    say(f"{total:,} events in {files} files ({made:,} generated) in {elapsed:.1f} s: "
        f"{made / elapsed:,.0f} generated events/s; fileset {raw}")
    return raw


# --------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="generate.py",
        description="Write synthetic NanoAOD-like TTrees seeded from the real samples, plus fileset JSONs.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--out", required=True, help="output folder (created if needed)")
    p.add_argument("--files", type=int, default=1, help="number of files")
    p.add_argument("--events-per-file", type=int, default=100_000, help="events in each file")
    p.add_argument("--chunk", type=int, default=100_000, help="events per extend call, i.e. per basket")
    p.add_argument("--codec", default="zstd", choices=sorted(CODECS), help="compression algorithm")
    p.add_argument("--level", type=int, default=None,
                   help="compression level (default: zstd 5, zlib 4, lz4 4, lzma 9)")
    p.add_argument("--pad-hlt", type=int, default=0, help="extra HLT_Pad* bool branches, about 1%% true")
    p.add_argument("--pad-float", type=int, default=0, help="extra Pad_f* float32 branches")
    p.add_argument("--signal-fraction", type=float, default=0.3, help="fraction of events given a Z->mumu pair")
    p.add_argument("--seed", type=int, default=1, help="random seed")
    p.add_argument("--unique", type=int, default=4,
                   help="generate this many files, make the rest UUID-patched clones (0: generate all)")
    p.add_argument("--jobs", type=int, default=1, help="processes generating files in parallel")
    p.add_argument("--dataset", default="Synthetic", help="dataset name in the fileset JSON")
    p.add_argument("--prefix", default="synthetic", help="file name prefix")
    p.add_argument("--step-size", type=int, default=None, help="steps in fileset_preprocessed.json (default: --chunk)")
    p.add_argument("--no-preprocessed", action="store_true", help="do not write fileset_preprocessed.json")
    p.add_argument("--seed-file", action="append", default=None,
                   help="real NanoAOD file to seed from (repeatable; default: the shipped samples)")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the fileset path")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    log = None if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    try:
        path = generate(
            args.out, files=args.files, events_per_file=args.events_per_file, chunk=args.chunk,
            codec=args.codec, level=args.level, pad_hlt=args.pad_hlt, pad_float=args.pad_float,
            signal_fraction=args.signal_fraction, seed=args.seed, unique=args.unique, jobs=args.jobs,
            dataset=args.dataset, prefix=args.prefix, step_size=args.step_size,
            preprocessed=not args.no_preprocessed, seed_files=args.seed_file, log=log,
        )
    except (ValueError, OSError) as exc:
        print(f"generate.py: error: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
