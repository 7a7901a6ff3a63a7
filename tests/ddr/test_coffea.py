"""Worker side for coffea, on the real samples: opening, caching, schemas, processors, errors."""

import pickle
import statistics
import time
import warnings
import zlib
from collections import defaultdict

import awkward as ak
import cloudpickle
import dask
import dask.array as da
import hist
import numpy as np
import pytest
import uproot
from coffea import processor
from coffea.nanoevents import BaseSchema, NanoAODSchema, NanoEventsFactory, PHYSLITESchema

from ddr._coffea import (NanoEventsOpener, classify_error, count_entries, process_chunk, resolve_schema,
                         run_processor)
from ddr._planning import Chunk
from ddr.exceptions import BadInputError, ProcessorError, TreeNotFound
from tests.conftest import SAMPLES

DIMUON = str(SAMPLES / "nano_dimuon.root")
DY = str(SAMPLES / "nano_dy.root")
EMPTY = str(SAMPLES / "nano_dy_empty.root")
TT = str(SAMPLES / "nano_tt_v12.root")
EGAMMA = str(SAMPLES / "DYto2E.root")
NO_LUMI = str(SAMPLES / "missing_luminosityBlock.root")
PHYSLITE = str(SAMPLES / "PHYSLITE_example.root")

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture
def opener():
    op = NanoEventsOpener(metadata={"EGamma2023": {"is_mc": False, "year": "2023"}})
    yield op
    op.close()


def chunk(path, start, stop, dataset="EGamma2023", tree="Events", uuid=None):
    return Chunk(dataset, path, tree, start, stop, uuid)


class Electrons(processor.ProcessorABC):
    """Integer-weighted histograms and counters: bit-identical however the events are split."""

    def process(self, events):
        h = hist.Hist.new.Reg(30, 0, 150, name="pt").Reg(10, -2.5, 2.5, name="eta").Weight()
        e = events.Electron
        h.fill(pt=ak.flatten(e.pt), eta=ak.flatten(e.eta), weight=ak.flatten(ak.ones_like(e.pt) * 2))
        cutflow = defaultdict(int, {"events": len(events), "two_electrons": int(ak.sum(ak.num(e) >= 2))})
        return {"pt_eta": h, "cutflow": cutflow, "runs": set(np.unique(events.run).tolist())}


def same_output(a, b):
    assert a.keys() == b.keys()
    assert np.array_equal(a["pt_eta"].values(flow=True), b["pt_eta"].values(flow=True))
    assert np.array_equal(a["pt_eta"].variances(flow=True), b["pt_eta"].variances(flow=True))
    assert a["cutflow"] == b["cutflow"] and a["runs"] == b["runs"]


# -------------------------------------------------------------- counting
@pytest.mark.parametrize("path, tree, n", [(DIMUON, "Events", 40), (DY, "Events", 40), (EMPTY, "Events", 0),
                                           (TT, "Events", 200), (EGAMMA, "Events", 1000), (NO_LUMI, "Events", 2),
                                           (PHYSLITE, "CollectionTree", 100)])
def test_count_entries_on_every_sample(path, tree, n):
    entries, uuid = count_entries(path, tree)
    with uproot.open(path) as f:
        assert (entries, uuid) == (n, str(f.file.uuid))


def test_count_missing_file(tmp_path):
    with pytest.raises(BadInputError) as info:
        count_entries(str(tmp_path / "gone.root"), "Events")
    err = info.value
    assert err.permanent and err.file == str(tmp_path / "gone.root") and err.cause.startswith("FileNotFoundError")
    assert str(err).splitlines()[0] == "cannot open file: file not found"
    assert f"  file:    {tmp_path / 'gone.root'}" in str(err) and "--skip-bad-files" in str(err)


