"""analyses/*.py through coffea's own Runner, checked against hand computations with uproot + awkward."""

import importlib.util
import inspect
import json
import sys
import warnings

import awkward as ak
import hist
import numpy as np
import pytest
import uproot
from coffea import processor
from coffea.nanoevents import NanoAODSchema, NanoEventsFactory

from tests._helpers import generate
from tests.conftest import ANALYSES, DATASETS

pytestmark = pytest.mark.slow

ANALYSIS_FILES = {"dimuon": "DimuonProcessor", "jets": "JetQueriesProcessor", "electrons": "ZeeProcessor"}
HISTS = {
    "dimuon": ["mass", "mass_log", "met_q5"],
    "jets": ["q2_jet_pt", "q3_jet_pt_central", "q4_met"],
    "electrons": ["mass", "lead_pt", "lead_eta"],
}


def load_module(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def processor_class(name):
    return getattr(load_module(ANALYSES / f"{name}.py", f"ddr_test_analysis_{name}"), ANALYSIS_FILES[name])


def absolute_fileset(path):
    data = json.loads(path.read_text())
    return {ds: {**spec, "files": {str((path.parent / p).resolve()): t for p, t in spec["files"].items()}}
            for ds, spec in data.items()}


def run(proc, fileset, chunksize=100_000):
    runner = processor.Runner(executor=processor.IterativeExecutor(), schema=NanoAODSchema, chunksize=chunksize)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return runner(fileset, proc, treename="Events")


@pytest.fixture(scope="module")
def samples():
    return absolute_fileset(DATASETS / "samples.json")


@pytest.fixture(scope="module")
def results(samples):
    return {name: run(processor_class(name)(), samples) for name in ANALYSIS_FILES}


def arrays(fileset, dataset, branches):
    (path, tree), = fileset[dataset]["files"].items()
    with uproot.open(path) as f:
        return f[tree].arrays(branches)


def pair_mass(a, b):
    """Invariant mass of two pt/eta/phi/mass records, in float64, without coffea."""
    def p4(x):
        pt, eta, phi, m = (np.asarray(getattr(x, k), dtype=np.float64) for k in ("pt", "eta", "phi", "mass"))
        px, py, pz = pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta)
        return np.sqrt(px**2 + py**2 + pz**2 + m**2), px, py, pz
    e1, x1, y1, z1 = p4(a)
    e2, x2, y2, z2 = p4(b)
    return np.sqrt(np.maximum((e1 + e2) ** 2 - (x1 + x2) ** 2 - (y1 + y2) ** 2 - (z1 + z2) ** 2, 0.0))


def values(h, dataset):
    return h[{"dataset": dataset}].values(flow=True)


@pytest.mark.parametrize("name", sorted(ANALYSIS_FILES))
def test_analysis_file_defines_one_processor_buildable_without_arguments(name):
    module = load_module(ANALYSES / f"{name}.py", f"ddr_test_shape_{name}")
    doc = module.__doc__ or ""
    assert f"ddr run analyses/{name}.py --datasets datasets/samples.json" in doc
    classes = [o for o in vars(module).values() if inspect.isclass(o) and issubclass(o, processor.ProcessorABC)
               and o is not processor.ProcessorABC]
    assert len(classes) == 1
    # nothing else a loader could mistake for an analysis: no public function taking `events`
    for attr, obj in vars(module).items():
        if inspect.isfunction(obj) and obj.__module__ == module.__name__ and not attr.startswith("_"):
            assert list(inspect.signature(obj).parameters)[:1] != ["events"], attr
    proc = classes[0]()
    acc = {"x": 1}
    assert proc.postprocess(acc) is acc


@pytest.mark.parametrize("name", sorted(ANALYSIS_FILES))
def test_outputs_are_well_formed(results, samples, name):
    out = results[name]
    assert set(out) == set(HISTS[name]) | {"cutflow"}
    for key in HISTS[name]:
        h = out[key]
        assert isinstance(h, hist.Hist)
        assert h.axes[0].name == "dataset" and h.axes[0].traits.growth
        assert set(h.axes["dataset"]) == set(samples)  # present even when empty
        for axis in h.axes[1:]:
            assert axis.name and axis.label and axis.label != axis.name
        v = h.values(flow=True)
        assert np.array_equal(v, np.round(v))  # integer counts only
    for ds in samples:
        assert out["cutflow"][f"{ds}/all"] == sum(
            uproot.open(p)[t].num_entries for p, t in samples[ds]["files"].items())
    assert all(isinstance(v, int) for v in out["cutflow"].values())


def test_dimuon_matches_hand_computation(results, samples):
    out = results["dimuon"]
    met_axis = out["met_q5"].axes["met"]
    for ds in samples:
        a = arrays(samples, ds, ["Muon_pt", "Muon_eta", "Muon_phi", "Muon_mass", "Muon_charge", "MET_pt"])
        muons = ak.zip({k: a[f"Muon_{k}"] for k in ("pt", "eta", "phi", "mass", "charge")})
        i, j = ak.unzip(ak.argcombinations(muons, 2))
        first, second = muons[i], muons[j]
        opposite = first.charge != second.charge
        mass = ak.unflatten(pair_mass(ak.flatten(first), ak.flatten(second)), ak.num(first))[opposite]
        q5 = ak.to_numpy(ak.any((mass > 60) & (mass < 120), axis=1))
        assert out["cutflow"][f"{ds}/two_muons"] == int(np.sum(ak.num(muons) >= 2))
        assert out["cutflow"][f"{ds}/os_pair"] == int(np.sum(ak.num(mass) > 0))
        assert out["cutflow"][f"{ds}/q5"] == int(q5.sum())
        assert values(out["mass"], ds).sum() == values(out["mass_log"], ds).sum() == int(ak.sum(ak.num(mass)))
        expected = hist.Hist(met_axis, storage=hist.storage.Int64()).fill(a["MET_pt"][q5]).values(flow=True)
        np.testing.assert_array_equal(values(out["met_q5"], ds), expected)
    assert out["cutflow"]["DoubleMuon2018/q5"] > 0 and out["cutflow"]["DYJetsToLL/q5"] > 0


