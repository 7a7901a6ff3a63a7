"""ddr against coffea's own Runner on the shipped real NanoAOD samples."""

import json
import subprocess
import sys

import numpy as np
import pytest
import uproot
from coffea import processor
from coffea.nanoevents import NanoEventsFactory, NanoAODSchema
from coffea.util import load

from ddr import CoffeaDynamicDataReduction, load_fileset
from ddr._analysis import load_analysis
from tests.conftest import ANALYSES, DATASETS

pytestmark = pytest.mark.slow


def coffea_reference(fileset_json, proc):
    datasets = load_fileset(fileset_json)
    fileset = {name: {"files": {f.path: f.tree for f in ds.files},
                      "metadata": {k: v for k, v in ds.metadata.items() if k != "dataset"}}
               for name, ds in datasets.items()}
    runner = processor.Runner(executor=processor.IterativeExecutor(), schema=NanoAODSchema, chunksize=300)
    return runner(fileset, proc)


def per_dataset(hist, dataset):
    """Bin contents of one dataset; an unfilled category counts as all zeros."""
    if dataset not in list(hist.axes["dataset"]):
        return np.zeros(hist.axes[1].extent)
    return hist[{"dataset": dataset}].values(flow=True)


def assert_same_hists(ours, ref, datasets):
    for key in ("mass", "met_q5"):
        for ds in datasets:
            mine = ours[ds][key]
            assert set(mine.axes["dataset"]) <= {ds}  # each dataset's result holds only itself
            np.testing.assert_array_equal(per_dataset(mine, ds), per_dataset(ref[key], ds), err_msg=f"{key} {ds}")


