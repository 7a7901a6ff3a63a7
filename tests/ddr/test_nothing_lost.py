"""Nothing finished is thrown away (issue 14): every way out of ``ddr run`` writes what there is.

All runs use the real ``ddr`` command on the local engine. Runs that must be stopped at a known point
use a processor that blocks (on chunks past the first of a file) until the test creates a gate file:
no test here depends on timing.
"""

import json
import os
import pickle
import signal
import subprocess
import sys
import time

import pytest
from coffea.util import load

from tests._helpers import assert_same
from tests.conftest import ANALYSES, SAMPLES

pytestmark = pytest.mark.slow

DIMUON = (ANALYSES / "dimuon.py").read_text()

FRAGILE = '''
import os as _os
import time as _time


class Fragile(DimuonProcessor):
    """Raises on DY's last chunk (entries 30-40) while $DDR_TEST_BROKEN exists; that chunk first waits
    for $DDR_TEST_GATE, so that the test decides when the error happens (the other worker stays free)."""

    def process(self, events):
        meta = events.metadata
        if meta["dataset"] == "DY" and meta["entrystart"] >= 30:
            while not _os.path.exists(_os.environ["DDR_TEST_GATE"]):
                _time.sleep(0.02)
            if _os.path.exists(_os.environ["DDR_TEST_BROKEN"]):
                raise ValueError(f"bad chunk {meta['entrystart']}-{meta['entrystop']}")
        return super().process(events)
'''


def ddr(*args, env=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "ddr.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env)


def _until(condition, what, timeout=120.0, proc=None):
    deadline = time.monotonic() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the run ended before {what}: {proc.communicate()}")
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout} s"
        time.sleep(0.02)


def _checkpoint(path):
    try:
        with open(path, "rb") as f:
            return pickle.load(f)
    except (OSError, EOFError, pickle.UnpicklingError):
        return None


@pytest.fixture
def setup(tmp_path):
    analysis = tmp_path / "fragile.py"
    analysis.write_text(DIMUON + "\n\n" + FRAGILE)
    fileset = tmp_path / "fileset.json"  # entries known up front: chunks are cut in dataset order
    fileset.write_text(json.dumps({
        "Muons": {"files": {str(SAMPLES / "nano_dimuon.root"): {"object_path": "Events", "num_entries": 40}}},
        "DY": {"files": {str(SAMPLES / "nano_dy.root"): {"object_path": "Events", "num_entries": 40}}},
    }))
    gate, broken = tmp_path / "gate", tmp_path / "broken"
    env = {**os.environ, "DDR_TEST_GATE": str(gate), "DDR_TEST_BROKEN": str(broken),
           # the printed redo command starts with `ddr`: the one installed beside this interpreter, even
           # when the tests run as `.venv/bin/python -m pytest` without activating the environment
           "PATH": os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])}
    common = [analysis, "--processor", "Fragile", "--datasets", fileset, "--workers", "2", "--chunk-size", "10",
              "--quiet"]
    gate.touch()
    clean = ddr("run", *common, "-o", tmp_path / "clean.coffea", "--run-dir", tmp_path / "run-clean", env=env)
    assert clean.returncode == 0, clean.stderr
    gate.unlink()
    return dict(tmp=tmp_path, common=common, env=env, gate=gate, broken=broken, analysis=analysis,
                clean=load(tmp_path / "clean.coffea"))


