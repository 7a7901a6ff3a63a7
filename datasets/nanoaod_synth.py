"""The events of the synthetic NanoAOD (``generate.py`` writes them to files).

Seeded from the four real NanoAOD samples in ``datasets/samples``; a chunk of
N events has the branch names, types and multiplicities of real NanoAOD:

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

Width (padding branches), files, clones and filesets are ``generate.py``'s.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

__all__ = ["DEFAULT_SEED_FILES", "COLLECTIONS", "SCALARS", "Seed", "load_seed", "make_chunk"]

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
