"""Failures that are not the input file's fault are never reported as bad input (local engine).

* Out of memory, however it surfaces (a ``MemoryError``, a worker over its allocation, a thread whose
  stack cannot be mapped under ``--memory`` and that a reader wraps), is resource exhaustion: the chunk
  is split, and a chunk that does not fit even at the smallest size is a failed chunk of that kind,
  never "fix or remove the file", and ``--skip-bad-files`` does not list the good file as bad.
* A setup problem met while reading (a missing package, a full disk: a ``BadInputError`` of kind
  ``setup``, as ddr's reader raises it) stops the run as a ``WorkerSetupError``, even with
  ``--skip-bad-files``, and the file is not listed as bad.
"""

import errno
import json
import subprocess
import sys
import threading

import pytest

import ddr
from ddr import BadInputError, classify_input
from ddr.exceptions import ChunkResourceError, WorkerSetupError
from tests.conftest import ANALYSES, SAMPLES


def cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "ddr.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.slow
def test_a_tiny_memory_on_a_good_file_is_resource_exhaustion_not_a_bad_file(tmp_path):
    fileset = tmp_path / "dy.json"
    fileset.write_text(json.dumps({"DY": {"files": {str(SAMPLES / "nano_dy.root"): "Events"}}}))
    report = tmp_path / "report.json"
    r = cli("run", ANALYSES / "dimuon.py", "--datasets", fileset, "--quiet", "--workers", "1", "--memory", "2",
            "--chunk-size", "2", "--skip-bad-files", "--report", report, "--run-dir", tmp_path / "run")
    assert r.returncode == 1, r.stderr
    assert "resource exhaustion" in r.stderr and "--memory" in r.stderr
    assert "fix or remove" not in r.stderr and "bad input" not in r.stderr
    d = json.loads(report.read_text())["datasets"]["DY"]
    assert d["bad_files"] == []
    assert d["splits"] and all(s["reason"] == "resource exhaustion" for s in d["splits"])  # 2 events -> 1
    assert d["failed_chunks"] and all(f["kind"] == "resource exhaustion" and f["stop"] - f["start"] == 1
                                      for f in d["failed_chunks"])
    assert not d["complete"]


def _reads_with_a_thread(item):
    """Like uproot's first read, which starts fsspec's I/O thread, failing as a reader reports it."""
    old = threading.stack_size(4096 * 1024 * 1024)  # a 4 GiB stack cannot be mapped under the allocation
    try:
        t = threading.Thread(target=lambda: None)
        try:
            t.start()
        except RuntimeError as exc:
            raise OSError(f"cannot read item {item}") from exc
        t.join()
    finally:
        threading.stack_size(old)
    return {"n": 1}


def _numbers(spec):
    return ((i, 1) for i in range(spec["n"]))  # items of size 1: exhaustion at that size is final


@pytest.mark.slow
def test_a_thread_that_cannot_start_under_the_allocation_is_exhaustion_not_a_processor_error(tmp_path):
    job = ddr.DynamicDataReduction({"ds": {"n": 3}}, _reads_with_a_thread, preprocess=_numbers,
                                   engine="local", workers=1, memory=200, skip_bad_files=True,
                                   run_dir=tmp_path / "run")
    with pytest.raises(ChunkResourceError, match="resource exhaustion"):
        job.compute()
    rep = job.report["datasets"]["ds"]
    assert rep["bad_files"] == [] and rep["chunks_failed"] >= 1
    assert all(f["kind"] == "resource exhaustion" for f in rep["failed_chunks"])


def _setup_problem_while_reading(item):
    raise BadInputError("ds", "root://h.example//f.root", "Events", 0, 10,
                        "ModuleNotFoundError: No module named 'fsspec_xrootd'", True,
                        "pip install fsspec-xrootd where the workers run; this is not a problem of the file",
                        what="cannot open file: a package is missing (fsspec-xrootd)", kind="setup")


@pytest.mark.slow
def test_a_setup_error_met_reading_a_file_stops_the_run_even_when_skipping_bad_files(tmp_path):
    job = ddr.DynamicDataReduction({"ds": {"n": 4}}, _setup_problem_while_reading, preprocess=_numbers,
                                   engine="local", workers=1, skip_bad_files=True, run_dir=tmp_path / "run")
    with pytest.raises(WorkerSetupError, match="pip install fsspec-xrootd") as err:
        job.compute()
    assert "root://h.example//f.root" in str(err.value)
    rep = job.report["datasets"]["ds"]
    assert rep["bad_files"] == [] and not any(f["kind"] == "bad input" for f in rep["failed_chunks"])
    assert job.report["status"] == "failed"


@pytest.mark.parametrize("exc, kind", [
    (OSError(errno.ENOSPC, "No space left on device"), "setup"),
    (OSError(errno.EDQUOT, "Disk quota exceeded"), "setup"),
    (ModuleNotFoundError("No module named 'fsspec_xrootd'", name="fsspec_xrootd"), "setup"),
    (OSError(errno.ENOMEM, "Cannot allocate memory"), "resource"),
    (MemoryError(), "resource"),
], ids=["ENOSPC", "EDQUOT", "ImportError", "ENOMEM", "MemoryError"])
def test_classification_of_errors_that_are_not_the_files_fault(exc, kind):
    f = classify_input(exc, "/data/f.root")
    assert f.kind.value == kind
    assert "fix or remove" not in f.hint
