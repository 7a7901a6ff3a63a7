"""``ddr merge`` and ``ddr.merge``: outputs of several runs, coverage checked by their reports.

End to end on the local engine: a run over a truncated copy of a generated file
(``--skip-bad-files``) leaves failed chunks; the file is repaired; the printed
redo command processes just those; ``ddr merge`` of the two equals a clean run
bin for bin, and the merged coverage is complete. Overlapping outputs are
refused with the dataset, file, entry range and reports named.
"""

import json
import shutil
import subprocess
import sys

import hist
import pytest
from coffea.util import load, save

import ddr
from ddr import MergeError, OverlapError
from ddr._merge import coverage_summary, merge_coverage
from tests._helpers import assert_same, generate
from tests.conftest import ANALYSES, SAMPLES


def report(**datasets):
    """A run report with only the per-file coverage: report(ds={path: (expected, covered)})."""
    return {"datasets": {ds: {"files": {path: {"tree": "Events", "expected": e, "covered": c}
                                        for path, (e, c) in files.items()}}
                         for ds, files in datasets.items()}}


def h(*values):
    out = hist.Hist.new.Reg(4, 0, 4, name="x").Int64()
    out.fill(x=list(values))
    return out


# -------------------------------------------------------------- coverage (pure)
def test_first_run_and_redo_cover_everything():
    first = report(DY={"a.root": ([[0, 4000]], [[0, 2000]]), "b.root": ([[0, 10]], [[0, 10]])},
                   TT={"t.root": (None, [])})  # a file no run could open: entries unknown
    redo = report(DY={"a.root": ([[2000, 4000]], [[2000, 4000]])}, TT={"t.root": ([[0, 50]], [[0, 50]])})
    merged = merge_coverage([("first.json", first), ("redo.json", redo)])
    assert merged["complete"] and merged["events_processed"] == 4060
    dy = merged["datasets"]["DY"]
    assert dy["files"]["a.root"]["expected"] == [[0, 4000]] and dy["files"]["a.root"]["covered"] == [[0, 4000]]
    assert (dy["events_expected"], dy["events_processed"]) == (4010, 4010)
    assert dy["events_by_report"] == {"first.json": 2010, "redo.json": 2000}
    assert merged["datasets"]["TT"]["complete"]
    # the merged coverage is a report in its own right: merging it again gives the same answer
    again = merge_coverage([("merged.json", merged)])
    assert again["complete"] and again["datasets"]["DY"]["files"] == {
        p: {k: f[k] for k in ("tree", "expected", "covered", "missing", "unexpected")}
        for p, f in dy["files"].items()}


def test_overlap_is_refused_naming_dataset_file_range_and_reports():
    first = report(DY={"a.root": ([[0, 4000]], [[0, 2000]])})
    again = report(DY={"a.root": ([[1000, 4000]], [[1500, 4000]])})
    with pytest.raises(OverlapError) as info:
        merge_coverage([("first.json", first), ("redo.json", again)])
    msg = str(info.value)
    assert "dataset 'DY', file a.root (tree Events): entries [1500, 2000) are covered by both first.json and " \
           "redo.json" in msg
    assert "twice" in msg


def test_incomplete_coverage_says_what_is_missing():
    first = report(DY={"a.root": ([[0, 4000]], [[0, 1000], [3000, 4000]])}, TT={"t.root": (None, [])})
    merged = merge_coverage([("first.json", first)])
    assert not merged["complete"]
    assert merged["datasets"]["DY"]["files"]["a.root"]["missing"] == [[1000, 3000]]
    assert merged["datasets"]["TT"]["events_expected"] is None
    lines = coverage_summary(merged)
    assert "DY  incomplete  2,000 of 4,000 events; a.root: missing entries [1000, 3000)" in lines[0]
    assert "TT  incomplete  0 of ? events; t.root: entries never counted" in lines[1]


