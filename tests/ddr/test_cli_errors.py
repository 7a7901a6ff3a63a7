"""CLI errors: clear messages that name the thing, and a non-zero exit."""

import json
import subprocess
import sys

import pytest

from tests.conftest import ANALYSES, DATASETS

pytestmark = pytest.mark.slow


def ddr(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "ddr.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=240, cwd=cwd)


def test_missing_input_file_is_named():
    r = ddr("run", ANALYSES / "dimuon.py", "--datasets", DATASETS / "bad/missing_file.json", "--quiet")
    assert r.returncode == 2
    assert "does_not_exist.root" in r.stderr and "DoubleMuon2018" in r.stderr and "--skip-bad-files" in r.stderr


def test_missing_file_skipped_with_flag(tmp_path):
    rep = tmp_path / "r.json"
    r = ddr("run", ANALYSES / "dimuon.py", "--datasets", DATASETS / "bad/missing_file.json", "--quiet",
            "--skip-bad-files", "--report", rep, "--workers", "1")
    assert r.returncode == 1, r.stderr  # finished, but incomplete
    d = json.loads(rep.read_text())["datasets"]["DoubleMuon2018"]
    assert not d["complete"] and d["events_processed"] == 40
    assert [b["file"].endswith("does_not_exist.root") for b in d["bad_files"]] == [True]


def test_bad_json(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"ds": {"files": ["a.root",]}}')
    r = ddr("run", ANALYSES / "dimuon.py", "--datasets", bad, "--quiet")
    assert r.returncode == 2 and "not valid JSON" in r.stderr and "line 1" in r.stderr


def test_analysis_without_processor(tmp_path):
    a = tmp_path / "empty_analysis.py"
    a.write_text("import numpy\nTHRESHOLD = 3\ndef helper(x):\n    return x\n")
    r = ddr("run", a, "--datasets", DATASETS / "samples.json", "--quiet")
    assert r.returncode == 2
    assert "defines no processor" in r.stderr and "THRESHOLD" in r.stderr and "helper" in r.stderr


def test_wrong_tree_name_lists_existing_trees():
    r = ddr("run", ANALYSES / "dimuon.py", "--datasets", DATASETS / "bad/wrong_tree.json", "--quiet", "--workers", "1")
    assert r.returncode == 1
    assert "Evnts" in r.stderr and "Events" in r.stderr and "nano_dimuon.root" in r.stderr


def test_schema_rejected_file_named_and_skippable(tmp_path):
    r = ddr("run", ANALYSES / "dimuon.py", "--datasets", DATASETS / "bad/schema_rejected.json", "--quiet",
            "--workers", "1")
    assert r.returncode == 1
    assert "missing_luminosityBlock.root" in r.stderr and "schema rejected" in r.stderr
    rep = tmp_path / "r.json"
    r = ddr("run", ANALYSES / "dimuon.py", "--datasets", DATASETS / "bad/schema_rejected.json", "--quiet",
            "--workers", "1", "--skip-bad-files", "--report", rep)
    assert r.returncode == 1
    d = json.loads(rep.read_text())["datasets"]["Mixed"]
    assert d["events_processed"] == 40 and d["events_expected"] == 42
    assert [c["file"].endswith("missing_luminosityBlock.root") for c in d["failed_chunks"]] == [True]
    assert d["failed_chunks"][0]["start"] == 0 and d["failed_chunks"][0]["stop"] == 2


def test_unknown_schema():
    r = ddr("run", ANALYSES / "dimuon.py", "--datasets", DATASETS / "samples.json", "--schema", "Nano", "--quiet")
    assert r.returncode == 2 and "unknown schema" in r.stderr and "PHYSLITE" in r.stderr


def test_preprocess_writes_coffea_dialect_that_run_accepts(tmp_path):
    out = tmp_path / "pre.json"
    r = ddr("preprocess", DATASETS / "samples.json", "-o", out, "--step-size", "300", "--workers", "2")
    assert r.returncode == 0, r.stderr
    data = json.loads(out.read_text())
    entry = data["EGamma2023"]["files"]
    (path, spec), = entry.items()
    assert spec["num_entries"] == 1000 and spec["steps"] == [[0, 300], [300, 600], [600, 900], [900, 1000]]
    assert spec["object_path"] == "Events" and len(spec["uuid"]) == 36
    from coffea.dataset_tools import max_chunks  # coffea itself accepts the dialect

    assert max_chunks({"EGamma2023": {"files": {path: spec}}}, 2)["EGamma2023"]["files"][path]["steps"] == [[0, 300], [300, 600]]
    rep = tmp_path / "r.json"
    r = ddr("run", ANALYSES / "dimuon.py", "--datasets", out, "--quiet", "--workers", "1", "--report", rep)
    assert r.returncode == 0, r.stderr
    assert json.loads(rep.read_text())["datasets"]["EGamma2023"]["chunks_done"] == 4
