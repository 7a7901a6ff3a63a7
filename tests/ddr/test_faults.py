"""Nothing lost: truncated files, memory-hog chunks split until they fit, growing chunk sizes,
bad user code, and a ``ddr run`` killed with SIGKILL then resumed from its checkpoint.

Every test that completes a dataset checks that the report's processed events equal the
fileset's total, and compares histograms with a clean run bin for bin.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from coffea.util import load

from tests._helpers import assert_same, gated_dimuon, generate
from tests.conftest import ANALYSES, DATASETS, SAMPLES

pytestmark = pytest.mark.slow

DIMUON = (ANALYSES / "dimuon.py").read_text()


def ddr(*args, cwd=None, timeout=300, env=None):
    return subprocess.run([sys.executable, "-m", "ddr.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=env)


def _analysis(tmp_path, name, body):
    """The dimuon analysis plus a subclass; the file is shipped to the workers by value."""
    path = tmp_path / f"{name}.py"
    path.write_text(DIMUON + "\n\n" + body)
    return path


# ----------------------------------------------------------- bad input files
@pytest.fixture
def truncated(tmp_path):
    data = (SAMPLES / "nano_dy.root").read_bytes()
    bad = tmp_path / "nano_dy_truncated.root"
    bad.write_bytes(data[: len(data) // 2])
    fileset = tmp_path / "truncated.json"
    fileset.write_text(json.dumps({"DY": {"files": {str(bad): "Events", str(SAMPLES / "nano_dimuon.root"): "Events"}}}))
    return fileset, bad


def test_truncated_file_stops_the_run_with_its_name(truncated, tmp_path):
    fileset, bad = truncated
    r = ddr("run", ANALYSES / "dimuon.py", "--datasets", fileset, "--quiet", "--workers", "1",
            "--run-dir", tmp_path / "run")
    assert r.returncode == 1
    assert str(bad) in r.stderr and "truncated" in r.stderr and "Events" in r.stderr
    assert "--skip-bad-files" in r.stderr  # the fix is suggested


def test_truncated_file_skipped_and_reported(truncated, tmp_path):
    fileset, bad = truncated
    rep = tmp_path / "r.json"
    r = ddr("run", ANALYSES / "dimuon.py", "--datasets", fileset, "--quiet", "--workers", "1",
            "--skip-bad-files", "--report", rep, "-o", tmp_path / "out.coffea", "--run-dir", tmp_path / "run")
    assert r.returncode == 1, r.stderr  # finished, but incomplete
    assert "incomplete datasets: DY" in r.stderr
    d = json.loads(rep.read_text())["datasets"]["DY"]
    assert not d["complete"]
    assert d["events_processed"] == 40  # all of nano_dimuon.root, nothing of the truncated file
    assert [b["file"] for b in d["bad_files"]] == [str(bad)]
    assert "truncated" in d["bad_files"][0]["error"]
    out = load(tmp_path / "out.coffea")
    assert out["DY"]["cutflow"]["DY/all"] == 40

    # the failed input is written as a fileset; once the file is repaired, redoing it completes the dataset
    failed = json.loads((tmp_path / "r.json").read_text())["failed_fileset"]
    assert failed in r.stderr
    assert json.loads(open(failed).read()) == {"DY": {"files": {str(bad): "Events"}}}
    shutil.copyfile(SAMPLES / "nano_dy.root", bad)
    redo = ddr("run", ANALYSES / "dimuon.py", "--datasets", failed, "--quiet", "--workers", "1",
               "-o", tmp_path / "redo.coffea", "--report", tmp_path / "redo.json", "--run-dir", tmp_path / "run2")
    assert redo.returncode == 0, redo.stderr
    clean = ddr("run", ANALYSES / "dimuon.py", "--datasets", fileset, "--quiet", "--workers", "1",
                "-o", tmp_path / "clean.coffea", "--run-dir", tmp_path / "run3")
    assert clean.returncode == 0, clean.stderr
    from coffea.processor import accumulate

    assert_same(load(tmp_path / "clean.coffea"), accumulate([out, load(tmp_path / "redo.coffea")]))
    assert json.loads((tmp_path / "redo.json").read_text())["datasets"]["DY"]["events_processed"] == 40


def test_failed_chunks_become_steps_of_a_fileset_that_runs(tmp_path):
    """A chunk that fails (here: the schema rejects the file's content) is written as steps."""
    rep = tmp_path / "r.json"
    r = ddr("run", ANALYSES / "dimuon.py", "--datasets", DATASETS / "bad/schema_rejected.json", "--quiet",
            "--workers", "1", "--skip-bad-files", "--report", rep, "--failed-fileset", tmp_path / "f.json",
            "--chunk-size", "1", "--initial-chunk-size", "1", "--run-dir", tmp_path / "run")
    assert r.returncode == 1
    failed = json.loads((tmp_path / "f.json").read_text())
    (path, entry), = failed["Mixed"]["files"].items()
    assert path.endswith("missing_luminosityBlock.root")
    assert entry == {"object_path": "Events", "steps": [[0, 2]]}  # two 1-event chunks, merged
    again = ddr("run", ANALYSES / "dimuon.py", "--datasets", tmp_path / "f.json", "--quiet", "--workers", "1",
                "--skip-bad-files", "--report", tmp_path / "again.json", "--run-dir", tmp_path / "run2")
    assert again.returncode == 1  # still rejected, and still named
    d = json.loads((tmp_path / "again.json").read_text())["datasets"]["Mixed"]
    assert d["events_expected"] == 2 and d["events_processed"] == 0


# ------------------------------------------------------ memory-hog chunks
HOG = '''
import numpy as _np


class HogDimuon(DimuonProcessor):
    """Needs 8 MB per event: chunks over ~35 events exceed a 300 MB allocation."""

    def process(self, events):
        block = _np.ones(len(events) * 1_000_000)  # 8 MB per event, touched
        block[::4096] = 2.0
        del block
        return super().process(events)
'''


def test_memory_hog_chunk_is_split_until_it_fits(tmp_path):
    analysis = _analysis(tmp_path, "hog", HOG)
    common = ["--datasets", DATASETS / "samples.json", "--quiet", "--workers", "2", "--chunk-size", "200",
              "--initial-chunk-size", "200"]
    clean = ddr("run", ANALYSES / "dimuon.py", *common, "-o", tmp_path / "clean.coffea",
                "--report", tmp_path / "clean.json", "--run-dir", tmp_path / "run-clean")
    assert clean.returncode == 0, clean.stderr
    r = ddr("run", analysis, "--processor", "HogDimuon", *common, "--memory", "300", "-o", tmp_path / "hog.coffea",
            "--report", tmp_path / "hog.json", "--run-dir", tmp_path / "run-hog")
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "hog.json").read_text())
    tt = report["datasets"]["TTbar"]
    assert tt["complete"] and tt["events_processed"] == tt["events_expected"] == 200
    # 200 events -> 100 -> 50 -> 25: three levels of halving, every split recorded
    assert len(tt["splits"]) >= 3 and all(s["reason"] == "resource exhaustion" for s in tt["splits"])
    sizes = sorted(s["stop"] - s["start"] for s in tt["splits"])
    assert sizes[0] <= 50 and sizes[-1] == 200
    eg = report["datasets"]["EGamma2023"]
    assert eg["complete"] and eg["events_processed"] == 1000 and len(eg["splits"]) >= 5
    for ds, d in report["datasets"].items():
        assert d["complete"] and d["events_processed"] == d["events_expected"], ds
    assert_same(load(tmp_path / "clean.coffea"), load(tmp_path / "hog.coffea"))


