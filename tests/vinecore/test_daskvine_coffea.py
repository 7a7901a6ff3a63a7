"""coffea's dask mode on DaskVine: ``apply_to_fileset`` + ``dask.compute(..., scheduler=m.get)``.

The graph coffea builds (dask-awkward NanoEvents per chunk, ``hist.dask``
histograms, dask-awkward reductions) runs on the local engine and must equal
dask's synchronous scheduler on the same graph. Needs dask-awkward and
dask-histogram (``pip install -e '.[test,dask-awkward]'``); skipped without them.
"""

import json
import sys

import cloudpickle
import pytest

pytest.importorskip("dask_awkward")
pytest.importorskip("dask_histogram")

import awkward as ak  # noqa: E402
import dask  # noqa: E402
import dask_awkward as dak  # noqa: E402
import hist.dask as hda  # noqa: E402
from coffea import processor  # noqa: E402
from coffea.dataset_tools import apply_to_fileset, preprocess  # noqa: E402
from coffea.nanoevents import NanoAODSchema  # noqa: E402

import vinecore  # noqa: E402
from tests.conftest import DATASETS  # noqa: E402
from tests.vinecore._daskvine_cases import assert_clean  # noqa: E402

pytestmark = [pytest.mark.dask_awkward, pytest.mark.slow, pytest.mark.filterwarnings("ignore")]
cloudpickle.register_pickle_by_value(sys.modules[__name__])


class MuonPt(processor.ProcessorABC):
    """A processor written for coffea's dask mode."""

    def process(self, events):
        muons = events.Muon[events.Muon.pt > 5]
        h = hda.Hist.new.Reg(40, 0, 200, name="pt").Double()
        h.fill(pt=dak.flatten(muons.pt))
        return {"events": ak.num(events, axis=0), "muons": dak.sum(ak.num(muons, axis=1)), "pt": h}

    def postprocess(self, accumulator):
        return accumulator


@pytest.fixture(scope="module")
def fileset():
    spec = json.loads((DATASETS / "samples.json").read_text())
    names = ["DoubleMuon2018", "DYJetsToLL"]
    files = {n: {"files": {str(DATASETS / f): t for f, t in spec[n]["files"].items()}} for n in names}
    available, _ = preprocess(files, step_size=20_000, save_form=False, scheduler="sync")
    return available


def test_apply_to_fileset_equals_the_synchronous_scheduler(fileset):
    graph = apply_to_fileset(MuonPt(), fileset, schemaclass=NanoAODSchema)
    (want,) = dask.compute(graph, scheduler="sync")
    with vinecore.DaskVine(engine="local", workers=2) as m:
        (got,) = dask.compute(graph, scheduler=m.get)
        assert_clean(m)
        assert m.last_get.nodes > len(fileset)
    assert sorted(got) == sorted(want)
    for ds in want:
        assert got[ds]["events"] == want[ds]["events"] > 0
        assert got[ds]["muons"] == want[ds]["muons"]
        assert got[ds]["pt"] == want[ds]["pt"]
