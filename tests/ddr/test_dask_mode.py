"""Processors written for coffea's dask mode, run by ddr unchanged, against coffea's own dask run.

The reference is what such a processor is written for: ``coffea.dataset_tools.preprocess``
(``save_form=False``: the shipped samples mix NanoAOD v12 and v15) + ``apply_to_fileset`` +
``dask.compute``. Needs dask-awkward and dask-histogram (``pip install -e '.[test,dask-awkward]'``);
skipped without them.
"""

import json
import pathlib
import subprocess
import sys

import pytest

pytest.importorskip("dask_awkward")
pytest.importorskip("dask_histogram")

import awkward as ak  # noqa: E402
import dask  # noqa: E402
import numpy as np  # noqa: E402
from coffea.dataset_tools import apply_to_fileset, preprocess  # noqa: E402
from coffea.nanoevents import NanoAODSchema, NanoEventsFactory  # noqa: E402
from coffea.util import load  # noqa: E402

from ddr import CoffeaDynamicDataReduction, load_fileset  # noqa: E402
from ddr._analysis import load_analysis  # noqa: E402
from ddr._coffea import NanoEventsOpener, process_chunk  # noqa: E402
from ddr._planning import Chunk  # noqa: E402
from ddr.exceptions import BadInputError  # noqa: E402
from tests._helpers import generate  # noqa: E402
from tests.conftest import ANALYSES, DATASETS, SAMPLES  # noqa: E402

pytestmark = [pytest.mark.dask_awkward, pytest.mark.slow, pytest.mark.filterwarnings("ignore")]

# what analyses/dimuon_dask.py reads: muons and MET
DIMUON_BRANCHES = ["MET_pt", "Muon_charge", "Muon_eta", "Muon_mass", "Muon_phi", "Muon_pt", "nMuon"]
HISTS = ("mass", "mass_log", "met_q5")


def dask_processor():
    return next(iter(load_analysis(ANALYSES / "dimuon_dask.py").values()))


def coffea_dask_reference(fileset_json, proc, step_size=100_000):
    """coffea's own dask mode: preprocess + apply_to_fileset + dask.compute, ``{dataset: output}``."""
    fileset = {name: {"files": {f.path: f.tree for f in ds.files},
                      "metadata": {k: v for k, v in ds.metadata.items() if k != "dataset"}}
               for name, ds in load_fileset(fileset_json).items()}
    available, _ = preprocess(fileset, step_size=step_size, save_form=False)
    (out,) = dask.compute(apply_to_fileset(proc, available, schemaclass=NanoAODSchema))
    return out


def assert_equal_outputs(ours, ref):
    assert sorted(ours) == sorted(ref)
    for ds in ref:
        for key in HISTS:
            assert ours[ds][key] == ref[ds][key], f"{key} of {ds} differs"
        assert ours[ds]["cutflow"] == ref[ds]["cutflow"], ds
        assert isinstance(ours[ds]["q5_high_met"], ak.Array)
        assert ak.array_equal(ours[ds]["q5_high_met"], ref[ds]["q5_high_met"]), ds


@pytest.fixture(scope="module")
def samples_reference():
    return coffea_dask_reference(DATASETS / "samples.json", dask_processor())


def samples_subset(tmp_path, *names):
    """A fileset of some of the shipped samples (fewer wide files to open: each takes a second)."""
    spec = json.loads((DATASETS / "samples.json").read_text())
    out = {n: {**spec[n], "files": {str(DATASETS / f): t for f, t in spec[n]["files"].items()}} for n in names}
    path = tmp_path / "subset.json"
    path.write_text(json.dumps(out))
    return path


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return pathlib.Path(generate(tmp_path_factory.mktemp("synthetic"), files=2, events_per_file=30_000,
                                 chunk=10_000))