# ----------------------------------------------------- adaptive chunk sizes
def test_chunk_sizes_grow_from_the_initial_size(tmp_path):
    fileset = generate(tmp_path / "data", files=1, events_per_file=400_000, chunk=100_000, seed=5)
    rep = tmp_path / "r.json"
    r = ddr("run", ANALYSES / "dimuon.py", "--datasets", fileset, "--quiet", "--workers", "2",
            "--initial-chunk-size", "2000", "--target-seconds", "2", "--report", rep, "--run-dir", tmp_path / "run")
    assert r.returncode == 0, r.stderr
    d = json.loads(rep.read_text())["datasets"]["Synthetic"]
    assert d["complete"] and d["events_processed"] == 400_000
    sizes = d["chunk_sizes"]
    assert sizes["first"][0] == 2000 and sizes["min"] <= 2000
    assert sizes["max"] >= 8 * 2000, sizes  # grew toward the 2 s target
    assert sizes["count"] < 400_000 // 2000  # far fewer chunks than at the initial size


# --------------------------------------------------------- bad user code
RAISES = '''

class Broken(DimuonProcessor):
    def process(self, events):
        if len(events) and events.metadata["dataset"] == "TTbar":
            raise ZeroDivisionError("cut value is zero in my_selection")
        return super().process(events)
'''