def test_a_processor_error_keeps_the_finished_dataset_and_writes_everything(setup):
    s, tmp = setup, setup["tmp"]
    s["broken"].touch()
    run_dir = tmp / "run"
    args = [*s["common"], "-o", tmp / "out.coffea", "--report", tmp / "rep.json", "--run-dir", run_dir,
            "--checkpoint-every", "0"]
    proc = subprocess.Popen([sys.executable, "-m", "ddr.cli", "run", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=s["env"])

    def muons_finished():
        doc = _checkpoint(run_dir / "checkpoint.pkl")
        return doc is not None and doc["datasets"]["Muons"]["finished"]

    _until(muons_finished, "the Muons dataset finishing", proc=proc)
    s["gate"].touch()  # now DY's late chunks raise
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    assert "the processor raised on dataset 'DY'" in err and "bad chunk" in err and "nano_dy.root" in err
    assert f'File "{s["analysis"]}", line' in err  # the remote traceback shows the analysis file
    out = load(tmp / "out.coffea")
    assert_same(out["Muons"], s["clean"]["Muons"])  # the finished dataset is written, equal to a clean run
    rep = json.loads((tmp / "rep.json").read_text())
    assert rep["status"] == "failed" and not rep["complete"]
    assert rep["datasets"]["Muons"]["complete"] and not rep["datasets"]["DY"]["complete"]
    dy = rep["datasets"]["DY"]
    assert dy["chunks_failed"] >= 1 and dy["failed_chunks"][0]["kind"] == "processor error"
    assert dy["events_processed"] == out["DY"]["cutflow"]["DY/all"] < 40  # what DY holds is written too
    failed = json.loads((run_dir / "failed.json").read_text())
    assert set(failed) == {"DY"}  # exactly what is missing: DY's entries not covered
    steps = failed["DY"]["files"][str(SAMPLES / "nano_dy.root")]["steps"]
    assert sum(b - a for a, b in steps) == 40 - dy["events_processed"]
    assert "--datasets" in err and "failed.json" in err and "ddr merge" in err  # what to do next


def test_keep_going_then_redo_and_merge_equals_a_clean_run(setup):
    s, tmp = setup, setup["tmp"]
    s["broken"].touch()
    s["gate"].touch()
    first = ddr("run", *s["common"], "--keep-going", "-o", tmp / "out.coffea", "--report", tmp / "out.json",
                "--run-dir", tmp / "run", env=s["env"])
    assert first.returncode == 1, first.stderr
    rep = json.loads((tmp / "out.json").read_text())
    assert rep["status"] == "finished" and rep["datasets"]["Muons"]["complete"]
    assert rep["datasets"]["DY"]["chunks_failed"] == 1 and rep["datasets"]["DY"]["events_processed"] == 30
    # the printed redo command runs as printed, once the processor is fixed
    redo_line = next(line.strip() for line in first.stderr.splitlines() if line.strip().startswith("ddr run"))
    s["broken"].unlink()
    redo = subprocess.run(redo_line, shell=True, capture_output=True, text=True, env=s["env"], timeout=300)
    assert redo.returncode == 0, (redo_line, redo.stderr)
    merge_line = next(line.strip() for line in first.stderr.splitlines() if line.strip().startswith("ddr merge"))
    merged = subprocess.run(merge_line, shell=True, capture_output=True, text=True, env=s["env"], timeout=300)
    assert merged.returncode == 0, (merge_line, merged.stderr)
    assert_same(load(tmp / "out-all.coffea"), s["clean"])


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_cleanly_and_resume_equals_a_clean_run(setup, sig):
    s, tmp = setup, setup["tmp"]
    run_dir = tmp / "run"
    args = [*s["common"], "-o", tmp / "out.coffea", "--report", tmp / "rep.json", "--run-dir", run_dir,
            "--checkpoint-every", "0"]
    proc = subprocess.Popen([sys.executable, "-m", "ddr.cli", "run", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=s["env"])

    def some_events_safe():
        doc = _checkpoint(run_dir / "checkpoint.pkl")
        return doc is not None and sum(d["events"] for d in doc["datasets"].values()) >= 40

    _until(some_events_safe, "a checkpoint with events", proc=proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, err
    rep = json.loads((tmp / "rep.json").read_text())
    assert rep["status"] == "interrupted" and not rep["complete"]
    assert (run_dir / "failed.json").exists() and "--resume" in err
    s["gate"].touch()
    resumed = ddr("run", *args, "--resume", env=s["env"])
    assert resumed.returncode == 0, resumed.stderr
    assert_same(load(tmp / "out.coffea"), s["clean"])
    rep = json.loads((tmp / "rep.json").read_text())
    assert rep["complete"] and sum(d["events_resumed"] for d in rep["datasets"].values()) >= 40


def test_an_unwritable_output_fails_before_any_chunk_runs(tmp_path):
    a_file = tmp_path / "plain.txt"
    a_file.write_text("x")
    for bad in (tmp_path, a_file / "out.coffea"):  # a directory; a folder that cannot exist
        t0 = time.monotonic()
        r = ddr("run", ANALYSES / "dimuon.py", "--datasets", SAMPLES.parent / "samples.json", "-o", bad,
                "--quiet", "--workers", "1", "--run-dir", tmp_path / "run")
        assert r.returncode == 2, r.stderr
        assert str(bad) in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert not (tmp_path / "run" / "transactions.jsonl").exists()  # no worker, no chunk
        assert time.monotonic() - t0 < 60


def test_a_full_disk_after_processing_keeps_the_result_and_says_how_to_recover(tmp_path):
    run_dir = tmp_path / "run"
    r = ddr("run", ANALYSES / "dimuon.py", "--datasets", SAMPLES.parent / "samples.json", "-o", "/dev/full",
            "--quiet", "--workers", "1", "--run-dir", run_dir)
    assert r.returncode == 1
    assert "disk is full" in r.stderr and "/dev/full" in r.stderr
    kept = run_dir / "result.coffea"
    assert f"cp {kept} /dev/full" in r.stderr
    assert set(load(kept)) == {"DoubleMuon2018", "DYJetsToLL", "EGamma2023", "TTbar"}
