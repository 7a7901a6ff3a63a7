"""An analysis that imports modules beside it, and tracebacks that point at the user's files.

* ``from selections import ...`` (a module next to the analysis, which imports a
  package next to it in turn) works with ``ddr run`` on the local engine and on
  real ``dask scheduler``/``dask worker`` processes, whose path does not hold the
  analysis folder: the modules travel with the processor;
* the result equals coffea's own Runner on the same processor;
* a processor raising on a chunk shows ``File "/abs/path/analysis.py", line N,
  in process`` (and the sibling module's file and line) in the remote traceback,
  on both engines, even when the analysis was given by a relative path.
"""

import json
import subprocess
import sys

import pytest
from coffea import processor
from coffea.nanoevents import NanoAODSchema
from coffea.util import load

from ddr import load_fileset
from ddr._analysis import load_analysis, local_modules
from tests.conftest import SAMPLES

SELECTIONS = "ddr_test_selections"  # a name no worker could import from its own path

ANALYSIS = f'''\
import hist
from coffea import processor

import {SELECTIONS}
from {SELECTIONS} import with_two_muons


class PtProcessor(processor.ProcessorABC):
    def process(self, events):
        dataset = events.metadata["dataset"]
        selected = with_two_muons(events)
        h = hist.Hist.new.Reg(20, 0, 100, name="pt").Int64()
        h.fill(pt=selected.Muon.pt[:, 0])
        if dataset == "Exploding":
            {SELECTIONS}.explode(len(events))
        return {{"pt": h, "n": {{dataset: len(selected)}}}}

    def postprocess(self, accumulator):
        return accumulator
'''
RAISE_LINE = 1 + ANALYSIS.splitlines().index(f"            {SELECTIONS}.explode(len(events))")

SELECTIONS_SOURCE = '''\
import awkward as ak

from cutvalues.muons import MIN_MUONS


def with_two_muons(events):
    return events[ak.num(events.Muon) >= MIN_MUONS]


def explode(n):
    raise RuntimeError(f"selection exploded on {n} events")
'''
EXPLODE_LINE = 1 + SELECTIONS_SOURCE.splitlines().index('    raise RuntimeError(f"selection exploded on {n} events")')


def write_analysis(folder):
    folder.mkdir()
    (folder / "ana.py").write_text(ANALYSIS)
    (folder / f"{SELECTIONS}.py").write_text(SELECTIONS_SOURCE)
    (folder / "cutvalues").mkdir()
    (folder / "cutvalues" / "__init__.py").write_text("")
    (folder / "cutvalues" / "muons.py").write_text("MIN_MUONS = 2\n")
    return folder / "ana.py"


def ddr_run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "ddr.cli", "run", *map(str, args), "--quiet"],
                          capture_output=True, text=True, timeout=300, cwd=cwd)


def small_fileset(tmp_path):
    """Two of the shipped samples (40 and 200 events): enough chunks to accumulate, quick to open."""
    path = tmp_path / "small.json"
    path.write_text(json.dumps({"DoubleMuon2018": {"files": {str(SAMPLES / "nano_dimuon.root"): "Events"}},
                                "TTbar": {"files": {str(SAMPLES / "nano_tt_v12.root"): "Events"}}}))
    return path


def exploding_fileset(tmp_path):
    path = tmp_path / "exploding.json"
    path.write_text(json.dumps({"Exploding": {"files": {str(SAMPLES / "nano_dimuon.root"): "Events"}}}))
    return path


@pytest.fixture(autouse=True)
def _forget_analysis_modules():
    """load_analysis in this process puts the folder on sys.path and imports its modules: undo both."""
    path = list(sys.path)
    yield
    sys.path[:] = path
    for name in [n for n in sys.modules if n.startswith(("ddr_test_", "ddr_analysis_ana", "cutvalues"))]:
        del sys.modules[name]


def coffea_reference(analysis, fileset):
    """coffea's Runner, in this process (where the folder is importable)."""
    proc = next(iter(load_analysis(analysis).values()))
    fileset = {name: {"files": {f.path: f.tree for f in ds.files}} for name, ds in load_fileset(fileset).items()}
    runner = processor.Runner(executor=processor.IterativeExecutor(), schema=NanoAODSchema, chunksize=100)
    return runner(fileset, proc)


