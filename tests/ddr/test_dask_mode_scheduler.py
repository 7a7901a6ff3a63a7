"""Worker-local dask uses exactly the task's cores, and how a run's NanoEvents mode is chosen.

These tests need no dask-awkward: they run in the main environment too.
The dask-mode runs themselves are in test_dask_mode.py.
"""

import importlib.util
import math
import subprocess
import sys
import threading

import dask
import pytest

from ddr import CoffeaDynamicDataReduction, DynamicDataReduction
from ddr._coffea import NanoEventsOpener, process_chunk, run_processor
from ddr._daskmode import DaskModeUnavailable, local_scheduler, resolve_mode, uses_dask_mode
from ddr._planning import Chunk
from ddr.exceptions import DDRError
from tests.conftest import ANALYSES, DATASETS, SAMPLES

HAVE_DAK = importlib.util.find_spec("dask_awkward") is not None and importlib.util.find_spec("dask_histogram")


def threads_used(items, cores):
    """A processor output whose dask tasks report the thread they ran in, and whether ``cores`` of them
    ran at the same time (a barrier of ``cores`` parties: passes only with that many threads)."""
    barrier = threading.Barrier(cores, timeout=60) if cores > 1 else None

    def where(_):
        if barrier is not None:
            barrier.wait()
        return threading.get_ident()

    caller = threading.get_ident()
    tasks = [dask.delayed(where, pure=False)(i) for i in range(max(items, cores))]
    return {"caller": caller, "threads": dask.delayed(lambda *ids: set(ids))(*tasks)}


def test_local_scheduler_uses_exactly_the_cores():
    assert local_scheduler(1) == {"scheduler": "sync"} and local_scheduler(0) == {"scheduler": "sync"}
    assert local_scheduler(3) == {"scheduler": "threads", "num_workers": 3}


def test_one_core_runs_the_graph_in_the_calling_thread():
    """Regression (issue 13): with one core per task, dask collections were computed on dask's default
    thread pool (one thread per CPU of the machine) in every worker."""
    out = run_processor(lambda x: threads_used(16, 1), None, cores=1)
    assert out["threads"] == {out["caller"]}


@pytest.mark.parametrize("cores", [2, 3])
def test_n_cores_run_the_graph_on_n_threads(cores):
    out = run_processor(lambda x: threads_used(24, cores), None, cores=cores)
    assert len(out["threads"]) == cores and out["caller"] not in out["threads"]


def test_process_chunk_one_core_uses_no_pool():
    op = NanoEventsOpener()
    try:
        out = process_chunk(op, {"t": lambda ev: threads_used(16, 1)}, Chunk("mu", str(SAMPLES / "nano_dimuon.root"),
                                                                              "Events", 0, 40, None), cores=1)["t"]
    finally:
        op.close()
    assert out["threads"] == {out["caller"]}


def _count_threads(item):
    out = threads_used(12, item)
    return {"one_thread_per_core": dask.delayed(lambda c, t: int(len(t) == item and (item > 1 or t == {c})))(
        out["caller"], out["threads"]), "n": 1}


@pytest.mark.slow
@pytest.mark.parametrize("cores", [1, 3])
def test_generic_run_on_the_local_engine_uses_the_task_cores(tmp_path, cores):
    ddr = DynamicDataReduction({"d": {"n": 4}}, _count_threads, preprocess=lambda spec: ((cores, 1) for _ in
                                                                                          range(spec["n"])),
                               engine="local", workers=1, cores=cores, run_dir=tmp_path,
                               engine_options={"cores_per_worker": cores})
    assert ddr.compute() == {"d": {"one_thread_per_core": 4, "n": 4}}


# ------------------------------------------------------------ mode choice
def test_mode_detection_reads_the_code_without_running_it():
    def eager(events):
        import hist

        return hist.Hist.new.Reg(3, 0, 1).Double()

    def lazy(events):
        import hist.dask as hda  # noqa: F401 - only looked at

        return events

    def uses_helper(events):
        return _dak_helper(events)

    class Proc:
        def process(self, events):
            import dask_awkward as dak

            return dak.num(events, axis=0)

    assert not uses_dask_mode(eager)
    assert uses_dask_mode(lazy) and uses_dask_mode(Proc()) and uses_dask_mode(uses_helper)
    from ddr._analysis import load_analysis

    (dimuon,) = load_analysis(ANALYSES / "dimuon.py").values()
    assert not uses_dask_mode(dimuon)
    assert resolve_mode("auto", {"d": dimuon}) == "virtual" and resolve_mode("eager", {"d": lazy}) == "eager"
    with pytest.raises(ValueError, match="unknown mode 'lazy'; choose one of auto, eager, virtual, dask"):
        resolve_mode("lazy", {"d": dimuon})
    with pytest.raises(DDRError, match="processors lazy are written for coffea's dask mode and eager for eager"):
        resolve_mode("auto", {"lazy": lazy, "eager": eager})


