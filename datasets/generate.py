#!/usr/bin/env python
"""Synthetic NanoAOD-like files for benchmarks, seeded from the real samples.

The four real NanoAOD samples in ``datasets/samples`` (2018 DoubleMuon data,
DY and ttbar MC, 2023 EGamma data) hold only 1280 events between them: too
few to measure throughput. This script turns them into as many events as you
like, with the same branch names, types and multiplicities as real NanoAOD:

1. **Seed.** Read a fixed set of branches (muons, electrons, jets, MET,
   PV_npvs, HLT_IsoMu24 and the Muon/Electron/Jet cross-reference indices)
   from the seed files and pool their events.
2. **Bootstrap.** Each chunk of N events is ``pool[rng.integers(0, n_pool, N)]``:
   whole events are copied, so multiplicities and the correlations between
   collections are those of real events.
3. **Make events distinct.** Every object in an event, and MET, is rotated by
   one random angle in phi (invariant masses are unchanged); every pt (and
   MET) is multiplied by a lognormal factor with sigma 0.05. The smear is per
   object, so the pt ordering inside an event is only approximately kept.
4. **Z -> mumu signal.** In a fraction of the events (default 0.3) the muons
   are replaced by an opposite-sign pair whose mass follows a Breit-Wigner
   (91.19 GeV, width 2.50 GeV, truncated to 40-200 GeV): leading pt is
   20 GeV + Exp(25 GeV), both |eta| < 2.4 and phi uniform, and the second pt
   solves m^2 = 2 pt1 pt2 (cosh d_eta - cos d_phi); pairs whose second pt falls
   outside 10-500 GeV are drawn again. Jets' muon indices are cleared in these
   events. This gives the dimuon mass spectrum and ADL Q5 a real Z peak.
5. **Event IDs.** ``run`` (uint32, 1), ``luminosityBlock`` (uint32, one per
   1000 events) and ``event`` (uint64, counting on across the generated files).
   NanoAODSchema refuses files without them.
6. **Width.** ``--pad-hlt N`` adds N ``HLT_Pad*`` booleans (about 1% true:
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

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
DEFAULT_SEED_FILES = tuple(
    str(HERE / "samples" / name)
    for name in ("nano_dimuon.root", "nano_dy.root", "DYto2E.root", "nano_tt_v12.root")
)

F4, I4, I2, U1, B1 = np.float32, np.int32, np.int16, np.uint8, np.bool_

# Collection -> field -> dtype; the dtypes are those of NanoAODv12.
COLLECTIONS: dict[str, dict[str, Any]] = {
    "Muon": {
        "pt": F4, "eta": F4, "phi": F4, "mass": F4, "charge": I4, "pfRelIso04_all": F4,
        "tightId": B1, "dxy": F4, "dz": F4, "jetIdx": I2,
    },
    "Electron": {
        "pt": F4, "eta": F4, "phi": F4, "mass": F4, "charge": I4, "cutBased": U1,
        "pfRelIso03_all": F4, "jetIdx": I2,
    },
    "Jet": {
        "pt": F4, "eta": F4, "phi": F4, "mass": F4, "btagDeepFlavB": F4, "jetId": U1,
        "muonIdx1": I2, "muonIdx2": I2, "electronIdx1": I2, "electronIdx2": I2,
    },
}
SCALARS: dict[str, Any] = {"MET_pt": F4, "MET_phi": F4, "MET_sumEt": F4, "PV_npvs": U1, "HLT_IsoMu24": B1}
# A branch missing from a seed file (HLT_IsoMu24 is not in nano_tt_v12) is filled with this.
MISSING_DEFAULT = {"HLT_IsoMu24": False}

CODECS = {"zstd": 5, "zlib": 4, "lz4": 4, "lzma": 9, "none": 0}

Z_MASS, Z_WIDTH = 91.1876, 2.4952
MUON_MASS = 0.10566
PT_SMEAR = 0.05
LUMI_BLOCK_EVENTS = 1000


# --------------------------------------------------------------------------- seed


@dataclass
class Seed:
    """The pooled seed events, held as flat numpy arrays."""

    n: int
    scalars: dict[str, np.ndarray]
    counts: dict[str, np.ndarray]
    offsets: dict[str, np.ndarray]
    content: dict[str, dict[str, np.ndarray]]
    sources: list[str] = field(default_factory=list)


def load_seed(paths: Iterable[str | os.PathLike] | None = None, tree: str = "Events") -> Seed:
    """Read the seed branches from real NanoAOD files and pool their events.

    Files without entries are skipped; a branch missing from a file (only
    ``HLT_IsoMu24`` is allowed to be) is filled with its default.
    """
    import awkward as ak
    import uproot

    paths = [os.fspath(p) for p in (paths or DEFAULT_SEED_FILES)]
    scalars: dict[str, list[np.ndarray]] = {k: [] for k in SCALARS}
    counts: dict[str, list[np.ndarray]] = {c: [] for c in COLLECTIONS}
    content: dict[str, dict[str, list[np.ndarray]]] = {c: {f: [] for f in fs} for c, fs in COLLECTIONS.items()}
    used = []
    for path in paths:
        with uproot.open(path) as f:
            t = f[tree]
            if t.num_entries == 0:
                continue
            have = set(t.keys())
            wanted = [k for k in SCALARS if k in have]
            for c, fs in COLLECTIONS.items():
                wanted += [f"{c}_{x}" for x in fs]
            missing = [k for k in wanted if k not in have]
            missing += [k for k in SCALARS if k not in have and k not in MISSING_DEFAULT]
            if missing:
                raise ValueError(f"seed file {path} lacks the branches {missing}")
            arrays = t.arrays(wanted, library="ak")
            n = t.num_entries
            for k, dt in SCALARS.items():
                if k in have:
                    scalars[k].append(np.asarray(arrays[k]).astype(dt))
                else:
                    scalars[k].append(np.full(n, MISSING_DEFAULT[k], dtype=dt))
            for c, fs in COLLECTIONS.items():
                first = arrays[f"{c}_pt"]
                counts[c].append(np.asarray(ak.num(first, axis=1)).astype(np.int64))
                for x, dt in fs.items():
                    content[c][x].append(np.asarray(ak.flatten(arrays[f"{c}_{x}"])).astype(dt))
            used.append(path)
    if not used:
        raise ValueError(f"no seed events in {paths}")
    seed_counts = {c: np.concatenate(v) for c, v in counts.items()}
    return Seed(
        n=int(sum(len(v) for v in scalars["MET_pt"])),
        scalars={k: np.concatenate(v) for k, v in scalars.items()},
        counts=seed_counts,
        offsets={c: _offsets(v) for c, v in seed_counts.items()},
        content={c: {x: np.concatenate(v) for x, v in fs.items()} for c, fs in content.items()},
        sources=used,
    )


def _offsets(counts: np.ndarray) -> np.ndarray:
    out = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=out[1:])
    return out


def _gather(offsets: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flat positions of the objects of events ``idx`` -> (positions, new counts, new offsets)."""
    counts = (offsets[idx + 1] - offsets[idx]).astype(np.int64)
    new_off = _offsets(counts)
    total = int(new_off[-1])
    # position of the k-th object of output event i = offsets[idx[i]] + k
    shift = np.repeat(offsets[idx] - new_off[:-1], counts)
    return np.arange(total, dtype=np.int64) + shift, counts, new_off


