"""The fileset JSONs in datasets/: they parse, point at real files and agree with the files."""

import json
import pathlib
import warnings

import pytest
import uproot
from coffea import processor
from coffea.dataset_tools import DataGroupSpec
from coffea.nanoevents import NanoAODSchema

from tests.conftest import DATASETS

ALL_JSONS = sorted(DATASETS.glob("*.json")) + sorted((DATASETS / "bad").glob("*.json"))
EXPECTED = {"DoubleMuon2018": 40, "DYJetsToLL": 40, "EGamma2023": 1000, "TTbar": 200}


def load(path):
    return json.loads(pathlib.Path(path).read_text())


def file_entries(path):
    """(absolute path, tree) for every file of a fileset JSON, any dialect."""
    base = pathlib.Path(path).parent
    out = []
    for spec in load(path).values():
        if isinstance(spec, list):
            out += [((base / p).resolve(), "Events") for p in spec]
            continue
        for p, v in spec["files"].items():
            tree = v if isinstance(v, str) else v["object_path"]
            out.append(((base / p).resolve(), tree))
    return out


def test_the_expected_jsons_exist():
    names = {p.relative_to(DATASETS).as_posix() for p in ALL_JSONS}
    assert {"samples.json", "samples_list.json", "samples_preprocessed.json", "physlite.json",
            "bad/missing_file.json", "bad/schema_rejected.json", "bad/wrong_tree.json",
            "bad/empty_file.json"} <= names


@pytest.mark.parametrize("path", ALL_JSONS, ids=lambda p: p.relative_to(DATASETS).as_posix())
def test_json_parses_and_paths_are_relative_and_exist(path):
    data = load(path)
    assert data and all(isinstance(k, str) for k in data)
    raw_paths = [p for spec in data.values() for p in (spec if isinstance(spec, list) else spec["files"])]
    assert raw_paths and not any(pathlib.PurePath(p).is_absolute() for p in raw_paths)
    for file, tree in file_entries(path):
        if file.name == "does_not_exist.root":
            assert path.name == "missing_file.json" and not file.exists()
            continue
        assert file.exists(), file
        with uproot.open(file) as f:
            if path.name == "wrong_tree.json":
                assert tree not in f
            else:
                assert tree in f


def test_main_fileset_datasets_and_metadata_are_truthful():
    data = load(DATASETS / "samples.json")
    assert set(data) == set(EXPECTED)
    for name, spec in data.items():
        (path, tree), = spec["files"].items()
        with uproot.open(DATASETS / path) as f:
            t = f[tree]
            assert t.num_entries == EXPECTED[name]
            is_mc = "genWeight" in t
            assert spec["metadata"]["is_mc"] is is_mc, name
            if not is_mc:
                runs = set(t["run"].array(library="np").tolist())
                assert runs == {spec["metadata"]["run"]}
                assert spec["metadata"]["year"] == name[-4:]


def test_preprocessed_matches_files():
    path = DATASETS / "samples_preprocessed.json"
    data = load(path)
    assert set(data) == set(EXPECTED)
    absolute = {ds: {**spec, "files": {str((DATASETS / p).resolve()): v for p, v in spec["files"].items()}}
                for ds, spec in data.items()}
    assert DataGroupSpec.model_validate(absolute).num_entries == sum(EXPECTED.values())  # coffea's own model
    for ds, spec in data.items():
        assert spec["metadata"] == load(DATASETS / "samples.json")[ds]["metadata"]
        for p, v in spec["files"].items():
            with uproot.open(DATASETS / p) as f:
                assert str(f.file.uuid) == v["uuid"]
                assert f[v["object_path"]].num_entries == v["num_entries"] == EXPECTED[ds]
            steps = v["steps"]
            assert 2 <= len(steps) <= 3
            assert steps[0][0] == 0 and steps[-1][1] == v["num_entries"]
            assert all(a[1] == b[0] for a, b in zip(steps, steps[1:]))


def test_list_dialect_names_known_files():
    data = load(DATASETS / "samples_list.json")
    raw = load(DATASETS / "samples.json")
    for ds, files in data.items():
        assert isinstance(files, list) and files
        assert set(files) <= set(raw[ds]["files"])


class _Count(processor.ProcessorABC):
    def process(self, events):
        return {events.metadata["dataset"]: len(events)}

    def postprocess(self, accumulator):
        return accumulator


@pytest.mark.slow
@pytest.mark.parametrize("name", ["samples.json", "samples_list.json", "samples_preprocessed.json"])
def test_coffea_runner_accepts_the_filesets(name):
    data = load(DATASETS / name)
    fileset = {}
    for ds, spec in data.items():
        if isinstance(spec, list):
            fileset[ds] = [str((DATASETS / p).resolve()) for p in spec]
        else:
            fileset[ds] = {**spec, "files": {str((DATASETS / p).resolve()): v for p, v in spec["files"].items()}}
    runner = processor.Runner(executor=processor.IterativeExecutor(), schema=NanoAODSchema, chunksize=100_000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = runner(fileset, _Count(), treename="Events")
    assert out == {ds: EXPECTED[ds] for ds in data}