def _dak_helper(events):
    import dask_awkward as dak

    return dak.num(events, axis=0)


@pytest.mark.skipif(HAVE_DAK, reason="this environment has dask-awkward")
def test_dask_mode_without_dask_awkward_says_how_to_install_it(tmp_path):
    with pytest.raises(DaskModeUnavailable, match=r"pip install 'ddr-hep\[dask-awkward\]'"):
        resolve_mode("dask", {})
    with pytest.raises(DaskModeUnavailable):
        CoffeaDynamicDataReduction(DATASETS / "samples.json", _dak_helper, engine="sync")
    with pytest.raises(ImportError, match=r"ddr-hep\[dask-awkward\]"):
        NanoEventsOpener(mode="dask")
    r = subprocess.run([sys.executable, "-m", "ddr.cli", "run", str(ANALYSES / "dimuon_dask.py"), "--datasets",
                        str(DATASETS / "samples.json"), "--quiet", "--run-dir", str(tmp_path)],
                       capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    assert "pip install 'ddr-hep[dask-awkward]'" in r.stderr and "dimuon_dask.py" in r.stderr


# -------------------------------------------------------- awkward outputs
def test_array_pieces_merge_with_coffea_accumulate_and_join_in_fileset_order():
    import awkward as ak

    from ddr._daskmode import ArrayPieces, finalize
    from ddr._reducers import accumulate_pair, reduce_all

    parts = {("b.root", 0): [5], ("a.root", 10): [3, 4], ("a.root", 0): [1, 2], ("b.root", 7): [6]}
    outs = [{"arr": ArrayPieces([(where, ak.Array(v))]), "n": len(v)} for where, v in parts.items()]
    merged = reduce_all(outs, accumulate_pair)  # in an order that is not the files'
    assert merged["n"] == 6 and len(merged["arr"]) == 6 and "6 entries" in repr(merged["arr"])
    assert [len(o["arr"].pieces) for o in outs] == [1, 1, 1, 1]  # the inputs are not modified
    done = finalize(merged, {"a.root": 0, "b.root": 1})
    assert done["arr"].tolist() == [1, 2, 3, 4, 5, 6] and done["n"] == 6
    assert finalize(merged, {"b.root": 0, "a.root": 1})["arr"].tolist() == [5, 6, 1, 2, 3, 4]
    assert isinstance(merged["arr"], ArrayPieces)  # finalize returns a new value


def test_array_pieces_pickle_the_nanoevents_behavior_once():
    """Pieces computed in different chunks (or unpickled from different partials) carry behaviors that are
    copies of one another (cloudpickle copies vector's lambdas by value); a partial result pickles one."""
    import pickle

    import awkward as ak
    import cloudpickle
    from coffea.nanoevents.methods import nanoaod

    from ddr._daskmode import ArrayPieces, finalize

    def piece(i):
        behavior = pickle.loads(cloudpickle.dumps(nanoaod.behavior))  # as unpickled from another partial
        muons = ak.zip({"pt": [10.0 * i + 1], "eta": [0.5], "phi": [0.1], "mass": [0.105], "charge": [1]},
                       with_name="Muon", behavior=behavior)
        return ("f.root", i), muons

    one = len(cloudpickle.dumps(ArrayPieces([piece(0)])))
    many = ArrayPieces([piece(i) for i in range(8)])
    data = cloudpickle.dumps(many)
    assert len(data) < 1.5 * one  # not 8 behaviors
    back = pickle.loads(data)
    assert [w for w, _ in back.pieces] == [w for w, _ in many.pieces]
    joined = finalize({"mu": back})["mu"]
    assert joined.pt.tolist() == [1.0, 11.0, 21.0, 31.0, 41.0, 51.0, 61.0, 71.0]
    assert joined.layout.parameter("__record__") == "Muon"  # the behavior came back: vector's methods work
    assert joined.p.tolist() == pytest.approx([pt * math.cosh(0.5) for pt in joined.pt.tolist()])