def test_jets_match_hand_computation(results, samples):
    out = results["jets"]
    for ds in samples:
        a = arrays(samples, ds, ["Jet_pt", "Jet_eta", "MET_pt"])
        q4 = ak.to_numpy(ak.sum(a.Jet_pt > 40, axis=1) >= 2)
        assert values(out["q2_jet_pt"], ds).sum() == out["cutflow"][f"{ds}/jets"] == int(ak.sum(ak.num(a.Jet_pt)))
        assert values(out["q3_jet_pt_central"], ds).sum() == int(ak.sum(abs(a.Jet_eta) < 1))
        assert values(out["q4_met"], ds).sum() == out["cutflow"][f"{ds}/two_jets_40"] == int(q4.sum())
        expected = hist.Hist(out["q4_met"].axes["met"], storage=hist.storage.Int64()).fill(a.MET_pt[q4])
        np.testing.assert_array_equal(values(out["q4_met"], ds), expected.values(flow=True))
    assert out["cutflow"]["TTbar/two_jets_40"] > 150  # ttbar is jet-rich


def test_electrons_match_hand_computation(results, samples):
    out = results["electrons"]
    for ds in samples:
        a = arrays(samples, ds, ["Electron_pt", "Electron_eta", "Electron_phi", "Electron_mass", "Electron_charge",
                                 "Electron_cutBased"])
        e = ak.zip({k: a[f"Electron_{k}"] for k in ("pt", "eta", "phi", "mass", "charge", "cutBased")})
        e = e[(e.cutBased >= 3) & (e.pt > 20) & (abs(e.eta) < 2.5)]
        e = e[ak.num(e) >= 2]
        e = e[ak.argsort(e.pt, ascending=False)]
        lead, sub = e[:, 0], e[:, 1]
        os_ = ak.to_numpy(lead.charge != sub.charge)
        mass = pair_mass(lead[os_], sub[os_])
        assert out["cutflow"][f"{ds}/opposite_sign"] == int(os_.sum()) == values(out["mass"], ds).sum()
        assert out["cutflow"][f"{ds}/z_window"] == int(np.sum((mass > 70) & (mass < 110)))
    # the EGamma sample is a Z -> ee skim: a real peak at the Z mass
    h = out["mass"][{"dataset": "EGamma2023"}]
    assert out["cutflow"]["EGamma2023/opposite_sign"] > 800
    peak = h.axes[0].centers[np.argmax(h.values())]
    assert 85 < peak < 97


def test_virtual_mode_gives_the_runner_result(results, samples):
    proc = processor_class("dimuon")()
    for ds in ("DoubleMuon2018", "TTbar"):
        (path, tree), = samples[ds]["files"].items()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            events = NanoEventsFactory.from_root({path: tree}, schemaclass=NanoAODSchema, mode="virtual",
                                                 metadata={"dataset": ds}).events()
        out = proc.process(events)
        for key in HISTS["dimuon"]:
            np.testing.assert_array_equal(values(out[key], ds), values(results["dimuon"][key], ds))
        assert out["cutflow"] == {k: v for k, v in results["dimuon"]["cutflow"].items() if k.startswith(ds + "/")}


@pytest.mark.parametrize("name", sorted(ANALYSIS_FILES))
def test_small_chunks_give_the_same_result(results, samples, name):
    subset = {ds: samples[ds] for ds in ("DoubleMuon2018", "DYJetsToLL", "TTbar")}
    out = run(processor_class(name)(), subset, chunksize=17)
    for key in HISTS[name]:
        for ds in subset:
            np.testing.assert_array_equal(values(out[key], ds), values(results[name][key], ds))
    assert out["cutflow"] == {k: v for k, v in results[name]["cutflow"].items() if k.split("/")[0] in subset}


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    path = generate(tmp_path_factory.mktemp("syn"), files=2, unique=1, events_per_file=4000, chunk=1500,
                        pad_hlt=5, seed=11)
    return absolute_fileset(path)


@pytest.mark.parametrize("name", sorted(ANALYSIS_FILES))
def test_runs_on_synthetic_files(synthetic, name):
    out = run(processor_class(name)(), synthetic, chunksize=1500)
    cut = out["cutflow"]
    assert cut["Synthetic/all"] == 8000
    if name == "dimuon":
        assert cut["Synthetic/q5"] > 0.25 * 8000  # the injected Z -> mumu signal (30%)
    elif name == "jets":
        assert cut["Synthetic/jets"] > 8000
    else:
        assert cut["Synthetic/z_window"] > 0.5 * 8000  # DYto2E dominates the seed pool
