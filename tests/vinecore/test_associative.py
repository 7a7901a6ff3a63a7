"""The @associative marker and the pure reduction planner (vinecore/_associative.py): no workers."""

import math
import operator
import random

import pytest
from dask._task_spec import Alias, DataNode, List, Task, TaskRef, convert_legacy_task

import vinecore
from vinecore._associative import (
    Algebra,
    Reducer,
    algebra_from_annotation,
    algebra_of,
    reduction_inputs,
    static_tree,
)


def concat(*xs):
    out = []
    for x in xs:
        out.extend(x)
    return out


def simulate(n, k, commutative, seed=0, batch=1):
    """Run a Reducer the way a run would: inputs arrive in a shuffled order, calls finish in random
    order; evaluate every call with ``concat`` and return (final value, reducer)."""
    rng = random.Random(seed)
    r = Reducer(n, k, commutative)
    values = {}
    arrivals = list(range(n))
    rng.shuffle(arrivals)
    running = []
    final = None
    while arrivals or running:
        if arrivals and (not running or rng.random() < 0.6):
            for _ in range(batch):
                if arrivals:
                    running.extend(r.item_ready(arrivals.pop()))
            continue
        call = running.pop(rng.randrange(len(running)))
        value = concat(*(([i] if kind == "item" else values[i]) for kind, i in call.operands))
        assert 2 <= len(call.operands) <= k
        values[call.id] = value
        if call.final:
            final = value
        running.extend(r.call_done(call.id))
    assert r.done
    return final, r


@pytest.mark.parametrize("n,k", [(9, 8), (64, 8), (65, 8), (100, 3), (5000, 8), (17, 2)])
def test_order_keeping_tree_has_log_depth_and_keeps_input_order(n, k):
    final, r = simulate(n, k, commutative=False, seed=n)
    assert final == list(range(n))  # order kept whatever the completion order
    shape = r.shape()
    assert shape.depth == math.ceil(math.log(n, k) - 1e-9)
    assert shape.max_fan_in <= k and shape.min_fan_in >= 2
    assert shape.calls == len(static_tree(n, k)) == r.expected_calls()


@pytest.mark.parametrize("n,k,batch", [(9, 8, 1), (100, 8, 1), (5000, 8, 3), (50, 2, 1), (1000, 16, 7)])
def test_commutative_reduction_groups_in_completion_order(n, k, batch):
    final, r = simulate(n, k, commutative=True, seed=n + k, batch=batch)
    assert sorted(final) == list(range(n))  # every input exactly once
    shape = r.shape()
    assert shape.max_fan_in <= k and shape.min_fan_in >= 2
    assert shape.calls == r.expected_calls() == math.ceil((n - 1) / (k - 1))


def test_commutative_reduction_holds_at_most_k_minus_one_waiting_operands():
    r = Reducer(1000, 8, commutative=True)
    waiting = 0
    for i in range(1000):
        calls = r.item_ready(i)
        waiting += 1 - sum(len(c.operands) for c in calls)
        assert waiting <= 7
        for c in calls:  # finish at once: the partial joins the pool
            waiting += 1 - sum(len(x.operands) for x in r.call_done(c.id))
            assert waiting <= 7
    assert r.done


def test_first_partial_starts_with_the_kth_input():
    r = Reducer(20, 4, commutative=True)
    assert [r.item_ready(i) for i in (7, 3, 11)] == [[], [], []]
    (call,) = r.item_ready(0)
    assert call.operands == (("item", 7), ("item", 3), ("item", 11), ("item", 0)) and not call.final
    ordered = Reducer(20, 4, commutative=False)
    assert ordered.item_ready(7) == [] and ordered.item_ready(1) == [] and ordered.item_ready(2) == []
    (c,) = ordered.item_ready(0) or ordered.item_ready(3)
    assert c.operands == tuple(("item", i) for i in range(4))


def test_static_tree_lone_operand_moves_up():
    calls = static_tree(9, 8)
    assert calls == [tuple(("item", i) for i in range(8)), (("call", 0), ("item", 8))]
    with pytest.raises(ValueError, match="needs no tree"):
        static_tree(8, 8)
    with pytest.raises(ValueError, match="at least 2"):
        Reducer(10, 1, True)


def test_reducer_refuses_misreports():
    r = Reducer(10, 4, commutative=False)
    r.item_ready(0)
    with pytest.raises(ValueError, match="twice"):
        r.item_ready(0)
    with pytest.raises(IndexError):
        r.item_ready(10)
    with pytest.raises(ValueError, match="not started"):
        r.call_done(0)


# ------------------------------------------------------------------ marking

def test_decorator_forms_and_builtins():
    @vinecore.associative
    def a(*xs):
        return xs

    @vinecore.associative(commutative=True)
    def c(*xs):
        return xs

    assert algebra_of(a) == Algebra(False) and algebra_of(c) == Algebra(True)
    s = vinecore.associative(sum, commutative=True)
    assert s is not sum and s([1, 2, 3]) == 6 and algebra_of(s) == Algebra(True) and s.__name__ == "sum"
    assert algebra_of(sum) is None and algebra_of(operator.add) is None
    with pytest.raises(TypeError, match="marks a function"):
        vinecore.associative(3)


def test_annotation_values():
    assert algebra_from_annotation(True, "k") == Algebra(False)
    assert algebra_from_annotation("commutative", "k") == Algebra(True)
    assert algebra_from_annotation(False, "k") is None
    with pytest.raises(ValueError, match="dask.annotate\\(associative='commutative'\\)"):
        algebra_from_annotation("yes", "dask key 'x'")


# --------------------------------------------------------- what gets reduced

def test_reduction_inputs_of_task_spec_forms():
    refs = [TaskRef(f"e{i}") for i in range(3)]
    items, container = reduction_inputs(Task("m", concat, *refs))
    assert container is None and [i.key for i in items] == ["e0", "e1", "e2"]
    items, container = reduction_inputs(Task("s", sum, List(*refs)))
    assert container is list and len(items) == 3
    legacy = convert_legacy_task("s", (sum, ["e0", "e1", "e2"]), {"e0", "e1", "e2"})
    items, container = reduction_inputs(legacy)
    assert container is list and [i.dependencies for i in items] == [{"e0"}, {"e1"}, {"e2"}]
    items, container = reduction_inputs(Task("t", sum, (1, 2, 3)))
    assert container is tuple and items == (1, 2, 3)
    assert reduction_inputs(DataNode("d", 3)) == "it is not a function call"
    assert reduction_inputs(Alias("a", "b")) == "it is not a function call"
    assert reduction_inputs(Task("k", concat, *refs, start=TaskRef("z"))) == \
        "its keyword arguments depend on other keys"
