"""Driving a run through its handle: live partial results, result(), cancel(), warm re-runs."""

import sys
import time

import cloudpickle
import hist
import importlib.util
import pytest

import ddr
import vinecore
from analyses.dimuon import DimuonProcessor
from tests.conftest import DATASETS

pytestmark = pytest.mark.slow

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this test module


class SlowDimuon(DimuonProcessor):
    def process(self, events):
        time.sleep(0.15)
        return super().process(events)


@pytest.fixture(scope="module")
def fileset(tmp_path_factory):
    spec = importlib.util.spec_from_file_location("ddr_datasets_generate", DATASETS / "generate.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return str(module.generate(tmp_path_factory.mktemp("data"), files=1, events_per_file=240_000, chunk=80_000,
                               seed=3))


@pytest.fixture(scope="module")
def manager(tmp_path_factory):
    with vinecore.Manager(engine="local", workers=2, run_dir=tmp_path_factory.mktemp("run")) as m:
        yield m


def _same(a, b):
    if isinstance(a, dict):
        assert set(a) == set(b)
        for k in a:
            _same(a[k], b[k])
    elif isinstance(a, hist.Hist):
        assert a == b
    else:
        assert a == b


@pytest.mark.timeout(240)
def test_partials_grow_and_result_equals_compute(fileset, manager):
    job = ddr.CoffeaDynamicDataReduction(fileset, SlowDimuon(), manager=manager, chunk_size=8000,
                                         accumulation_size=4)
    handle = job.submit()
    seen = []
    while not handle.done():
        snap = handle.partial(timeout=60)
        value, fraction = snap["Synthetic"]
        events = 0 if value is None else value["cutflow"]["Synthetic/all"]
        seen.append((events, fraction))
        time.sleep(0.2)
    result = handle.result(timeout=60)
    assert [e for e, _ in seen] == sorted(e for e, _ in seen), f"partial results went backwards: {seen}"
    assert all(abs(f - e / 240_000) < 1e-9 for e, f in seen), seen  # the fraction matches the events inside
    assert any(0 < e < 240_000 for e, _ in seen), f"no partial result was seen mid-run: {seen}"
    progress = {p.dataset: p for p in handle.progress}
    assert progress["Synthetic"].events_done == progress["Synthetic"].events_total == 240_000
    assert progress["Synthetic"].finished
    blocking = ddr.CoffeaDynamicDataReduction(fileset, DimuonProcessor(), manager=manager,
                                              chunk_size=60_000).compute()
    _same(result, blocking)
    assert result["Synthetic"]["cutflow"]["Synthetic/all"] == 240_000
    final, fraction = handle.partial()["Synthetic"]
    assert fraction == 1.0 and final["cutflow"] == result["Synthetic"]["cutflow"]


@pytest.mark.timeout(240)
def test_cancel_stops_promptly_and_the_engine_stays_usable(fileset, manager):
    job = ddr.CoffeaDynamicDataReduction(fileset, SlowDimuon(), manager=manager, chunk_size=2000)
    handle = job.submit()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        p = {x.dataset: x for x in handle.progress}.get("Synthetic")
        if p is not None and p.events_done > 0:
            break
        time.sleep(0.05)
    handle.cancel(timeout=60)
    assert handle.done()
    assert handle.result(timeout=1) is None  # cancelled: no result passed off as complete
    assert job.report is not None and not job.report["complete"]
    assert job.report["datasets"]["Synthetic"]["events_processed"] < 240_000
    assert manager.empty()
    # the same warm workers run the next reduction correctly
    again = ddr.CoffeaDynamicDataReduction(fileset, DimuonProcessor(), manager=manager, chunk_size=60_000).compute()
    assert again["Synthetic"]["cutflow"]["Synthetic/all"] == 240_000