def test_cli_run_matches_coffea_runner(tmp_path):
    out, rep = tmp_path / "out.coffea", tmp_path / "r.json"
    fileset = DATASETS / "samples.json"
    cmd = [sys.executable, "-m", "ddr.cli", "run", str(ANALYSES / "dimuon.py"), "--datasets", str(fileset),
           "-o", str(out), "--report", str(rep), "--workers", "2", "--chunk-size", "150", "--quiet"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    ours = load(out)
    report = json.loads(rep.read_text())
    ref = coffea_reference(fileset, next(iter(load_analysis(ANALYSES / "dimuon.py").values())))
    datasets = sorted(load_fileset(fileset))
    assert sorted(ours) == datasets
    assert_same_hists(ours, ref, datasets)
    for ds in datasets:
        for step in ("all", "two_muons", "q5"):
            assert ours[ds]["cutflow"][f"{ds}/{step}"] == ref["cutflow"][f"{ds}/{step}"]
    # the entries of every file, read here with uproot: the report must account for each of them
    expected = {name: sum(uproot.open(f.path)[f.tree].num_entries for f in d.files)
                for name, d in load_fileset(fileset).items()}
    assert all(n > 0 for n in expected.values()), expected
    for ds, d in report["datasets"].items():
        n = ours[ds]["cutflow"][f"{ds}/all"]
        assert d["events_processed"] == d["events_expected"] == n == expected[ds], (ds, d, expected[ds])
        assert d["complete"] and d["chunks_failed"] == 0
    assert report["complete"] and report["events_processed"] == sum(expected.values())


def dimuon():
    return next(iter(load_analysis(ANALYSES / "dimuon.py").values()))


@pytest.mark.parametrize("chunk,accum", [(37, 2), (500, 3), (None, 8)])
def test_result_independent_of_chunking_and_completion_order(chunk, accum):
    fileset = DATASETS / "samples.json"
    base = CoffeaDynamicDataReduction(fileset, dimuon(), engine="sync", chunk_size=1000).compute()
    other = CoffeaDynamicDataReduction(fileset, dimuon(), engine="local", workers=2, chunk_size=chunk,
                                       initial_chunk_size=50, accumulation_size=accum).compute()
    for ds in base:
        for key in ("mass", "met_q5"):
            np.testing.assert_array_equal(base[ds][key].values(flow=True), other[ds][key].values(flow=True))
        assert base[ds]["cutflow"] == other[ds]["cutflow"]


def test_preprocessed_and_list_dialects_agree():
    raw = CoffeaDynamicDataReduction(DATASETS / "samples.json", dimuon(), engine="sync").compute()
    pre = CoffeaDynamicDataReduction(DATASETS / "samples_preprocessed.json", dimuon(), engine="sync")
    got = pre.compute()
    rep = pre.report
    assert rep["datasets"]["EGamma2023"]["chunks_done"] == 3  # the steps are honoured
    lst = CoffeaDynamicDataReduction(DATASETS / "samples_list.json", dimuon(), engine="sync").compute()
    for ds in got:
        np.testing.assert_array_equal(got[ds]["mass"].values(), raw[ds]["mass"].values())
    for ds in lst:
        np.testing.assert_array_equal(lst[ds]["mass"].values(), raw[ds]["mass"].values())


def test_chunk_size_with_coffea_steps_keeps_the_steps_and_says_so(tmp_path):
    """A fixed --chunk-size does not cut files whose entry has coffea steps: the run processes the steps,
    and says so before it starts, naming the datasets and the fix; a fileset without steps gets no note."""
    steps = {ds: len(f.steps) for ds, d in load_fileset(DATASETS / "samples_preprocessed.json").items()
             for f in d.files}
    for fileset, name in (("samples_preprocessed.json", "pre"), ("samples.json", "raw")):
        rep = tmp_path / f"{name}.json"
        cmd = [sys.executable, "-m", "ddr.cli", "run", str(ANALYSES / "dimuon.py"), "--datasets",
               str(DATASETS / fileset), "-o", str(tmp_path / f"{name}.coffea"), "--report", str(rep),
               "--workers", "2", "--chunk-size", "7", "--quiet", "--run-dir", str(tmp_path / name)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        datasets = json.loads(rep.read_text())["datasets"]
        assert all(d["complete"] and d["events_processed"] == d["events_expected"] for d in datasets.values())
        if name == "pre":
            assert {ds: d["chunks_done"] for ds, d in datasets.items()} == steps
            note = proc.stderr
            assert "chunk size 7" in note and "the 4 files" in note and "EGamma2023 (1)" in note, note
            assert "ddr preprocess --step-size 7" in note, note
        else:
            assert datasets["EGamma2023"]["chunks_done"] == 1000 // 7 + 1  # cut to the chunk size
            assert "does not apply" not in proc.stderr, proc.stderr


def test_chunk_size_with_coffea_steps_warns_in_python():
    import warnings

    import ddr

    with pytest.warns(ddr.StepsKeptWarning, match="DYJetsToLL") as caught:
        CoffeaDynamicDataReduction(DATASETS / "samples_preprocessed.json", dimuon(), chunk_size=5)
    assert len(caught) == 1 and "--step-size 5" in str(caught[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ddr.StepsKeptWarning)
        CoffeaDynamicDataReduction(DATASETS / "samples_preprocessed.json", dimuon())  # its own steps
        CoffeaDynamicDataReduction(DATASETS / "samples.json", dimuon(), chunk_size=5)  # no steps


class CountMuons(processor.ProcessorABC):
    def process(self, events):
        import awkward as ak

        return {"muons": int(ak.sum(ak.num(events.Muon))), "events": len(events)}

    def postprocess(self, acc):
        acc["mean"] = acc["muons"] / acc["events"] if acc["events"] else 0.0
        return acc


def test_several_processors_and_postprocess():
    out = CoffeaDynamicDataReduction(DATASETS / "samples.json", {"dimuon": dimuon(), "count": CountMuons()},
                                     engine="sync", chunk_size=400).compute()
    assert set(out) == {"dimuon", "count"}
    for ds, v in out["count"].items():
        assert v["events"] == out["dimuon"][ds]["cutflow"][f"{ds}/all"]
        assert v["mean"] == pytest.approx(v["muons"] / v["events"])
    direct = NanoEventsFactory.from_root({str(DATASETS / "samples/nano_dimuon.root"): "Events"},
                                         schemaclass=NanoAODSchema, mode="eager").events()
    import awkward as ak

    assert out["count"]["DoubleMuon2018"]["muons"] == int(ak.sum(ak.num(direct.Muon)))


def test_schema_choice_physlite():
    def count_electrons(events):
        import awkward as ak

        return {"electrons": int(ak.sum(ak.num(events.Electrons))), "n": len(events),
                "dataset": {events.metadata["dataset"]}}

    out = CoffeaDynamicDataReduction(DATASETS / "physlite.json", count_electrons, schema="PHYSLITE",
                                     engine="sync").compute()
    assert out["PHYSLITE"]["n"] == 100 and out["PHYSLITE"]["dataset"] == {"PHYSLITE"}
    assert out["PHYSLITE"]["electrons"] > 0


def test_processor_returning_dask_collection():
    def lazy(events):
        import dask.array as da
        import numpy as np

        x = da.from_array(np.asarray(events.MET.pt), chunks=7)
        return {"met_sum": x.sum(), "n": da.from_array(np.ones(len(events)), chunks=5).sum()}

    out = CoffeaDynamicDataReduction(DATASETS / "samples_list.json", lazy, engine="sync", chunk_size=15).compute()
    direct = NanoEventsFactory.from_root({str(DATASETS / "samples/nano_dy.root"): "Events"},
                                         schemaclass=NanoAODSchema, mode="eager").events()
    assert out["DYJetsToLL"]["n"] == 40
    assert out["DYJetsToLL"]["met_sum"] == pytest.approx(float(np.sum(direct.MET.pt)))


def test_worker_local_dask_split_over_cores_gives_same_result():
    one = CoffeaDynamicDataReduction(DATASETS / "samples.json", dimuon(), engine="sync", chunk_size=1000).compute()
    two = CoffeaDynamicDataReduction(DATASETS / "samples.json", dimuon(), engine="sync", chunk_size=1000,
                                     cores=2, engine_options={"cores_per_worker": 2}).compute()
    for ds in one:
        np.testing.assert_array_equal(one[ds]["mass"].values(), two[ds]["mass"].values())
        assert one[ds]["cutflow"] == two[ds]["cutflow"]


@pytest.mark.parametrize("analysis,hists", [("jets.py", ["q2_jet_pt", "q3_jet_pt_central", "q4_met"]),
                                            ("electrons.py", ["mass", "lead_pt", "lead_eta"])])
def test_other_analyses_match_coffea_runner(analysis, hists):
    proc = next(iter(load_analysis(ANALYSES / analysis).values()))
    fileset = DATASETS / "samples.json"
    ours = CoffeaDynamicDataReduction(fileset, proc, engine="sync", chunk_size=250).compute()
    ref = coffea_reference(fileset, proc)
    for ds in ours:
        for key in hists:
            np.testing.assert_array_equal(per_dataset(ours[ds][key], ds), per_dataset(ref[key], ds), err_msg=f"{key} {ds}")
        for k, v in ours[ds]["cutflow"].items():
            assert ref["cutflow"][k] == v
    if analysis == "electrons.py":
        assert ours["EGamma2023"]["cutflow"]["EGamma2023/opposite_sign"] > 800  # a real Z -> ee sample
    else:
        assert ours["TTbar"]["cutflow"]["TTbar/two_jets_40"] > 150  # ttbar: jet-rich
