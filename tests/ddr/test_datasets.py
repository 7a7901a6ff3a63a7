"""Fileset loading: coffea's dialects, path resolution, and errors that name the place and the fix."""

import json
import os
import pickle

import pytest
from coffea.dataset_tools import DataGroupSpec

from ddr._datasets import Dataset, FileSpec, fileset_to_json, load_fileset, write_fileset
from ddr.exceptions import DatasetNotFound, FilesetError
from tests.conftest import DATASETS, SAMPLES

DIMUON = str(SAMPLES / "nano_dimuon.root")


def write(tmp_path, data, name="fileset.json"):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


# ------------------------------------------------------------------ dialects
def test_raw_dialect_resolves_against_the_json_folder_and_keeps_metadata():
    datasets = load_fileset(DATASETS / "samples.json")
    assert list(datasets) == ["DoubleMuon2018", "DYJetsToLL", "EGamma2023", "TTbar"]
    ds = datasets["DoubleMuon2018"]
    assert ds.files == (FileSpec(DIMUON, "Events"),)
    assert ds.metadata == {"is_mc": False, "year": "2018", "run": 315267, "dataset": "DoubleMuon2018"}
    assert ds.num_entries is None  # not counted yet


def test_list_dialect_uses_the_default_tree():
    datasets = load_fileset(DATASETS / "samples_list.json", default_tree="Events")
    for ds in datasets.values():
        assert all(f.tree == "Events" and os.path.isabs(f.path) and os.path.exists(f.path) for f in ds.files)
        assert ds.metadata == {"dataset": ds.name}


def test_preprocessed_dialect_keeps_steps_counts_and_uuid():
    datasets = load_fileset(DATASETS / "samples_preprocessed.json")
    f = datasets["DoubleMuon2018"].files[0]
    assert f == FileSpec(DIMUON, "Events", 40, "a210a3f8-3648-11ea-a29f-f5b55c90beef", ((0, 14), (14, 28), (28, 40)))
    assert {n: d.num_entries for n, d in datasets.items()} == {
        "DoubleMuon2018": 40, "DYJetsToLL": 40, "EGamma2023": 1000, "TTbar": 200}


def test_dict_source_wrapped_form_treename_and_base_dir(tmp_path):
    data = {"datasets": {
        "a": {"files": ["x.root", "sub/../y.root"], "treename": "T", "metadata": {"k": 1}},
        "b": {"files": {"root://host//store/z.root": None, "https://h/w.root": "W"}},
        "c": {"files": {"file:///abs/v.root": {"object_path": "V", "num_entries": 5}},
              "format": "root", "did": "x:y", "compressed_form": "..."},
    }}
    out = load_fileset(data, base_dir=tmp_path)
    assert out["a"].files == (FileSpec(str(tmp_path / "x.root"), "T"), FileSpec(str(tmp_path / "y.root"), "T"))
    assert out["a"].metadata == {"k": 1, "dataset": "a"}
    assert out["b"].files == (FileSpec("root://host//store/z.root", "Events"), FileSpec("https://h/w.root", "W"))
    assert out["c"].files == (FileSpec("file:///abs/v.root", "V", 5),)  # counts without steps: ddr cuts the file
    assert out["c"].num_entries == 5


def test_dict_source_defaults_to_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_fileset({"d": ["~/f.root", "g.root"]})["d"].files == (
        FileSpec(os.path.expanduser("~/f.root"), "Events"), FileSpec(str(tmp_path / "g.root"), "Events"))


def test_a_dataset_named_datasets_is_not_a_wrapper(tmp_path):
    out = load_fileset({"datasets": {"files": ["a.root"]}}, base_dir=tmp_path)
    assert list(out) == ["datasets"]


