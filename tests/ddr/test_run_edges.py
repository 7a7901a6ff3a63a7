"""Hangs and traps of a run, each found by trying ddr as a new user would (issue 13), on the local engine."""

import json
import os
import resource
import subprocess
import sys
import threading
import time

import hist
import pytest
from coffea.util import load

import ddr
import vinecore
from analyses.dimuon import DimuonProcessor
from tests._helpers import assert_same
from tests.conftest import ANALYSES, DATASETS, SAMPLES

pytestmark = pytest.mark.slow


def cli(*args, timeout=300, cwd=None):
    return subprocess.run([sys.executable, "-m", "ddr.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd)


def _numbers(spec):
    return ((i, 1) for i in range(spec["n"]))


# ------------------------------------------------------------------ cores
def test_cores_2_on_one_worker_equals_cores_1(tmp_path):
    outs = []
    for cores in (1, 2):
        out = tmp_path / f"c{cores}.coffea"
        r = cli("run", ANALYSES / "dimuon.py", "--datasets", DATASETS / "samples.json", "-o", out, "--quiet",
                "--workers", "1", "--cores", str(cores), "--run-dir", tmp_path / f"run{cores}", timeout=240)
        assert r.returncode == 0, r.stderr
        outs.append(load(out))
    assert_same(outs[0], outs[1])


def test_a_task_larger_than_every_worker_fails_at_once_naming_the_cores(tmp_path):
    with vinecore.Manager(engine="local", workers=1, run_dir=tmp_path / "m") as m:  # workers of one core
        t0 = time.monotonic()
        with pytest.raises(ddr.ChunkResourceError) as err:
            ddr.CoffeaDynamicDataReduction(str(DATASETS / "samples.json"), DimuonProcessor(), manager=m,
                                           cores=2).compute()
        assert time.monotonic() - t0 < 60
    assert "2 core(s)" in str(err.value) and "unsatisfiable" in str(err.value), err.value


def _thread_names(x):
    import dask

    def name(_):
        return {threading.current_thread().name}

    return {"threads": dask.delayed(name)(x)}


def test_worker_local_dask_uses_exactly_the_task_cores():
    union = lambda a, b: {"threads": a["threads"] | b["threads"]}  # noqa: E731
    out = ddr.DynamicDataReduction({"ds": {"n": 6}}, _thread_names, preprocess=_numbers, reducer=union,
                                   engine="local", workers=2).compute()
    assert out["ds"]["threads"] == {"MainThread"}  # one core: dask computes in the task's own thread


# ------------------------------------------------------------ one run per manager
class _Gated:
    def __init__(self, gate):
        self.gate = gate

    def __call__(self, x):
        deadline = time.monotonic() + 120
        while not os.path.exists(self.gate) and time.monotonic() < deadline:
            time.sleep(0.02)
        return {"n": 1}


def test_a_second_run_on_a_busy_manager_is_refused_at_once(tmp_path):
    gate = tmp_path / "gate"
    with vinecore.Manager(engine="local", workers=1, run_dir=tmp_path / "m") as m:
        first = ddr.DynamicDataReduction({"ds": {"n": 3}}, _Gated(str(gate)), preprocess=_numbers,
                                         manager=m).submit()
        t0 = time.monotonic()
        with pytest.raises(ddr.DDRError, match="already running a reduction"):
            ddr.DynamicDataReduction({"ds": {"n": 3}}, lambda x: {"n": 1}, preprocess=_numbers,
                                     manager=m).compute()
        assert time.monotonic() - t0 < 1.0
        gate.touch()
        assert first.result(timeout=120) == {"ds": {"n": 3}}
        assert ddr.DynamicDataReduction({"ds": {"n": 2}}, lambda x: {"n": 1}, preprocess=_numbers,
                                        manager=m).compute() == {"ds": {"n": 2}}  # free again


# ------------------------------------------------------------- empty results
def test_a_dataset_of_zero_entries_has_the_processors_empty_result(tmp_path):
    fileset = tmp_path / "empty.json"
    fileset.write_text(json.dumps({"Empty": {"files": {str(SAMPLES / "nano_dy_empty.root"): "Events"}}}))
    out, rep = tmp_path / "out.coffea", tmp_path / "rep.json"
    r = cli("run", ANALYSES / "dimuon.py", "--datasets", fileset, "-o", out, "--report", rep, "--quiet",
            "--workers", "1", "--run-dir", tmp_path / "run")
    assert r.returncode == 0, r.stderr
    result = load(out)["Empty"]
    assert isinstance(result["mass"], hist.Hist) and result["mass"].sum(flow=True) == 0
    report = json.loads(rep.read_text())
    assert report["complete"] and report["datasets"]["Empty"]["events_expected"] == 0


def test_a_processor_returning_none_is_an_error_naming_it(tmp_path):
    def forgot_return(events):
        len(events)

    with pytest.raises(ddr.ProcessorError, match="returned None") as err:
        ddr.CoffeaDynamicDataReduction(str(DATASETS / "samples.json"), forgot_return, engine="local",
                                       workers=1).compute()
    assert "forgot_return" in str(err.value) and "return" in str(err.value)


def test_a_dataset_of_only_a_directory_is_incomplete_everywhere(tmp_path):
    folder = tmp_path / "not_a_file.root"
    folder.mkdir()
    fileset = tmp_path / "dir.json"
    fileset.write_text(json.dumps({"Dir": {"files": {str(folder): "Events"}},
                                   "DY": {"files": {str(SAMPLES / "nano_dy.root"): "Events"}}}))
    rep = tmp_path / "rep.json"
    r = cli("run", ANALYSES / "dimuon.py", "--datasets", fileset, "--report", rep, "--quiet", "--workers", "1",
            "--skip-bad-files", "--run-dir", tmp_path / "run")
    assert r.returncode == 1, r.stderr
    report = json.loads(rep.read_text())
    assert not report["complete"] and not report["datasets"]["Dir"]["complete"]
    assert report["datasets"]["Dir"]["events_expected"] is None  # never known: it could not be read
    assert report["datasets"]["DY"]["complete"]
    assert str(folder) in r.stderr or str(folder) in json.dumps(report["datasets"]["Dir"]["bad_files"])


# -------------------------------------------------------------- reduction errors
class _AxisByChunk:
    """Returns histograms whose binning depends on the chunk: they cannot be added."""

    def __call__(self, x):
        return {"mass": hist.Hist.new.Reg(10 + x, 0, 1, name="m").Double(), "n": 1}


def test_a_failing_merge_stops_once_and_names_the_key(tmp_path):
    job = ddr.DynamicDataReduction({"ds": {"n": 4}}, _AxisByChunk(), preprocess=_numbers, engine="local",
                                   workers=2, accumulation_size=2, run_dir=tmp_path / "run")
    with pytest.raises(ddr.ReducerError) as err:
        job.compute()
    assert "'mass'" in str(err.value) and "'ds'" in str(err.value), err.value
    with open(tmp_path / "run" / "transactions.jsonl") as f:
        merges = [json.loads(line) for line in f if '"category": "accumulating"' in line and '"state": "result"' in line]
    assert merges and all(m["attempts"] == 1 for m in merges), merges  # not retried: it cannot get better


def _manager_shy(a, b):
    if vinecore.current_worker() is None:  # on the manager (partial()), not in an accumulation task
        raise RuntimeError("this reducer only runs on workers")
    return {"n": a["n"] + b["n"]}


def test_a_partial_whose_merge_fails_on_the_manager_does_not_fail_the_run(tmp_path):
    gate = tmp_path / "gate"

    def held_back(x):
        if x >= 2:
            deadline = time.monotonic() + 120
            while not os.path.exists(gate) and time.monotonic() < deadline:
                time.sleep(0.02)
        return {"n": 1}

    handle = ddr.DynamicDataReduction({"ds": {"n": 6}}, held_back, preprocess=_numbers, reducer=_manager_shy,
                                      engine="local", workers=2, accumulation_size=4).submit()
    deadline = time.monotonic() + 120
    while sum(p.events_done for p in handle.progress) < 2:  # two partials held: partial() must merge them
        assert time.monotonic() < deadline and not handle.done()
        time.sleep(0.02)
    with pytest.raises(ddr.DDRError, match="merging the partial results on the manager failed"):
        handle.partial(timeout=60)
    assert not handle.done()
    gate.touch()
    assert handle.result(timeout=120) == {"ds": {"n": 6}}


# ------------------------------------------------------------------- resume
def test_resume_without_a_checkpoint_starts_afresh_and_says_so(tmp_path):
    out = tmp_path / "out.coffea"
    r = cli("run", ANALYSES / "dimuon.py", "--datasets", DATASETS / "samples.json", "-o", out, "--workers", "1",
            "--quiet", "--run-dir", tmp_path / "new-run", "--resume")
    assert r.returncode == 0, r.stderr
    assert "no checkpoint" in r.stderr and "starting afresh" in r.stderr
    assert set(load(out)) == set(ddr.load_fileset(DATASETS / "samples.json"))


# ------------------------------------------------------------------ backoff
class _Transient:
    """Fails its first ``n`` calls (over all workers) with a transient bad-input error."""

    def __init__(self, counter, n):
        self.counter, self.n = counter, n

    def __call__(self, x):
        with open(self.counter, "a+") as f:
            f.seek(0)
            seen = len(f.read().splitlines())
            f.write("x\n")
        if seen < self.n:
            raise ddr.BadInputError("ds", "remote.root", "Events", 0, 1, "OSError: connection reset", False)
        return {"n": 1}


def test_the_driver_sleeps_through_retry_backoff_instead_of_spinning(tmp_path):
    counter = tmp_path / "calls"
    job = ddr.DynamicDataReduction({"ds": {"n": 1}}, _Transient(str(counter), 2), preprocess=_numbers,
                                   engine="sync")
    cpu0, wall0 = time.process_time(), time.monotonic()
    assert job.compute() == {"ds": {"n": 1}}
    cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
    assert wall >= 2.5  # the backoffs (0.5 s then 2 s) were waited for ...
    assert cpu < wall / 2, (cpu, wall)  # ... asleep: a busy loop burns as much CPU as it waits


# --------------------------------------------------------- the sync engine
def _inspect(path_out):
    seen = {}
    printer = threading.Thread(target=lambda: print("printed by another thread"))
    printer.start()
    printer.join()
    print("printed by the task")
    seen["rlimit"] = resource.getrlimit(resource.RLIMIT_AS)
    seen["cwd"] = os.getcwd()
    seen["exit"] = os._exit is _REAL_EXIT
    return seen


_REAL_EXIT = os._exit


def test_the_sync_engine_leaves_the_callers_process_alone(tmp_path, capsys):
    limit, cwd = resource.getrlimit(resource.RLIMIT_AS), os.getcwd()
    with vinecore.Manager(engine="sync", run_dir=tmp_path / "m") as m:
        t = vinecore.PythonTask(_inspect, str(tmp_path))
        t.set_memory(100)
        t.set_time_max(60)
        m.submit(t)
        assert m.wait(60) is t and t.successful, t.output
    assert t.output == {"rlimit": limit, "cwd": cwd, "exit": True}
    assert "printed by the task" in t.std_output and "another thread" not in t.std_output
    assert "printed by another thread" in capsys.readouterr().out
    assert resource.getrlimit(resource.RLIMIT_AS) == limit


def _needs_a_missing_module(x):
    import ddr_surely_not_installed_anywhere  # noqa: F401

    return {"n": 1}


def test_a_module_missing_on_the_workers_stops_at_once_even_with_keep_going():
    job = ddr.DynamicDataReduction({"ds": {"n": 20}}, _needs_a_missing_module, preprocess=_numbers,
                                   engine="local", workers=2, keep_going=True)
    with pytest.raises(ddr.exceptions.WorkerSetupError, match="cannot import ddr_surely_not_installed") as err:
        job.compute()
    assert "pip install" in str(err.value)
    assert job.report["datasets"]["ds"]["chunks_done"] == 0 and job.report["status"] == "failed"


# ------------------------------------------------- generic items split and retry too
def _ranges(spec):
    yield (0, spec["n"]), spec["n"]  # one item: a range of "units" of 1 MB each


def _halve(item, size):
    a, b = item
    mid = (a + b) // 2
    return [((a, mid), mid - a), ((mid, b), b - mid)]


def _hungry(item):
    import numpy as np

    a, b = item
    block = np.ones((b - a) * 131_072)  # 1 MB per unit
    return {"units": int(block.size // 131_072), "items": 1}


def test_a_generic_item_that_exhausts_memory_is_split_with_its_splitter(tmp_path):
    job = ddr.DynamicDataReduction({"ds": {"n": 400}}, _hungry, preprocess=_ranges, splitter=_halve,
                                   engine="local", workers=2, memory=150, run_dir=tmp_path / "run")
    out = job.compute()
    assert out["ds"]["units"] == 400 and out["ds"]["items"] >= 4  # 400 -> 200 -> 100 (or smaller)
    rep = job.report["datasets"]["ds"]
    assert rep["complete"] and rep["events_processed"] == 400 and len(rep["splits"]) >= 3
    assert all(s["reason"] == "resource exhaustion" for s in rep["splits"])