def assert_traceback_points_at_user_files(stderr, analysis):
    analysis = analysis.resolve()
    assert f'File "{analysis}", line {RAISE_LINE}, in process' in stderr, stderr
    sel = analysis.parent / f"{SELECTIONS}.py"
    assert f'File "{sel}", line {EXPLODE_LINE}, in explode' in stderr, stderr
    assert "<dynamic-code>" not in stderr and "selection exploded on 40 events" in stderr
    assert f"{SELECTIONS}.explode(len(events))" in stderr  # the source line is shown too


def check_output(path, analysis, fileset):
    ours = load(path)
    ref = coffea_reference(analysis, fileset)
    assert sorted(ours) == sorted(ref["n"])
    for ds, value in ours.items():
        assert value["n"] == {ds: ref["n"][ds]}
    total = ours[next(iter(ours))]["pt"]
    for value in list(ours.values())[1:]:
        total = total + value["pt"]
    assert total == ref["pt"]  # bin for bin


def test_local_modules_skip_installed_packages(tmp_path):
    """Modules beside the analysis are shipped; a virtual environment inside its folder is not."""
    folder = tmp_path / "proj"
    analysis = write_analysis(folder)
    venv_pkg = folder / ".venv" / "lib" / "site-packages"
    venv_pkg.mkdir(parents=True)
    (venv_pkg / "ddr_test_installed.py").write_text("def helper():\n    return 1\n")
    (analysis.parent / "ana.py").write_text(ANALYSIS + "\nfrom ddr_test_installed import helper\n")
    sys.path.insert(0, str(venv_pkg))
    module = sys.modules[type(next(iter(load_analysis(analysis).values()))).__module__]
    assert "ddr_test_installed" in sys.modules
    names = {m.__name__ for m in local_modules(module, str(folder), extra=list(sys.modules.values()))}
    assert names == {module.__name__, SELECTIONS, "cutvalues", "cutvalues.muons"}


@pytest.mark.slow
def test_sibling_modules_on_the_local_engine(tmp_path):
    analysis = write_analysis(tmp_path / "analysis")
    out = tmp_path / "out.coffea"
    fileset = small_fileset(tmp_path)
    r = ddr_run(analysis, "--datasets", fileset, "-o", out, "--workers", "2", "--chunk-size", "40",
                "--run-dir", tmp_path / "run")
    assert r.returncode == 0, r.stderr
    check_output(out, analysis, fileset)


@pytest.mark.slow
def test_remote_traceback_shows_the_analysis_file_and_line(tmp_path):
    write_analysis(tmp_path / "analysis")
    # a relative path on the command line: the traceback still shows the absolute one
    r = ddr_run("analysis/ana.py", "--datasets", exploding_fileset(tmp_path), "--workers", "1",
                "--run-dir", tmp_path / "run", cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    assert_traceback_points_at_user_files(r.stderr, tmp_path / "analysis" / "ana.py")


@pytest.mark.slow
@pytest.mark.distributed
def test_sibling_modules_and_tracebacks_on_dask_workers(tmp_path):
    from vinecore.testing import DaskProcesses

    analysis = write_analysis(tmp_path / "analysis")
    out = tmp_path / "out.coffea"
    fileset = small_fileset(tmp_path)
    with DaskProcesses(workers=1, directory=str(tmp_path / "cluster")) as cluster:
        ok = ddr_run(analysis, "--datasets", fileset, "-o", out, "--chunk-size", "40",
                     "--scheduler", cluster.address, "--run-dir", tmp_path / "run")
        boom = ddr_run(analysis, "--datasets", exploding_fileset(tmp_path), "--scheduler", cluster.address,
                       "--run-dir", tmp_path / "run2")
    assert ok.returncode == 0, ok.stderr
    check_output(out, analysis, fileset)
    assert boom.returncode == 1, boom.stderr
    assert_traceback_points_at_user_files(boom.stderr, analysis)