def test_different_trees_for_one_file_are_refused():
    a = report(DY={"a.root": ([[0, 10]], [[0, 5]])})
    b = report(DY={"a.root": ([[0, 10]], [[5, 10]])})
    b["datasets"]["DY"]["files"]["a.root"]["tree"] = "Other"
    with pytest.raises(MergeError, match="different trees"):
        merge_coverage([("a.json", a), ("b.json", b)])


# ------------------------------------------------------------ merge() on values
def test_merge_values_with_accumulate_in_both_output_forms():
    first = {"DY": {"x": h(1, 2), "n": 2}, "TT": None}  # TT: nothing processed in the first run
    redo = {"TT": {"x": h(3), "n": 1}, "DY": {"x": h(2), "n": 1}}
    got = ddr.merge([first, redo])
    assert got.report is None and got.complete is None
    assert_same(got.output, {"DY": {"x": h(1, 2, 2), "n": 3}, "TT": {"x": h(3), "n": 1}})
    assert first["DY"]["n"] == 2 and first["DY"]["x"] == h(1, 2)  # inputs untouched

    by_proc = ddr.merge([{"p": first, "q": first}, {"p": redo, "q": redo}],
                        [report(DY={"a": ([[0, 3]], [[0, 2]])}, TT={"t": ([[0, 1]], [])}),
                         report(DY={"a": ([[0, 3]], [[2, 3]])}, TT={"t": ([[0, 1]], [[0, 1]])})])
    assert by_proc.complete
    assert_same(by_proc.output["q"], {"DY": {"x": h(1, 2, 2), "n": 3}, "TT": {"x": h(3), "n": 1}})


def test_report_must_describe_its_own_output():
    out = {"DY": {"x": h(1)}}
    with pytest.raises(MergeError, match="says dataset 'TT' covers 5 events, but output #1 has no result"):
        ddr.merge([out], [report(DY={"a": ([[0, 1]], [[0, 1]])}, TT={"t": ([[0, 5]], [[0, 5]])})])
    with pytest.raises(MergeError, match="holds 'DY', which its report report #1 does not list"):
        ddr.merge([out], [report(TT={"t": ([[0, 5]], [[0, 5]])})])
    with pytest.raises(MergeError, match="2 report"):
        ddr.merge([out], [report(), report()])
    with pytest.raises(MergeError, match="no per-file coverage"):
        ddr.merge([out], [{"datasets": {"DY": {"events_processed": 1}}}])


def test_incompatible_values_are_named():
    with pytest.raises(MergeError, match="cannot merge 'DY' of output #1, output #2"):
        ddr.merge([{"DY": {"x": h(1)}}, {"DY": {"x": "text"}}])