def _wrap_phi(phi: np.ndarray) -> np.ndarray:
    return (np.mod(phi + np.pi, 2 * np.pi) - np.pi).astype(np.float32)


def _z_pairs(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """n opposite-sign muon pairs from a truncated Breit-Wigner; arrays of shape (n, 2)."""
    lo, hi = 40.0, 200.0
    cdf = lambda m: np.arctan((m - Z_MASS) / (Z_WIDTH / 2)) / np.pi + 0.5  # noqa: E731
    out = {k: np.empty(n) for k in ("m", "pt1", "eta1", "phi1", "pt2", "eta2", "phi2")}
    todo = np.arange(n)
    while len(todo):
        k = len(todo)
        u = rng.uniform(cdf(lo), cdf(hi), k)
        m = Z_MASS + Z_WIDTH / 2 * np.tan(np.pi * (u - 0.5))
        pt1 = 20.0 + rng.exponential(25.0, k)
        eta1, eta2 = rng.uniform(-2.4, 2.4, k), rng.uniform(-2.4, 2.4, k)
        phi1, phi2 = rng.uniform(-np.pi, np.pi, k), rng.uniform(-np.pi, np.pi, k)
        denom = 2 * pt1 * (np.cosh(eta1 - eta2) - np.cos(phi1 - phi2))
        with np.errstate(divide="ignore", invalid="ignore"):
            pt2 = m * m / denom
        ok = np.isfinite(pt2) & (pt2 >= 10.0) & (pt2 <= 500.0)
        for key, val in (("m", m), ("pt1", pt1), ("eta1", eta1), ("phi1", phi1),
                         ("pt2", pt2), ("eta2", eta2), ("phi2", phi2)):
            out[key][todo[ok]] = val[ok]
        todo = todo[~ok]
    lead = out["pt1"] >= out["pt2"]  # NanoAOD orders by pt
    pt = np.where(lead[:, None], np.stack([out["pt1"], out["pt2"]], 1), np.stack([out["pt2"], out["pt1"]], 1))
    eta = np.where(lead[:, None], np.stack([out["eta1"], out["eta2"]], 1), np.stack([out["eta2"], out["eta1"]], 1))
    phi = np.where(lead[:, None], np.stack([out["phi1"], out["phi2"]], 1), np.stack([out["phi2"], out["phi1"]], 1))
    q = rng.choice(np.array([-1, 1], dtype=np.int32), n)
    return {"pt": pt, "eta": eta, "phi": phi, "charge": np.stack([q, -q], 1), "m": out["m"]}


def make_chunk(
    seed: Seed,
    rng: np.random.Generator,
    n: int,
    *,
    first_event: int = 0,
    signal_fraction: float = 0.3,
    pad_hlt: int = 0,
    pad_float: int = 0,
    run: int = 1,
    pad_hlt_rate: float = 0.01,
) -> dict[str, Any]:
    """One chunk of ``n`` synthetic events as ``{branch or collection: array}`` for uproot.

    Collections are awkward arrays of records (uproot writes ``nMuon`` and
    ``Muon_pt`` ... from them); everything else is a flat numpy array.
    """
    import awkward as ak

    idx = rng.integers(0, seed.n, n)
    dphi = rng.uniform(-np.pi, np.pi, n)
    out: dict[str, Any] = {}
    event = np.arange(first_event + 1, first_event + n + 1, dtype=np.uint64)
    out["run"] = np.full(n, run, dtype=np.uint32)
    out["luminosityBlock"] = ((event - 1) // LUMI_BLOCK_EVENTS + 1).astype(np.uint32)
    out["event"] = event

    sig = rng.random(n) < signal_fraction if signal_fraction > 0 else np.zeros(n, dtype=bool)
    nsig = int(sig.sum())

    for c, fields in COLLECTIONS.items():
        pos, counts, off = _gather(seed.offsets[c], idx)
        ev = np.repeat(np.arange(n), counts)
        cols = {x: seed.content[c][x][pos] for x in fields}
        cols["phi"] = _wrap_phi(cols["phi"] + dphi[ev])
        cols["pt"] = (cols["pt"] * rng.lognormal(0.0, PT_SMEAR, len(pos))).astype(np.float32)
        if c == "Muon" and nsig:
            cols, counts, off = _inject_muons(rng, cols, counts, off, ev, sig, nsig)
        elif c == "Jet" and nsig:
            in_sig = sig[ev]
            for x in ("muonIdx1", "muonIdx2"):
                cols[x] = np.where(in_sig, np.int16(-1), cols[x])
        record = ak.contents.RecordArray([ak.contents.NumpyArray(cols[x]) for x in fields], list(fields))
        out[c] = ak.Array(ak.contents.ListOffsetArray(ak.index.Index64(off), record))

    for k, dt in SCALARS.items():
        out[k] = seed.scalars[k][idx]
    out["MET_phi"] = _wrap_phi(out["MET_phi"] + dphi)
    out["MET_pt"] = (out["MET_pt"] * rng.lognormal(0.0, PT_SMEAR, n)).astype(np.float32)
    if nsig:
        lead_pt = ak.fill_none(ak.max(out["Muon"].pt, axis=1), 0.0).to_numpy()
        out["HLT_IsoMu24"] = np.where(sig, lead_pt > 26.0, out["HLT_IsoMu24"])

    for i in range(pad_hlt):
        flags = np.zeros(n, dtype=np.bool_)
        flags[rng.integers(0, n, rng.binomial(n, pad_hlt_rate))] = True
        out[f"HLT_Pad{i:04d}"] = flags
    for i in range(pad_float):
        out[f"Pad_f{i:04d}"] = rng.standard_normal(n, dtype=np.float32)
    return out


def _inject_muons(rng, cols, counts, off, ev, sig, nsig):
    """Replace the muons of the events flagged in ``sig`` by a generated Z -> mumu pair."""
    pairs = _z_pairs(rng, nsig)
    n = len(counts)
    new_counts = np.where(sig, 2, counts)
    new_off = _offsets(new_counts)
    keep = ~sig[ev]
    old_pos = np.arange(len(ev), dtype=np.int64)
    dest_keep = new_off[ev[keep]] + (old_pos[keep] - off[ev[keep]])
    sig_events = np.nonzero(sig)[0]
    dest_sig = (new_off[sig_events][:, None] + np.arange(2)).ravel()
    generated = {
        "pt": pairs["pt"], "eta": pairs["eta"], "phi": pairs["phi"], "charge": pairs["charge"],
        "mass": np.full((nsig, 2), MUON_MASS),
        "pfRelIso04_all": rng.exponential(0.03, (nsig, 2)),
        "tightId": np.ones((nsig, 2), dtype=bool),
        "dxy": rng.normal(0.0, 0.002, (nsig, 2)),
        "dz": rng.normal(0.0, 0.005, (nsig, 2)),
        "jetIdx": np.full((nsig, 2), -1),
    }
    total = int(new_off[-1])
    new_cols = {}
    for x, arr in cols.items():
        dst = np.empty(total, dtype=arr.dtype)
        dst[dest_keep] = arr[keep]
        dst[dest_sig] = generated[x].ravel().astype(arr.dtype)
        new_cols[x] = dst
    assert len(new_counts) == n
    return new_cols, new_counts, new_off


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