@pytest.mark.parametrize("content", ["first half", "text", "empty"])
def test_count_truncated_or_non_root_file(tmp_path, content):
    data = (SAMPLES / "nano_dimuon.root").read_bytes()
    path = tmp_path / "bad.root"
    path.write_bytes({"first half": data[: len(data) // 2], "text": b"hello\n", "empty": b""}[content])
    with pytest.raises(BadInputError) as info:
        count_entries(str(path), "Events")
    assert info.value.permanent
    assert "file is truncated or not a ROOT file" in str(info.value) and str(path) in str(info.value)


def test_count_wrong_tree_lists_the_trees_that_exist():
    with pytest.raises(TreeNotFound) as info:
        count_entries(DIMUON, "Evnts")
    err = info.value
    assert isinstance(err, BadInputError) and err.permanent and err.tree == "Evnts"
    assert err.available == ["Events", "Runs"]  # nearest first
    msg = str(err)
    assert msg.splitlines()[0] == "tree 'Evnts' not found in the file"
    assert "available (nearest first): 'Events', 'Runs'" in msg and DIMUON in msg


def test_count_object_that_is_not_a_tree(tmp_path):
    path = tmp_path / "h.root"
    with uproot.recreate(path) as f:
        f["h"] = np.histogram([1, 2, 3])
    with pytest.raises(BadInputError, match="'h' is not a TTree"):
        count_entries(str(path), "h")


# --------------------------------------------------------------- opening
def test_events_are_virtual_with_coffea_metadata(opener):
    events = opener(chunk(EGAMMA, 100, 300))
    assert len(events) == 200
    assert not events.layout.content("run").data.is_materialized  # virtual: nothing read yet
    assert events.metadata == {"is_mc": False, "year": "2023", "dataset": "EGamma2023", "filename": EGAMMA,
                               "treename": "Events", "entrystart": 100, "entrystop": 300,
                               "fileuuid": "462c74b2-2807-11ef-8b5b-f64dfa2c5e3c", "version": "latest"}


def test_eager_mode_reads_everything_up_front():
    op = NanoEventsOpener(mode="eager")
    events = op(chunk(DIMUON, 0, 40, dataset="mu"))
    assert isinstance(events.layout.content("run").data, np.ndarray)
    assert events.metadata["entrystop"] == 40 and ak.sum(ak.num(events.Muon)) > 0
    op.close()


def test_events_match_coffea_from_root(opener):
    for start, stop in [(0, 250), (250, 1000)]:
        ours = opener(chunk(EGAMMA, start, stop))
        ref = NanoEventsFactory.from_root({EGAMMA: "Events"}, entry_start=start, entry_stop=stop).events()
        assert ours.fields == ref.fields
        for get in (lambda ev: ev.Electron.pt, lambda ev: ev.event,
                    lambda ev: ev.Jet.matched_electrons.pt, lambda ev: (ev.Electron[:, :1] + ev.Electron[:, 1:2]).mass):
            assert ak.array_equal(get(ours), get(ref), equal_nan=True)


def test_files_and_schemas_are_reused_across_chunks(opener):
    c1 = chunk(EGAMMA, 0, 200)
    t0 = time.perf_counter()
    ak.sum(opener(c1).Electron.pt)
    first = time.perf_counter() - t0
    tree = opener.open_tree(EGAMMA, "Events")
    later = []
    for start in range(200, 1000, 200):
        t0 = time.perf_counter()
        ak.sum(opener(chunk(EGAMMA, start, start + 200)).Electron.pt)
        later.append(time.perf_counter() - t0)
    assert opener.open_tree(EGAMMA, "Events") is tree  # the same uproot TTree (and file) object
    stats = opener.statistics()
    assert (stats.opens, stats.schemas_built, stats.chunks, stats.open_files) == (1, 1, 5, 1)
    assert statistics.median(later) < first / 3, (first, later)


def test_lru_keeps_at_most_max_open_files():
    op = NanoEventsOpener(max_open_files=2)
    files = {p: None for p in (DIMUON, DY, TT)}
    for p in files:
        op(chunk(p, 0, 2, dataset="d"))
        files[p] = op.open_tree(p, "Events").file
    assert op.warm_paths() == [TT, DY]  # most recent first
    assert files[DIMUON].closed and not files[TT].closed
    op(chunk(DY, 2, 4, dataset="d"))
    assert op.statistics().opens == 3 and op.warm_paths() == [DY, TT]
    op(chunk(DIMUON, 2, 4, dataset="d"))
    assert op.statistics().opens == 4
    op.close()
    assert op.warm_paths() == [] and files[TT].closed


def test_opener_pickles_without_its_open_files(opener):
    opener(chunk(EGAMMA, 0, 10))
    again = pickle.loads(pickle.dumps(opener))
    assert again.warm_paths() == [] and again.statistics().opens == 0
    assert (again.schema, again.mode, again.metadata) == (opener.schema, opener.mode, opener.metadata)
    assert again(chunk(EGAMMA, 0, 10)).metadata["year"] == "2023"


def test_schema_choice():
    phys = NanoEventsOpener("PHYSLITE")
    events = phys(chunk(PHYSLITE, 0, 50, dataset="ATLAS", tree="CollectionTree"))
    assert len(events) == 50 and "Electrons" in events.fields
    ref = NanoEventsFactory.from_root({PHYSLITE: "CollectionTree"}, schemaclass=PHYSLITESchema,
                                      entry_stop=50).events()
    assert ak.array_equal(events.Electrons.pt, ref.Electrons.pt)
    base = NanoEventsOpener(BaseSchema)
    flat = base(chunk(DIMUON, 0, 40, dataset="mu"))
    assert "Muon_pt" in flat.fields and "Muon" not in flat.fields
    assert base(chunk(NO_LUMI, 0, 2, dataset="x")).fields  # BaseSchema has no event-ID requirement


def test_resolve_schema():
    assert resolve_schema("NanoAOD") is NanoAODSchema
    assert resolve_schema("nanoaodschema") is NanoAODSchema and resolve_schema("physlite") is PHYSLITESchema
    assert resolve_schema(BaseSchema) is BaseSchema
    with pytest.raises(ValueError) as info:
        resolve_schema("Nano")
    assert "unknown schema 'Nano'; valid names (nearest first): 'NanoAOD'," in str(info.value)
    with pytest.raises(ValueError, match="mode 'lazy' is not supported; use one of virtual, eager, dask"):
        NanoEventsOpener(mode="lazy")  # dask mode: tests/ddr/test_dask_mode*.py
    with pytest.raises(ValueError, match="unknown schema"):
        NanoEventsOpener("CMS")


def test_schema_rejection_names_the_file():
    op = NanoEventsOpener()
    with pytest.raises(BadInputError) as info:
        op(chunk(NO_LUMI, 0, 2, dataset="Mixed"))
    err = info.value
    assert err.permanent and (err.dataset, err.file, err.start, err.stop) == ("Mixed", NO_LUMI, 0, 2)
    assert str(err).splitlines()[0] == "the NanoAOD schema rejected the file"
    assert "missing event ID fields" in err.cause and "--schema" in err.hint


def test_fileset_that_disagrees_with_the_file(opener):
    with pytest.raises(BadInputError, match="the file changed since the fileset was preprocessed"):
        opener(chunk(DIMUON, 0, 10, uuid="00000000-0000-0000-0000-000000000000"))
    with pytest.raises(BadInputError, match="entry range beyond the end of the tree") as info:
        opener(chunk(DIMUON, 30, 50))
    assert "the tree has 40 entries" in info.value.cause
    assert len(opener(chunk(DIMUON, 0, 40, uuid="a210a3f8-3648-11ea-a29f-f5b55c90beef"))) == 40


# ------------------------------------------------------------ processors
def test_process_chunk_runs_every_processor_on_one_read(opener):
    calls = []

    def count(events):
        calls.append(id(events))
        return {"n": len(events)}

    out = process_chunk(opener, {"electrons": Electrons(), "count": count}, chunk(EGAMMA, 0, 500))
    assert out["count"] == {"n": 500} and out["electrons"]["cutflow"]["events"] == 500
    assert opener.statistics().chunks == 1  # both processors saw the same events


def test_cores_split_gives_identical_results(opener):
    c = chunk(EGAMMA, 0, 1000)
    one = process_chunk(opener, {"e": Electrons()}, c, cores=1)["e"]
    for cores in (2, 3):
        many = process_chunk(opener, {"e": Electrons()}, c, cores=cores)["e"]
        same_output(one, many)
    assert one["cutflow"]["events"] == 1000
    assert opener.statistics().opens == 1


def test_dask_outputs_are_computed(opener):
    def lazy(events):
        pt = da.from_array(ak.to_numpy(ak.fill_none(ak.firsts(events.Electron.pt), 0.0)), chunks=100)
        return {"sum": pt.sum(), "n": dask.delayed(len)(events), "nested": defaultdict(list, {"x": [pt.max()]}),
                "plain": 3}

    out = process_chunk(opener, {"lazy": lazy}, chunk(EGAMMA, 0, 300), cores=1)["lazy"]
    events = opener(chunk(EGAMMA, 0, 300))
    lead = ak.to_numpy(ak.fill_none(ak.firsts(events.Electron.pt), 0.0))
    assert out["sum"] == pytest.approx(lead.sum()) and out["n"] == 300 and out["plain"] == 3
    assert isinstance(out["nested"], defaultdict) and out["nested"]["x"] == [pytest.approx(lead.max())]
    assert not any(hasattr(v, "__dask_graph__") for v in (out["sum"], out["n"]))


def test_outputs_are_materialised_and_outlive_the_file():
    op = NanoEventsOpener()
    out = run_processor(lambda ev: {"pt": ev.Muon.pt[ev.Muon.pt > 10], "first": ev[0], "n": len(ev)},
                        op(chunk(DIMUON, 0, 40, dataset="mu")))
    op.close()  # no file behind the arrays any more
    data = pickle.loads(cloudpickle.dumps(out))  # as vinecore ships results
    ref = NanoEventsFactory.from_root({DIMUON: "Events"}).events()
    assert data["pt"].tolist() == ref.Muon.pt[ref.Muon.pt > 10].tolist()
    assert data["first"].Muon.pt.tolist() == ref[0].Muon.pt.tolist() and data["n"] == 40


def test_processor_errors_propagate_unchanged(opener):
    def broken(events):
        return 1 / 0

    with pytest.raises(ZeroDivisionError):
        process_chunk(opener, {"b": broken}, chunk(EGAMMA, 0, 100))
    with pytest.raises(ZeroDivisionError):
        process_chunk(opener, {"b": broken}, chunk(EGAMMA, 0, 100), cores=2)
    with pytest.raises(AttributeError, match="no field named 'Electronz'"):
        process_chunk(opener, {"b": lambda ev: ev.Electronz}, chunk(EGAMMA, 0, 100))
    with pytest.raises(TypeError, match=r"pass an instance: Electrons\(\)"):
        run_processor(Electrons, None)


@pytest.mark.parametrize("cores", [1, 2])
def test_read_errors_inside_the_processor_are_bad_input(tmp_path, cores):
    data = bytearray((SAMPLES / "nano_dimuon.root").read_bytes())
    start = int(len(data) * 0.2)
    data[start: start + 3000] = bytes(3000)  # zero a stretch of compressed baskets
    path = tmp_path / "corrupt.root"
    path.write_bytes(bytes(data))
    op = NanoEventsOpener()
    events_chunk = chunk(str(path), 0, 40, dataset="mu")
    with pytest.raises(BadInputError) as info:
        process_chunk(op, {"all": lambda ev: ak.materialize(ev)}, events_chunk, cores=cores)
    err = info.value
    assert err.permanent and (err.file, err.start, err.stop) == (str(path), 0, 40)
    assert str(err).splitlines()[0].startswith("cannot read the events: corrupt data")


# ---------------------------------------------------------------- errors
@pytest.mark.parametrize("exc, permanent", [
    (FileNotFoundError(2, "No such file or directory"), True),
    (PermissionError(13, "Permission denied"), True),
    (OSError("XRootD error: [ERROR] Server responded with an error: [3011] No such file or directory"), True),
    (TimeoutError("timed out"), False),
    (ConnectionResetError(104, "Connection reset by peer"), False),
    (OSError("XRootD error: [ERROR] Operation expired"), False),
    (OSError("XRootD error: [FATAL] Socket timeout"), False),
    (OSError("expected Chunk of length 150,\nreceived 0 bytes from FSSpecSource\nfor file path /x.root"), True),
    # a short read is judged by where the file is (classification never reads the message)
    ((OSError("expected Chunk of length 150,\nreceived 9 bytes from XRootDSource\nfor file path root://h//x.root"),
      "root://h//x.root"), False),
    (zlib.error("Error -3 while decompressing data: incorrect data check"), True),
    (ValueError("unrecognized compression algorithm: b'\\x00\\x00'"), True),
    (uproot.KeyInFileError("Events"), True),
    (RuntimeError("There are missing event ID fields: ['luminosityBlock']"), True),
    (OSError(5, "Input/output error"), False),
    (KeyError("x"), True),
])
def test_classify_error(exc, permanent):
    exc, path = exc if isinstance(exc, tuple) else (exc, None)
    got, desc = classify_error(exc, path)
    assert got is permanent and desc


def test_bad_input_error_format_and_pickling():
    err = BadInputError("DY", "/data/f.root", "Events", 0, 40, "OSError: [ERROR] Operation expired", False)
    assert str(err).splitlines() == [
        "transient error while reading input",
        "  dataset: DY",
        "  file:    /data/f.root",
        "  tree:    Events",
        "  entries: 0-40",
        "  error:   OSError: [ERROR] Operation expired",
        "  hint:    ddr retries transient errors; if it keeps failing, check the storage, or use "
        "--skip-bad-files to continue without the file",
    ]
    err.remote_traceback = "Traceback ..."  # vinecore attaches the worker's traceback before pickling
    again = pickle.loads(pickle.dumps(err))
    assert (str(again), again.permanent, again.start, again.remote_traceback) == (
        str(err), False, 0, "Traceback ...")
    tree = pickle.loads(pickle.dumps(TreeNotFound(None, "/f.root", "Evnts", ["Runs", "Events"])))
    assert tree.available == ["Events", "Runs"] and "'Events', 'Runs'" in str(tree)


def test_processor_error_carries_chunk_and_remote_traceback():
    exc = ZeroDivisionError("division by zero")
    exc.remote_traceback = "Traceback (most recent call last):\n  File \"ana.py\", line 3\nZeroDivisionError"
    err = ProcessorError.from_task("DY", chunk(DY, 0, 40, dataset="DY"), exc)
    assert (err.dataset, err.file, err.tree, err.start, err.stop) == ("DY", DY, "Events", 0, 40)
    assert err.cause == "ZeroDivisionError: division by zero"
    lines = str(err).splitlines()
    assert lines[:5] == ["the processor raised on dataset 'DY'", f"  file:    {DY}", "  tree:    Events",
                         "  entries: 0-40", "  error:   ZeroDivisionError: division by zero"]
    assert "    Traceback (most recent call last):" in lines
    assert str(pickle.loads(pickle.dumps(err))) == str(err)


def test_no_warnings_leak_from_building_events(opener):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(opener(chunk(EGAMMA, 0, 10))) == 10


def test_long_lived_objects_are_frozen_out_of_the_collector_until_close():
    import gc

    op = NanoEventsOpener()
    op(chunk(DIMUON, 0, 10, dataset="mu"))
    assert gc.get_freeze_count() > 0
    op.close()
    assert gc.get_freeze_count() == 0
    off = NanoEventsOpener(freeze_gc=False)
    off(chunk(DIMUON, 0, 10, dataset="mu"))
    assert gc.get_freeze_count() == 0
    off.close()


def test_closed_files_are_reclaimed_despite_the_freeze():
    import gc
    import weakref

    op = NanoEventsOpener(max_open_files=2)  # a collection after every max(1, 2 // 2) = 1 closed file
    op(chunk(DIMUON, 0, 10, dataset="mu"))
    first = weakref.ref(op._files[DIMUON][0])
    op(chunk(DY, 0, 10, dataset="dy"))
    op(chunk(TT, 0, 10, dataset="tt"))  # evicts DIMUON; building TT's schema collects
    assert DIMUON not in op._files
    assert first() is None, "the closed file stayed alive in the frozen generation"
    op.close()
    assert gc.get_freeze_count() == 0
