"""The default reducer follows coffea's accumulate: order-independent, never mutates its inputs."""

import copy
import functools
import importlib.util
import random
from collections import defaultdict

import hist
import numpy as np
import pytest
from coffea import processor

from ddr._extras import require
from ddr._reducers import accumulate_pair, reduce_all


def make_hist():
    return hist.Hist.new.Reg(20, 0, 100, name="pt").StrCat([], name="ds", growth=True).Weight()


def partial(seed, n=200):
    """A coffea-style output: histograms filled with integer weights, counters, sets, nested dicts."""
    rng = np.random.default_rng(seed)
    h = make_hist()
    pt = rng.exponential(30, n)
    h.fill(pt=pt, ds=rng.choice(["a", "b"], n), weight=rng.integers(1, 4, n))
    cutflow = defaultdict(int, {"all": n, "pt>20": int((pt > 20).sum())})
    return {"pt": h, "cutflow": cutflow, "runs": {int(seed) % 3}, "nested": {"sumw": float(n), "n": n},
            "acc": processor.value_accumulator(int, n)}


def same(a, b):
    """Bit-identical outputs, histograms included."""
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], hist.Hist):
            assert list(a[k].axes["ds"]) == list(b[k].axes["ds"])
            assert np.array_equal(a[k].values(flow=True), b[k].values(flow=True))
            assert np.array_equal(a[k].variances(flow=True), b[k].variances(flow=True))
        elif isinstance(a[k], processor.value_accumulator):
            assert a[k].value == b[k].value
        else:
            assert a[k] == b[k], k


def by_category(h: hist.Hist) -> dict:
    """Sums of weights and of squared weights per category: independent of the category order."""
    return {c: (h[{"ds": c}].values(flow=True).tolist(), h[{"ds": c}].variances(flow=True).tolist())
            for c in h.axes["ds"]}


def test_none_is_the_identity():
    x = partial(1)
    assert accumulate_pair(None, x) is x and accumulate_pair(x, None) is x
    assert accumulate_pair(None, None) is None


def test_merges_like_coffea_accumulate():
    a, b = partial(1), partial(2)
    out = accumulate_pair(a, b)
    expected = processor.accumulate([copy.deepcopy(a), copy.deepcopy(b)])
    same(out, expected)
    assert out["cutflow"]["all"] == 400 and isinstance(out["cutflow"], defaultdict)
    assert out["runs"] == {1, 2} and out["nested"] == {"sumw": 400.0, "n": 400}
    assert out["acc"].value == 400
    assert out["pt"].sum().value == a["pt"].sum().value + b["pt"].sum().value


def test_inputs_are_not_mutated_and_not_aliased():
    a, b = partial(1), partial(2)
    a0, b0 = copy.deepcopy(a), copy.deepcopy(b)
    out = accumulate_pair(a, b)
    same(a, a0)
    same(b, b0)
    out["pt"].fill(pt=[1.0], ds=["a"])
    out["cutflow"]["all"] += 1
    out["runs"].add(99)
    same(a, a0)
    same(b, b0)


def test_key_present_on_one_side_is_copied():
    b = {"y": {"z": {1}}}
    out = accumulate_pair({"x": 1}, b)
    out["y"]["z"].add(2)
    assert b == {"y": {"z": {1}}} and out == {"x": 1, "y": {"z": {1, 2}}}


def test_commutative_and_associative_on_dict_of_hist():
    a, b, c = partial(1), partial(2), partial(3)
    ab = accumulate_pair(a, b)
    ba = accumulate_pair(b, a)
    assert by_category(ab["pt"]) == by_category(ba["pt"])
    same({k: v for k, v in ab.items() if k != "pt"}, {k: v for k, v in ba.items() if k != "pt"})
    same(accumulate_pair(ab, c), accumulate_pair(a, accumulate_pair(b, c)))


def test_shuffled_orders_and_tree_shapes_give_bit_identical_histograms():
    parts = [partial(seed) for seed in range(24)]
    reference = reduce_all(parts)
    rng = random.Random(0)
    for _ in range(5):
        order = parts[:]
        rng.shuffle(order)
        for result in (reduce_all(order), functools.reduce(accumulate_pair, order)):
            assert by_category(result["pt"]) == by_category(reference["pt"])
            assert result["cutflow"] == reference["cutflow"] and result["runs"] == reference["runs"]
            assert result["acc"].value == reference["acc"].value == 24 * 200
    per_category = by_category(reference["pt"])
    assert sum(per_category["a"][0]) + sum(per_category["b"][0]) == reference["pt"].sum(flow=True).value


def test_sets_numbers_and_incompatible_types():
    assert accumulate_pair({1, 2}, {2, 3}) == {1, 2, 3}
    assert accumulate_pair(2, 3) == 5 and accumulate_pair(0.5, 0.25) == 0.75
    with pytest.raises(ValueError, match="incompatible"):
        accumulate_pair({"a": 1}, {1, 2})


def test_reduce_all_keeps_order_and_is_a_balanced_tree():
    calls = []

    def concat(a, b):
        calls.append((len(a), len(b)))
        return a + b

    for n in range(0, 40):
        calls.clear()
        items = [str(i % 10) for i in range(n)]
        assert reduce_all(iter(items), concat) == ("".join(items) if n else None)
        assert len(calls) == max(0, n - 1)
    calls.clear()
    reduce_all(["x"] * 64, concat)
    assert max(a + b for a, b in calls) == 64 and calls.count((1, 1)) == 32  # pairs first, then pairs of pairs


def test_reduce_all_defaults_to_accumulate_and_skips_none():
    assert reduce_all([None, {"n": 1}, None, {"n": 2}]) == {"n": 3}
    assert reduce_all([]) is None and reduce_all([None, None]) is None


def test_require_returns_the_module_or_says_how_to_install_it():
    assert require("json").dumps([1]) == "[1]"
    with pytest.raises(ImportError) as info:
        require("ddr_no_such_module.sub", extra="plot", purpose="plot results")
    msg = str(info.value)
    assert "ddr needs 'ddr_no_such_module' to plot results" in msg
    assert "pip install 'ddr-hep[plot]'" in msg and "pip install ddr_no_such_module" in msg


@pytest.mark.skipif(importlib.util.find_spec("ndcctools") is not None, reason="ndcctools is installed")
def test_require_points_conda_only_packages_to_conda():
    with pytest.raises(ImportError, match="conda install -c conda-forge ndcctools"):
        require("ndcctools.taskvine")
