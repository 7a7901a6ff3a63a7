"""datasets/generate.py: small synthetic filesets, checked by reading them back."""

import json
import subprocess
import sys
import warnings

import awkward as ak
import numpy as np
import pytest
import uproot
from coffea.nanoevents import NanoAODSchema, NanoEventsFactory

from tests._helpers import generator
from tests.conftest import DATASETS

EVENTS, PAD_HLT, PAD_FLOAT = 5000, 20, 5
BASE_BRANCHES = 39  # run/lumi/event, 11 muon, 9 electron, 11 jet, 3 MET, PV_npvs, HLT_IsoMu24


@pytest.fixture(scope="module")
def gen():
    return generator()


@pytest.fixture(scope="module")
def fileset(gen, tmp_path_factory):
    out = tmp_path_factory.mktemp("syn")
    # two generated files and one UUID-patched clone
    path = gen.generate(out, files=3, unique=2, events_per_file=EVENTS, chunk=2000, pad_hlt=PAD_HLT,
                        pad_float=PAD_FLOAT, seed=7)
    return path


def events_of(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return NanoEventsFactory.from_root({str(path): "Events"}, schemaclass=NanoAODSchema, mode="virtual").events()


def files_of(fileset):
    data = json.loads(fileset.read_text())
    (name, spec), = data.items()
    return name, spec, [fileset.parent / p for p in spec["files"]]


def test_raw_fileset_json(fileset):
    name, spec, paths = files_of(fileset)
    assert name == "Synthetic" and len(paths) == 3
    assert all(spec["files"][p.name] == "Events" and p.exists() for p in paths)
    assert spec["metadata"]["synthetic"] is True and spec["metadata"]["unique_files"] == 2


def test_entries_branches_and_distinct_uuids(fileset):
    _, _, paths = files_of(fileset)
    pre = json.loads((fileset.parent / "fileset_preprocessed.json").read_text())["Synthetic"]["files"]
    uuids = set()
    for p in paths:
        with uproot.open(p) as f:
            t = f["Events"]
            assert t.num_entries == EVENTS
            assert len(t.keys()) == BASE_BRANCHES + PAD_HLT + PAD_FLOAT
            uuid = str(f.file.uuid)
        entry = pre[p.name]
        assert entry["uuid"] == uuid and entry["num_entries"] == EVENTS and entry["object_path"] == "Events"
        assert entry["steps"] == [[0, 2000], [2000, 4000], [4000, 5000]]
        uuids.add(uuid)
    assert len(uuids) == 3


def test_clone_differs_from_its_original_only_in_the_uuid(gen, fileset):
    _, _, paths = files_of(fileset)
    original, clone = paths[0].read_bytes(), paths[2].read_bytes()
    at = gen._uuid_offset(original[:80])
    assert at == 47
    assert len(original) == len(clone) and original[:at] == clone[:at] and original[at + 16:] == clone[at + 16:]
    assert original[at:at + 16] != clone[at:at + 16]


def test_opens_with_nanoaod_schema(fileset):
    _, _, paths = files_of(fileset)
    events = events_of(paths[1])
    assert len(events) == EVENTS
    expected = {"Muon", "Electron", "Jet", "MET", "PV", "HLT", "Pad", "run", "luminosityBlock", "event"}
    assert expected <= set(events.fields)
    assert len(events.HLT.fields) == PAD_HLT + 1 and len(events.Pad.fields) == PAD_FLOAT
    assert ak.all(events.event == np.arange(EVENTS + 1, 2 * EVENTS + 1))  # numbering continues across files
    assert ak.all(events.run == 1) and ak.max(events.luminosityBlock) == 10
    phi = ak.flatten(events.Jet.phi)
    assert ak.all((phi >= -np.pi) & (phi <= np.pi))
    # cross-references are real: a jet's muon index points at a muon of the same event
    idx = events.Jet.muonIdx1
    assert ak.all(ak.flatten((idx < ak.num(events.Muon)[:, None]) & (idx >= -1)))
    flags = np.stack([np.asarray(events.HLT[f"Pad{i:04d}"]) for i in range(PAD_HLT)])
    assert 0.003 < flags.mean() < 0.02


def test_z_peak_in_dimuon_mass(fileset):
    _, _, paths = files_of(fileset)
    muons = events_of(paths[0]).Muon
    pairs = ak.combinations(muons, 2, fields=["a", "b"])
    pairs = pairs[pairs.a.charge != pairs.b.charge]
    mass = ak.flatten((pairs.a + pairs.b).mass).to_numpy()
    assert len(mass) > 0.25 * EVENTS
    assert 89.0 < np.median(mass) < 93.0
    assert np.mean((mass > 80) & (mass < 100)) > 0.6


def test_same_seed_same_events_new_uuids(gen, tmp_path):
    one = gen.generate(tmp_path / "a", files=1, events_per_file=1000, chunk=400, seed=3)
    two = gen.generate(tmp_path / "b", files=1, events_per_file=1000, chunk=400, seed=3)
    with uproot.open(one.parent / "synthetic_0000.root") as fa, uproot.open(two.parent / "synthetic_0000.root") as fb:
        assert fa.file.uuid != fb.file.uuid
        for branch in ("Muon_pt", "Electron_eta", "Jet_phi", "MET_pt", "event"):
            assert ak.all(fa["Events"][branch].array() == fb["Events"][branch].array())


@pytest.mark.parametrize("codec,tag", [("lz4", b"L4"), ("zlib", b"ZL"), ("zstd", b"ZS"), ("none", None)])
def test_codecs(gen, tmp_path, codec, tag):
    path = gen.generate(tmp_path, files=1, events_per_file=3000, chunk=3000, codec=codec, level=1, preprocessed=False)
    assert not (tmp_path / "fileset_preprocessed.json").exists()
    file = path.parent / "synthetic_0000.root"
    raw = file.read_bytes()
    with uproot.open(file) as f:
        branch = f["Events"]["run"]  # constant, so every codec shrinks it
        seek = int(branch.member("fBasketSeek")[0])
        assert len(branch.array()) == 3000
    # the basket's key, then the compressed block's two-letter algorithm tag
    nbytes, objlen = int.from_bytes(raw[seek:seek + 4], "big"), int.from_bytes(raw[seek + 6:seek + 10], "big")
    keylen = int.from_bytes(raw[seek + 14:seek + 16], "big")
    if tag is None:
        assert nbytes - keylen == objlen  # stored as is
    else:
        assert raw[seek + keylen:seek + keylen + 2] == tag


def test_no_signal_means_no_injected_pairs(gen):
    rng = np.random.default_rng(1)
    seed = gen.load_seed()
    chunk = gen.make_chunk(seed, rng, 2000, signal_fraction=0.0)
    # without injection every muon comes from a seed event, so the multiplicity stays low
    assert ak.mean(ak.num(chunk["Muon"])) < 1.0
    chunk = gen.make_chunk(seed, rng, 2000, signal_fraction=1.0)
    assert ak.all(ak.num(chunk["Muon"]) == 2) and ak.all(ak.sum(chunk["Muon"].charge, axis=1) == 0)


def test_cli(tmp_path):
    cmd = [sys.executable, str(DATASETS / "generate.py"), "--out", str(tmp_path), "--files", "2", "--unique", "1",
           "--events-per-file", "300", "--chunk", "100", "--pad-hlt", "3", "--codec", "lz4", "--dataset", "Syn", "-q"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    path = proc.stdout.strip()
    assert path.endswith("fileset.json")
    data = json.loads(open(path).read())
    assert list(data) == ["Syn"] and len(data["Syn"]["files"]) == 2
    bad = subprocess.run([sys.executable, str(DATASETS / "generate.py"), "--out", str(tmp_path), "--codec", "gzip"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "codec" in bad.stderr