# ------------------------------------------------------------------ the command
def ddr_cmd(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "ddr.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.slow
def test_run_with_failed_chunks_then_redo_then_merge_equals_a_clean_run(tmp_path):
    data = tmp_path / "data"
    generate(data, files=1, events_per_file=4000, chunk=1000)
    good = data / "synthetic_0000.root"
    bad = tmp_path / "copy.root"  # the first 70%: opens, but its last two baskets cannot be read
    bad.write_bytes(good.read_bytes()[: int(good.stat().st_size * 0.7)])
    fileset = tmp_path / "fileset.json"
    fileset.write_text(json.dumps({"Synthetic": {"files": {str(bad): "Events"}},
                                   "DoubleMuon": {"files": {str(SAMPLES / "nano_dimuon.root"): "Events"}}}))
    common = [ANALYSES / "dimuon.py", "--quiet", "--workers", "2", "--chunk-size", "1000"]

    first = ddr_cmd("run", *common, "--datasets", fileset, "--skip-bad-files", "-o", tmp_path / "first.coffea",
                    "--report", tmp_path / "first.json", "--run-dir", tmp_path / "run1")
    assert first.returncode == 1, first.stderr
    rep = json.loads((tmp_path / "first.json").read_text())
    assert rep["datasets"]["Synthetic"]["files"][str(bad)] == {
        "tree": "Events", "expected": [[0, 4000]], "covered": [[0, 2000]]}
    failed = rep["failed_fileset"]

    shutil.copyfile(good, bad)  # the input is fixed
    redo = ddr_cmd("run", *common, "--datasets", failed, "-o", tmp_path / "redo.coffea",
                   "--report", tmp_path / "redo.json", "--run-dir", tmp_path / "run2")
    assert redo.returncode == 0, redo.stderr
    clean = ddr_cmd("run", *common, "--datasets", fileset, "-o", tmp_path / "clean.coffea",
                    "--run-dir", tmp_path / "run3")
    assert clean.returncode == 0, clean.stderr

    merged = ddr_cmd("merge", tmp_path / "first.coffea", tmp_path / "redo.coffea", "-o", tmp_path / "all.coffea",
                     "--reports", tmp_path / "first.json", tmp_path / "redo.json",
                     "--report-out", tmp_path / "merged.json")
    assert merged.returncode == 0, merged.stderr
    assert_same(load(tmp_path / "clean.coffea"), load(tmp_path / "all.coffea"))
    cov = json.loads((tmp_path / "merged.json").read_text())
    assert cov["complete"] and cov["output"] == str(tmp_path / "all.coffea")
    assert {ds: (d["events_processed"], d["events_expected"], d["complete"]) for ds, d in cov["datasets"].items()} \
        == {"Synthetic": (4000, 4000, True), "DoubleMuon": (40, 40, True)}
    assert "Synthetic   complete    4,000 of 4,000 events" in merged.stderr
    assert "every dataset is complete" in merged.stderr

    # the first run alone is incomplete: exit 1 and what is missing
    alone = ddr_cmd("merge", tmp_path / "first.coffea", "-o", tmp_path / "alone.coffea",
                    "--reports", tmp_path / "first.json")
    assert alone.returncode == 1, alone.stderr
    assert "copy.root: missing entries [2000, 4000)" in alone.stderr and "incomplete: Synthetic" in alone.stderr

    # the clean run and the redo both cover entries [2000, 4000): refused, nothing written
    overlap = ddr_cmd("merge", tmp_path / "all.coffea", tmp_path / "redo.coffea", "-o", tmp_path / "twice.coffea",
                      "--reports", tmp_path / "merged.json", tmp_path / "redo.json")
    assert overlap.returncode == 2
    assert f"dataset 'Synthetic', file {bad} (tree Events): entries [2000, 4000) are covered by both " \
           f"{tmp_path / 'merged.json'} and {tmp_path / 'redo.json'}" in overlap.stderr
    assert "Traceback" not in overlap.stderr and not (tmp_path / "twice.coffea").exists()


@pytest.mark.slow
def test_merge_usage_errors(tmp_path):
    out = tmp_path / "a.coffea"
    save({"DY": {"x": h(1)}}, out)
    cases = [
        (["merge", out, "-o", tmp_path / "m.coffea", "--report-out", tmp_path / "m.json"], "--report-out needs"),
        (["merge", out, "-o", tmp_path], "is a directory"),
        (["merge", out, "-o", tmp_path / "nope" / "m.coffea"], "does not exist"),
        (["merge", tmp_path / "missing.coffea", "-o", tmp_path / "m.coffea"], "missing.coffea' does not exist"),
        (["merge", out, out, "-o", tmp_path / "m.coffea", "--reports", tmp_path / "r.json"], "1 report(s) for 2"),
        (["merge", "-o", tmp_path / "m.coffea"], "the following arguments are required: OUT.coffea"),
    ]
    for args, expected in cases:
        r = ddr_cmd(*args)
        assert r.returncode == 2 and expected in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)
    ok = ddr_cmd("merge", out, out, "-o", tmp_path / "m.coffea")
    assert ok.returncode == 0 and "coverage not checked" in ok.stderr, ok.stderr
    assert_same(load(tmp_path / "m.coffea"), {"DY": {"x": h(1, 1)}})