UNPICKLABLE = '''
import threading as _threading


class HoldsALock(DimuonProcessor):
    def __init__(self):
        self.lock = _threading.Lock()
'''


def test_processor_error_names_chunk_and_shows_remote_traceback(tmp_path):
    analysis = _analysis(tmp_path, "broken", RAISES)
    r = ddr("run", analysis, "--processor", "Broken", "--datasets", DATASETS / "samples.json", "--quiet",
            "--workers", "1", "--run-dir", tmp_path / "run")
    assert r.returncode == 1
    err = r.stderr
    assert "ZeroDivisionError" in err and "cut value is zero" in err
    assert "nano_tt_v12.root" in err and "TTbar" in err and "entries: 0-200" in err  # file, dataset, range
    assert "remote traceback" in err and "in process" in err  # down to the processor's frame


@pytest.mark.timeout(120)
def test_unpicklable_processor_fails_at_submit(tmp_path):
    analysis = _analysis(tmp_path, "lock", UNPICKLABLE)
    r = ddr("run", analysis, "--processor", "HoldsALock", "--datasets", DATASETS / "samples.json", "--quiet",
            "--workers", "1", "--run-dir", tmp_path / "run", timeout=100)
    assert r.returncode != 0
    assert "HoldsALock" in r.stderr and "pickle" in r.stderr and "lock" in r.stderr.lower(), r.stderr


# ------------------------------------------------------------------ resume
def _checkpointed_events(path):
    import cloudpickle

    try:
        with open(path, "rb") as f:
            doc = cloudpickle.load(f)
    except (OSError, EOFError):
        return 0
    return sum(d["events"] for d in doc["datasets"].values())