def test_empty_file_steps_and_zero_counts_are_valid(tmp_path):
    out = load_fileset({"e": {"files": {
        "a.root": {"object_path": "Events", "steps": [[0, 0]], "num_entries": 0, "uuid": "u"},
        "b.root": {"object_path": "Events", "steps": [], "num_entries": 0},
        "c.root": {"object_path": "Events", "steps": [[5, 9], [0, 5]]},  # unsorted but covering: fine
    }}}, base_dir=tmp_path)
    a, b, c = out["e"].files
    assert (a.num_entries, a.steps, b.num_entries, b.steps) == (0, ((0, 0),), 0, ())
    assert (c.num_entries, c.steps) == (9, ((0, 5), (5, 9)))


def test_loaded_datasets_pickle():
    datasets = load_fileset(DATASETS / "samples_preprocessed.json")
    assert pickle.loads(pickle.dumps(datasets)) == datasets


# --------------------------------------------------------------- round trip
def test_write_then_load_round_trips_and_coffea_accepts_it(tmp_path):
    datasets = load_fileset(DATASETS / "samples_preprocessed.json")
    out = tmp_path / "nested" / "copy.json"
    out.parent.mkdir()
    write_fileset(datasets, out)
    text = json.loads(out.read_text())
    assert text["DoubleMuon2018"]["files"] == {os.path.relpath(DIMUON, out.parent): {
        "object_path": "Events", "steps": [[0, 14], [14, 28], [28, 40]], "num_entries": 40,
        "uuid": "a210a3f8-3648-11ea-a29f-f5b55c90beef"}}
    assert "dataset" not in text["DoubleMuon2018"]["metadata"]
    assert load_fileset(out) == datasets
    absolute = fileset_to_json(datasets)
    assert DataGroupSpec.model_validate(absolute).num_entries == 1280  # coffea's own model of the dialect


def test_uncounted_files_are_written_in_the_raw_dialect(tmp_path):
    ds = {"d": Dataset("d", (FileSpec("/x/a.root", "T"), FileSpec("root://h//b.root", "T", 7)), {"dataset": "d"})}
    assert fileset_to_json(ds, relative_to="/x") == {"d": {"files": {
        "a.root": "T", "root://h//b.root": {"object_path": "T", "num_entries": 7, "uuid": None}}, "metadata": {}}}


def test_datasets_pass_through():
    ds = {"d": Dataset("d", (FileSpec("/a.root", "T"),), {"dataset": "d"})}
    assert load_fileset(ds) == ds


# -------------------------------------------------------------------- errors
def error_of(source, **kwargs):
    with pytest.raises(FilesetError) as info:
        load_fileset(source, **kwargs)
    return info.value, str(info.value)


def test_missing_json_lists_the_json_files_nearby(tmp_path):
    write(tmp_path, {"d": ["a.root"]}, "samples.json")
    err, msg = error_of(tmp_path / "sample.json")
    assert "sample.json" in msg and "does not exist" in msg and "'samples.json'" in msg
    assert isinstance(err, ValueError)


def test_json_syntax_error_shows_line_column_and_caret(tmp_path):
    path = write(tmp_path, '{\n  "d": ["a.root",]\n}\n')
    _, msg = error_of(path)
    assert "not valid JSON: Expecting value at line 2, column 18" in msg and '  "d": ["a.root",]' in msg and "^" in msg
    assert "trailing commas" in msg


def test_duplicate_json_keys_are_refused(tmp_path):
    _, msg = error_of(write(tmp_path, '{"d": {"files": {"a.root": "Events", "a.root": "Other"}}}'))
    assert "'a.root' appears twice" in msg