# -------------------------------------------------------------- end to end
@pytest.mark.slow
def test_ddr_run_equals_coffea_dask_on_the_real_samples(tmp_path, samples_reference):
    out, rep = tmp_path / "out.coffea", tmp_path / "report.json"
    r = subprocess.run([sys.executable, "-m", "ddr.cli", "run", str(ANALYSES / "dimuon_dask.py"), "--datasets",
                        str(DATASETS / "samples.json"), "--mode", "dask", "--chunk-size", "300", "--workers", "2",
                        "-o", str(out), "--report", str(rep), "--run-dir", str(tmp_path / "run"), "--quiet"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    ours = load(out)
    assert_equal_outputs(ours, samples_reference)
    assert ours["DoubleMuon2018"]["cutflow"]["DoubleMuon2018/q5"] == 6  # real Z -> mumu events
    assert len(ours["TTbar"]["q5_high_met"]) == 3  # Z candidates with MET > 100 GeV: in ttbar
    report = json.loads(rep.read_text())
    assert report["complete"] and report["events_processed"] == 40 + 40 + 1000 + 200


@pytest.fixture(scope="module")
def synthetic_run(synthetic):
    """ddr's Python API on the local engine, mode detected, adaptive chunks; partial results too."""
    job = CoffeaDynamicDataReduction(synthetic, dask_processor(), workers=2, initial_chunk_size=5_000)
    handle = job.submit()
    result = handle.result(timeout=240)
    return job, result, handle.partial()


@pytest.mark.slow
def test_api_on_synthetic_files_equals_coffea_dask(synthetic, synthetic_run):
    job, result, partial = synthetic_run
    assert job.mode == "dask"
    assert_equal_outputs(result, coffea_dask_reference(synthetic, dask_processor(), step_size=7_000))
    (ds,) = result
    assert len(result[ds]["q5_high_met"]) > 100
    value, fraction = partial[ds]
    assert fraction == 1.0 and ak.array_equal(value["q5_high_met"], result[ds]["q5_high_met"])
    assert job.report["datasets"][ds]["chunks_done"] > 2  # several chunks, merged in any order


@pytest.mark.slow
def test_the_same_physics_written_eagerly_gives_the_same_histograms(synthetic, synthetic_run):
    _, dask_result, _ = synthetic_run
    eager = next(iter(load_analysis(ANALYSES / "dimuon.py").values()))
    eager_result = CoffeaDynamicDataReduction(synthetic, eager, engine="sync", chunk_size=20_000).compute()
    for ds in eager_result:
        for key in HISTS:
            assert dask_result[ds][key] == eager_result[ds][key], key
        assert {k: int(v) for k, v in dask_result[ds]["cutflow"].items()} == eager_result[ds]["cutflow"]


@pytest.mark.slow
@pytest.mark.distributed
def test_dask_mode_on_the_dask_engine(tmp_path, samples_reference):
    from vinecore.testing import DaskProcesses

    fileset = samples_subset(tmp_path, "DoubleMuon2018", "DYJetsToLL")
    with DaskProcesses(workers=1, directory=str(tmp_path / "dask")) as cluster:
        out = CoffeaDynamicDataReduction(fileset, dask_processor(), chunk_size=25, engine="dask",
                                         engine_options={"scheduler": cluster.address},
                                         run_dir=tmp_path / "run").compute()
    assert_equal_outputs(out, {ds: samples_reference[ds] for ds in ("DoubleMuon2018", "DYJetsToLL")})


# ------------------------------------------------------ worker-side pieces
def dimuon_chunk(path="nano_dimuon.root", start=0, stop=40, dataset="DoubleMuon2018"):
    return Chunk(dataset, str(SAMPLES / path), "Events", start, stop, None)


def test_column_projection_reads_only_the_branches_the_processor_needs():
    op = NanoEventsOpener(mode="dask")
    try:
        first = process_chunk(op, {"d": dask_processor()}, dimuon_chunk(stop=20))["d"]
        second = process_chunk(op, {"d": dask_processor()}, dimuon_chunk(start=20))["d"]
        records = list(op.daskmode.records)
    finally:
        op.close()
    import dask_awkward as dak

    ref = NanoEventsFactory.from_root({str(SAMPLES / "nano_dimuon.root"): "Events"}, mode="dask",
                                      metadata={"dataset": "DoubleMuon2018"}).events()
    outs = dask_processor().process(ref)
    (coffea_needs,) = dak.necessary_columns(outs["mass"], *outs["cutflow"].values(), outs["q5_high_met"]).values()
    assert sorted(coffea_needs) == DIMUON_BRANCHES  # what dask-awkward finds on coffea's own events
    assert [r.branches_read for r in records] == [DIMUON_BRANCHES, DIMUON_BRANCHES]
    assert records[0].branches_in_file > 1500  # a real NanoAOD file: 1,601 branches
    assert [r.graph_reused for r in records] == [False, True]  # same dataset, layout and length
    size = (SAMPLES / "nano_dimuon.root").stat().st_size
    assert 0 < records[0].bytes_read < size / 20
    assert first["cutflow"]["DoubleMuon2018/all"] == 20 and second["cutflow"]["DoubleMuon2018/all"] == 20


def test_a_graph_is_reused_for_chunks_of_any_length_and_gives_what_a_new_one_gives():
    proc = dask_processor()
    chunks = [dimuon_chunk("DYto2E.root", a, b, "EGamma2023") for a, b in [(0, 300), (300, 600), (600, 800),
                                                                          (800, 1000)]]
    op, fresh = NanoEventsOpener(mode="dask"), NanoEventsOpener(mode="dask")
    try:
        reused = [process_chunk(op, {"d": proc}, c)["d"] for c in chunks]
        new = []
        for c in chunks:
            if fresh.daskmode is not None:  # forget every graph and projection: each chunk builds its own
                fresh.daskmode.graphs.clear()
                fresh.daskmode.columns.clear()
            new.append(process_chunk(fresh, {"d": proc}, c)["d"])
        records = list(op.daskmode.records)
    finally:
        op.close()
        fresh.close()
    # one graph for all four (dask-awkward is not told the lengths, so none is baked into the graph)
    assert [(r.graph_reused, r.projection_kept) for r in records] == [(False, False), (True, False),
                                                                      (True, False), (True, False)]
    for a, b in zip(reused, new):
        for key in HISTS:
            assert a[key] == b[key]
        assert a["cutflow"] == b["cutflow"]
    assert [r["cutflow"]["EGamma2023/all"] for r in reused] == [300, 300, 200, 200]
    assert reused[0]["mass"].sum() != reused[1]["mass"].sum()  # really other events


class Fickle:
    """Touches muons on its first call and electrons after: a kept projection misses the electrons."""

    calls = 0

    def process(self, events):
        Fickle.calls += 1
        coll = events.Muon if Fickle.calls == 1 else events.Electron
        return {"n": ak.sum(ak.num(coll.pt, axis=1)), "meta": events.metadata}


def test_a_kept_projection_that_misses_a_branch_is_redone_in_full():
    op = NanoEventsOpener(mode="dask", metadata={"DY": {"is_mc": True}})
    try:
        # the second chunk is cut in two partitions: a new graph, projected as the first
        muons, electrons = (process_chunk(op, {"f": Fickle()}, Chunk("DY", str(SAMPLES / "nano_dy.root"),
                                                                      "Events", 0, stop, None), cores=cores)["f"]
                            for stop, cores in ((40, 1), (39, 2)))
        assert op.daskmode.fallbacks == 1 and op.daskmode.records[-1].branches_read == ["nElectron"]
    finally:
        op.close()
    direct = NanoEventsFactory.from_root({str(SAMPLES / "nano_dy.root"): "Events"}, mode="virtual").events()
    assert (muons["n"], electrons["n"]) == (ak.sum(ak.num(direct.Muon)), ak.sum(ak.num(direct.Electron[:39])))
    coffea_meta = NanoEventsFactory.from_root({str(SAMPLES / "nano_dy.root"): "Events"}, mode="dask",
                                              metadata={"is_mc": True, "dataset": "DY"}).events().metadata
    assert muons["meta"] == coffea_meta  # what apply_to_fileset gives: the dataset's metadata and its name


class NeedsLengths:
    """Uses what dask-awkward only knows with the partitions' lengths: ``len()`` or a slice of the first
    ``n`` events (which makes dask-awkward compute the lengths, so it is refused while a graph is built)."""

    def __init__(self, how):
        self.how = how

    def process(self, events):
        if self.how == "len":
            return {"len": len(events), "n": ak.sum(ak.num(events.Muon.pt, axis=1))}
        head = events[:10]
        return {"len": ak.num(head, axis=0), "n": ak.sum(ak.num(head.Muon.pt, axis=1))}


@pytest.mark.parametrize("how", ["len", "slice"])
def test_a_processor_that_needs_the_lengths_gets_them(how):
    op = NanoEventsOpener(mode="dask")
    direct = NanoEventsFactory.from_root({str(SAMPLES / "nano_dy.root"): "Events"}, mode="virtual").events()
    try:
        outs = [process_chunk(op, {"p": NeedsLengths(how)}, Chunk("DY", str(SAMPLES / "nano_dy.root"), "Events",
                                                                   start, stop, None))["p"]
                for start, stop in ((0, 16), (16, 28), (28, 40))]
        assert op.daskmode.sized == {("p",)}  # built once more with known lengths, then always so
        assert [r.graph_reused for r in op.daskmode.records] == [False, False, True]
    finally:
        op.close()
    for out, (start, stop) in zip(outs, ((0, 16), (16, 28), (28, 40))):
        events = direct[start:stop] if how == "len" else direct[start:start + 10]
        assert out == {"len": len(events), "n": ak.sum(ak.num(events.Muon.pt, axis=1))}


def test_a_chunk_split_over_two_cores_gives_the_same_result():
    op = NanoEventsOpener(mode="dask")
    c = dimuon_chunk("DYto2E.root", 0, 1000, "EGamma2023")
    try:
        one = process_chunk(op, {"d": dask_processor()}, c, cores=1)["d"]
        two = process_chunk(op, {"d": dask_processor()}, c, cores=2)["d"]
        assert [r.partitions for r in op.daskmode.records] == [1, 2]
    finally:
        op.close()
    for key in HISTS:
        assert one[key] == two[key]
    assert one["cutflow"] == two["cutflow"] and one["cutflow"]["EGamma2023/two_muons"] > 0
    assert ak.array_equal(one["q5_high_met"].concatenate(), two["q5_high_met"].concatenate())


@pytest.mark.slow
def test_two_core_tasks_on_the_local_engine(samples_reference, tmp_path):
    out = CoffeaDynamicDataReduction(samples_subset(tmp_path, "EGamma2023"), dask_processor(), chunk_size=400,
                                     cores=2, workers=1, engine_options={"cores_per_worker": 2},
                                     run_dir=tmp_path / "run").compute()
    assert_equal_outputs(out, {"EGamma2023": samples_reference["EGamma2023"]})


def test_errors_in_dask_mode():
    op = NanoEventsOpener(mode="dask")
    try:
        with pytest.raises(ZeroDivisionError):
            process_chunk(op, {"b": lambda events: 1 / 0}, dimuon_chunk())
        with pytest.raises(AttributeError, match="Muonz"):
            process_chunk(op, {"b": lambda events: ak.num(events.Muonz, axis=0)}, dimuon_chunk())
    finally:
        op.close()


@pytest.mark.parametrize("cores", [1, 2])
def test_read_errors_are_bad_input(tmp_path, cores):
    data = bytearray((SAMPLES / "nano_dimuon.root").read_bytes())
    start = int(len(data) * 0.2)
    data[start: start + 3000] = bytes(3000)  # zero a stretch of compressed baskets
    path = tmp_path / "corrupt.root"
    path.write_bytes(bytes(data))
    op = NanoEventsOpener(mode="dask")
    with pytest.raises(BadInputError) as info:  # the whole events array as output: every branch is read
        process_chunk(op, {"all": lambda events: {"all": events}}, Chunk("mu", str(path), "Events", 0, 40, None),
                      cores=cores)
    op.close()
    err = info.value
    assert err.permanent and (err.file, err.start, err.stop) == (str(path), 0, 40)  # the chunk, not a partition
    assert str(err).splitlines()[0].startswith("cannot read the events")


def test_dask_collections_other_than_dask_awkward_are_computed_too():
    op = NanoEventsOpener(mode="dask")
    try:
        out = process_chunk(op, {"p": lambda events: {"n": ak.num(events, axis=0),
                                                      "d": dask.delayed(sum)([1, 2, 3]),
                                                      "arr": np.arange(3)}}, dimuon_chunk())["p"]
    finally:
        op.close()
    assert out["n"] == 40 and out["d"] == 6 and list(out["arr"]) == [0, 1, 2]