def test_sigkill_then_resume_gives_the_clean_output(tmp_path):
    fileset = generate(tmp_path / "data", files=2, events_per_file=200_000, chunk=100_000, seed=11)
    analysis = gated_dimuon(tmp_path / "gated.py", first_gated=100_000)
    gate = tmp_path / "gate"
    env = {**os.environ, "DDR_TEST_GATE": str(gate)}
    common = [analysis, "--processor", "GatedDimuon", "--datasets", fileset, "--quiet", "--workers", "2",
              "--chunk-size", "10000", "--accumulation-size", "4"]
    gate.touch()
    clean = ddr("run", *common, "-o", tmp_path / "clean.coffea", "--report", tmp_path / "clean.json",
                "--run-dir", tmp_path / "run-clean", env=env)
    assert clean.returncode == 0, clean.stderr
    gate.unlink()  # from now on, chunks past 100k entries of each file block: the run cannot finish

    run_dir = tmp_path / "run"
    args = [*common, "-o", tmp_path / "out.coffea", "--report", tmp_path / "out.json", "--run-dir", run_dir,
            "--checkpoint-every", "0.5"]
    first = subprocess.Popen([sys.executable, "-m", "ddr.cli", "run", *map(str, args)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    checkpoint = run_dir / "checkpoint.pkl"
    deadline = time.monotonic() + 120
    while _checkpointed_events(checkpoint) < 40_000:  # some partial results are safe on disk
        assert first.poll() is None, first.communicate()
        assert time.monotonic() < deadline, "no checkpoint with 40k events within 120 s"
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.communicate(timeout=60)
    assert first.returncode == -signal.SIGKILL
    assert not (tmp_path / "out.coffea").exists()

    gate.touch()
    resumed = ddr("run", *args, "--resume", env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert_same(load(tmp_path / "clean.coffea"), load(tmp_path / "out.coffea"))
    d = json.loads((tmp_path / "out.json").read_text())["datasets"]["Synthetic"]
    assert d["complete"] and d["events_processed"] == d["events_expected"] == 400_000
    assert 0 < d["events_resumed"] < 400_000  # less than a full reprocessing
    assert d["chunks_done"] < 40  # this run processed only what the checkpoint lacked


def test_resume_refuses_another_runs_directory(tmp_path):
    run_dir = tmp_path / "run"
    ok = ddr("run", ANALYSES / "dimuon.py", "--datasets", DATASETS / "samples.json", "--quiet", "--workers", "1",
             "--run-dir", run_dir)
    assert ok.returncode == 0, ok.stderr
    other = ddr("run", ANALYSES / "jets.py", "--datasets", DATASETS / "samples.json", "--quiet", "--workers", "1",
                "--run-dir", run_dir, "--resume")
    assert other.returncode == 2 and "different run" in other.stderr
    again = ddr("run", ANALYSES / "dimuon.py", "--datasets", DATASETS / "samples.json", "--quiet", "--workers", "1",
                "--run-dir", run_dir, "--resume", "--report", tmp_path / "r.json")
    assert again.returncode == 0, again.stderr
    rep = json.loads((tmp_path / "r.json").read_text())
    assert all(d["events_resumed"] == d["events_expected"] == d["events_processed"] for d in rep["datasets"].values())


# ------------------------------------------------------------ transient read errors
def _flaky_source(counter, failures):
    """An uproot file source whose first ``failures`` reads (over all workers) fail like a dropped
    connection; ``counter`` is a file that gets one line per failure."""
    import os

    import uproot

    class FlakySource(uproot.source.file.MemmapSource):
        def chunks(self, ranges, notifications):
            with open(counter, "a+") as f:
                f.seek(0)
                if len(f.read().splitlines()) < failures:
                    f.write(f"{os.getpid()}\n")
                    raise ConnectionResetError(104, "Connection reset by peer while reading baskets")
            return super().chunks(ranges, notifications)

    return FlakySource


def test_transient_read_errors_are_retried_and_nothing_is_lost(tmp_path):
    import cloudpickle

    import ddr as ddr_api
    from analyses.dimuon import DimuonProcessor

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    path = str(SAMPLES / "nano_dy.root")
    fileset = {"DY": {"files": {path: {"object_path": "Events", "num_entries": 40}}}}
    counter = tmp_path / "failures.log"
    flaky = ddr_api.CoffeaDynamicDataReduction(
        fileset, DimuonProcessor(), engine="local", workers=2, chunk_size=10,
        uproot_options={"handler": _flaky_source(str(counter), 3)})
    out = flaky.compute()
    assert len(counter.read_text().splitlines()) == 3  # three reads failed ...
    rep = flaky.report["datasets"]["DY"]
    assert rep["complete"] and rep["events_processed"] == 40 and rep["failed_chunks"] == []  # ... and were redone
    clean = ddr_api.CoffeaDynamicDataReduction(fileset, DimuonProcessor(), engine="sync", chunk_size=10).compute()
    assert_same(out, clean)