@pytest.mark.parametrize("data, words", [
    ([], ["top level must be an object", "got list"]),
    ({}, ["has no datasets"]),
    ({"d": []}, ["dataset 'd'", "has no files"]),
    ({"d": {"files": {}}}, ["dataset 'd'", "key 'files'", "has no files"]),
    ({"d": {"metadata": {}}}, ["dataset 'd'", "has no \"files\""]),
    ({"d": 3}, ["dataset 'd'", "expected a list of files"]),
    ({"d": {"files": "a.root"}}, ["key 'files'", "must be a list"]),
    ({"d": [3]}, ["file paths must be non-empty strings"]),
    ({"d": {"files": ["a.root"], "tree": "Events"}}, ["key 'tree'", "did you mean 'treename'"]),
    ({"d": {"files": ["a.root"], "format": "parquet"}}, ["format 'parquet' is not supported"]),
    ({"d": {"files": ["a.root"], "metadata": [1]}}, ["key 'metadata'", "must be an object"]),
    ({"d": {"files": {"a.root": 3}}}, ["file 'a.root'", "expected a tree name"]),
    ({"d": {"files": {"a.root": ""}}}, ["file 'a.root'", "non-empty string"]),
    ({"d": {"files": {"a.root": {"objectpath": "E"}}}}, ["key 'objectpath'", "did you mean 'object_path'"]),
    ({"d": {"files": {"a.root": {"num_entries": -1}}}}, ["key 'num_entries'", "non-negative"]),
    ({"d": {"files": {"a.root": {"num_entries": True}}}}, ["key 'num_entries'"]),
    ({"d": {"files": {"a.root": {"uuid": 5}}}}, ["key 'uuid'", "string"]),
    ({"d": {"files": {"a.root": {"steps": [[0, 5], [4, 9]]}}}}, ["overlaps", "counted twice"]),
    ({"d": {"files": {"a.root": {"steps": [[0, 12]], "num_entries": 9}}}}, ["end at 12 but num_entries is 9"]),
    ({"d": {"files": {"a.root": {"steps": [[0, -5]]}}}}, ["not a valid range"]),
    ({"d": {"files": {"a.root": {"steps": [[0, 1, 2]]}}}}, ["[start, stop] pair"]),
    ({"d": {"files": {"a.root": {"steps": [], "num_entries": 3}}}}, ["steps is empty"]),
    ({"d": ["a.root", "./a.root"]}, ["listed twice", "counted twice"]),
])
def test_structural_errors_name_the_dataset_key_and_fix(tmp_path, data, words):
    path = write(tmp_path, data)
    _, msg = error_of(path)
    assert str(path) in msg, msg
    assert "fix:" in msg, msg
    for w in words:
        assert w in msg, (w, msg)


def test_dict_sources_are_named_too():
    err, msg = error_of({"d": {"files": {"a.root": {"steps": [[0, 5], [4, 9]]}}}})
    assert msg.startswith("fileset <dict>, dataset 'd', file 'a.root', key 'steps'")
    assert (err.dataset, err.file, err.key) == ("d", "a.root", "steps")
    assert "ddr preprocess" in err.fix


def test_errors_pickle_with_their_attributes():
    err, msg = error_of({"d": []})
    again = pickle.loads(pickle.dumps(err))
    assert str(again) == msg and again.dataset == "d" and isinstance(again, ValueError)


def test_dataset_not_found_lists_nearest_names_first():
    err = DatasetNotFound("DYJets", ["TTbar", "DoubleMuon2018", "DYJetsToLL", "EGamma2023"], source="samples.json")
    msg = str(err)
    assert isinstance(err, KeyError)
    assert msg.splitlines()[0] == "dataset 'DYJets' not found in samples.json"
    assert "available (nearest first): 'DYJetsToLL', " in msg
    assert str(pickle.loads(pickle.dumps(err))) == msg


def test_steps_may_select_part_of_a_file(tmp_path):
    """coffea's preprocessed dialect may list only some entry ranges (e.g. a failed-chunks fileset)."""
    from ddr._datasets import load_fileset

    path = write(tmp_path, {"d": {"files": {"a.root": {"object_path": "Events", "steps": [[6, 9], [0, 5]],
                                                       "num_entries": 12}}}})
    f = load_fileset(path)["d"].files[0]
    assert f.steps == ((0, 5), (6, 9)) and f.num_entries == 12 and f.events == 8
