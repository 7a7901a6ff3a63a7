"""Young and full garbage collections are rarer only while a run's loop runs, and the thresholds come back on every way out."""

import gc
import threading

import pytest

import ddr
from ddr._gcpolicy import FULL_COLLECTION_FACTOR, YOUNG_COLLECTION_FACTOR, fewer_collections


RAISED = (700 * YOUNG_COLLECTION_FACTOR, 10, 10 * FULL_COLLECTION_FACTOR)


@pytest.fixture
def thresholds():
    before = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    yield (700, 10, 10)
    gc.set_threshold(*before)


def test_raised_inside_and_restored_after(thresholds):
    with fewer_collections():
        assert gc.get_threshold() == RAISED
    assert gc.get_threshold() == thresholds


def test_restored_when_the_block_raises(thresholds):
    with pytest.raises(KeyError):
        with fewer_collections():
            raise KeyError("boom")
    assert gc.get_threshold() == thresholds


def test_overlapping_runs_share_one_raise(thresholds):
    """Two loops in two threads, the first ending before the second: raised once, restored by the last."""
    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()
    seen = {}

    def first():
        with fewer_collections():
            first_in.set()
            second_in.wait(10)
        first_out.set()

    def second():
        first_in.wait(10)
        with fewer_collections():
            second_in.set()
            first_out.wait(10)
            seen["after first ended"] = gc.get_threshold()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert seen["after first ended"] == RAISED
    assert gc.get_threshold() == thresholds


def test_a_change_made_during_the_run_is_kept(thresholds):
    with fewer_collections():
        gc.set_threshold(1000, 20, 30)
    assert gc.get_threshold() == (1000, 20, 30)


def _items(spec):
    return ((i, 1) for i in range(spec["n"]))


def _double(x):
    return {"sum": 2 * x}


def _fail_on_three(x):
    if x == 3:
        raise ValueError("item 3 is bad")
    return {"sum": x}


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["sync", "local"])
def test_a_run_raises_them_while_it_runs_and_restores_them(thresholds, engine):
    seen = []
    run = ddr.DynamicDataReduction({"d": {"n": 20}}, _double, preprocess=_items, engine=engine, workers=2)
    out = run.compute(progress=lambda snaps: seen.append(gc.get_threshold()), progress_interval=0.01)
    assert out["d"] == {"sum": 2 * sum(range(20))}
    # progress callbacks run in the loop, but the last one, after it (with the final report)
    assert seen[:-1] and set(seen[:-1]) == {RAISED}
    assert gc.get_threshold() == thresholds
    with pytest.raises(ddr.ProcessorError, match="item 3 is bad"):
        ddr.DynamicDataReduction({"d": {"n": 20}}, _fail_on_three, preprocess=_items, engine=engine,
                                 workers=2).compute()
    assert gc.get_threshold() == thresholds
