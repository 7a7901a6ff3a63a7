"""The plan of a dask graph and the pure state of a run (vinecore/_graph.py, _graphrun.py): no workers."""

from operator import add

import pytest

import vinecore
from vinecore._graph import Resources, build_plan, repack
from vinecore._graphrun import GraphRun


def inc(x):
    return x + 1


@vinecore.associative
def cat(*xs):
    return sum(xs, [])


def drive(plan, *, budget=4, task_groups=True, sizes=None, workers=("w1", "w2")):
    """Run the state machine to the end, finishing jobs oldest first on alternating workers."""
    run = GraphRun(plan, task_groups=task_groups)
    inflight, released, submitted, done = [], [], [], set()
    turn = 0
    while not run.complete:
        jobs = run.next_jobs(budget + run.ahead_waiting - len(inflight))
        submitted += jobs
        inflight += jobs
        job = next(j for j in inflight if all(p in done for p in j.inputs))
        inflight.remove(job)
        done.add(job.id)
        turn += 1
        released += run.job_done(job.id, (sizes or {}).get(job.id, 10), workers[turn % len(workers)])
    return run, submitted, released


def test_culls_to_the_requested_keys_and_resolves_aliases_and_data():
    dsk = {"a": 1, "b": (inc, "a"), "c": (inc, "b"), "unused": (inc, "c"), "alias": "c"}
    plan = build_plan(dsk, ["alias", "a"])
    assert sorted(plan.keys) == ["b", "c"]
    assert plan.targets[0] == ("job", plan.keys.index("c")) and plan.targets[1] == ("value", 1)
    assert plan.worker.data == {"a": 1}


def test_missing_dependency_and_missing_key_name_the_keys():
    from dask._task_spec import Task, TaskRef

    with pytest.raises(KeyError, match="'b' depends on 'x', which is not in the graph"):
        build_plan({"a": 1, "b": Task("b", add, TaskRef("a"), TaskRef("x"))}, ["b"])
    with pytest.raises(KeyError, match="key 'zz' was requested"):
        build_plan({"a": 1}, ["zz"])


def test_resources_from_options_and_annotations_are_checked():
    with pytest.raises(ValueError, match="unknown resource\\(s\\) \\['gpus'\\]"):
        build_plan({"a": (inc, 1)}, ["a"], resources={"gpus": 1})
    with pytest.raises(ValueError, match="memory must be a positive whole number"):
        build_plan({"a": (inc, 1)}, ["a"], resources={"memory": -5})
    plan = build_plan({"a": (inc, 1)}, ["a"], resources={"memory": 100, "time_max": 2})
    assert plan.resources[0] == Resources(memory=100, time_max=2.0)


def test_submission_is_lazy():
    dsk = {("x", i): (inc, i) for i in range(1000)}
    run = GraphRun(build_plan(dsk, [("x", i) for i in range(1000)]))
    assert len(run.next_jobs(4)) == 4
    assert run.next_jobs(0) == []


def test_temps_are_released_after_their_last_reader_and_results_returned():
    dsk = {"a": (inc, 1), "b": (inc, "a"), "c": (add, "a", "b")}
    plan = build_plan(dsk, ["c"])
    run, submitted, released = drive(plan)
    a, b, c = (plan.keys.index(k) for k in "abc")
    assert sorted(released) == sorted([a, b])
    assert [j.keep for j in submitted if j.id == c] == [False]  # returned, never kept
    assert run.counters.held_temps == 0 and run.counters.peak_held_temps == 2


def test_task_group_links_one_consumer_ahead_and_shares_the_locality_group():
    dsk = {"a": (inc, 1), "b": (inc, "a"), "c": (inc, "b"), "d": (inc, "c")}
    plan = build_plan(dsk, ["d"])
    run = GraphRun(plan)
    first = run.next_jobs(10)
    assert [plan.keys[j.id] for j in first] == ["a", "b"]  # only one link ahead
    assert first[1].ahead and first[0].group == first[1].group
    assert run.next_jobs(10) == []
    run.job_done(first[0].id, 10, "w1")
    (c,) = run.next_jobs(10)
    assert plan.keys[c.id] == "c" and c.ahead and c.group == first[0].group
    plan2 = build_plan(dsk, ["d"])
    no_groups = GraphRun(plan2, task_groups=False)
    assert [plan2.keys[j.id] for j in no_groups.next_jobs(10)] == ["a"]


def test_no_link_ahead_for_a_shared_temp_or_a_consumer_missing_other_inputs():
    dsk = {"a": (inc, 1), "b": (inc, "a"), "c": (inc, "a"), "x": (inc, 5), "y": (add, "x", "z"), "z": (inc, 2)}
    plan = build_plan(dsk, ["b", "c", "y"])
    run = GraphRun(plan)
    jobs = run.next_jobs(1)
    assert len(jobs) == 1 and not jobs[0].ahead


def test_bytes_moved_and_local_follow_the_holder():
    dsk = {"a": (inc, 1), "b": (inc, 2), "c": (add, "a", "b")}
    plan = build_plan(dsk, ["c"])
    run = GraphRun(plan, task_groups=False)  # c is not linked behind b: it takes its largest input's group
    a, b, c = (plan.keys.index(k) for k in "abc")
    run.next_jobs(10)
    run.job_done(a, 100, "w1")
    run.job_done(b, 7, "w2")
    (job,) = run.next_jobs(10)
    assert job.group == a  # the largest input's group
    run.job_done(c, 5, "w1")
    assert (run.counters.bytes_local, run.counters.bytes_moved) == (100, 7)
    assert run.complete


def test_reduction_calls_start_before_all_inputs_exist_and_hold_little():
    n = 200
    dsk = {("e", i): (list, [("e0", i)]) for i in range(n)}
    dsk.update({("e0", i): (inc, i) for i in range(n)})
    dsk["m"] = (cat,) + tuple(("e", i) for i in range(n))
    plan = build_plan(dsk, ["m"], fan_in=8)
    assert list(plan.reductions) == [plan.keys.index("m")]
    run, submitted, released = drive(plan, budget=4)
    calls = [j for j in submitted if j.call is not None]
    assert len(calls) == len(vinecore._associative.static_tree(n, 8))
    first_call = submitted.index(calls[0])
    assert first_call < n  # well before the last input was even submitted
    assert run.counters.peak_held_temps < 60
    assert run.shapes()["m"].depth == 3


def test_flat_when_not_wide_enough_or_disabled():
    dsk = {("e", i): (inc, i) for i in range(5)}
    dsk["m"] = (cat,) + tuple(("e", i) for i in range(5))
    plan = build_plan(dsk, ["m"], fan_in=8)
    assert not plan.reductions and "not more than fan_in=8" in plan.not_rewritten["m"]
    dsk["m"] = (cat,) + tuple(("e", i) for i in range(5)) * 4
    assert not build_plan(dsk, ["m"], fan_in=8, rewrite=False).reductions


def test_repack_keeps_dasks_nesting():
    assert repack([["a", ("b", 1)], "c"], {"a": 1, ("b", 1): 2, "c": 3}) == ((1, 2), 3)
    assert repack("a", {"a": 1}) == 1
