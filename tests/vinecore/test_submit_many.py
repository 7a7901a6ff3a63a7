"""Manager.submit_many: a batch of tasks in one scheduler step, as submit() each in turn would queue them."""

import pytest

import vinecore


def _double(x):
    return 2 * x


def test_submit_many_returns_ids_in_order_and_runs_every_task(tmp_path):
    with vinecore.Manager(engine="sync", workers=1, run_dir=tmp_path) as m:
        tasks = [vinecore.PythonTask(_double, i) for i in range(5)]
        for i, t in enumerate(tasks):
            t.set_priority(i)  # the batch's highest priority is dispatched first
        ids = m.submit_many(tasks)
        assert ids == [t.id for t in tasks] and len(set(ids)) == 5
        order = []
        while not m.empty():
            t = m.wait(5)
            order.append(t.id)
            assert t.successful and t.output == 2 * tasks.index(t)
        assert order == ids[::-1]


def test_a_task_that_cannot_be_submitted_leaves_those_before_it_submitted(tmp_path):
    import threading

    with vinecore.Manager(engine="sync", workers=1, run_dir=tmp_path) as m:
        good = vinecore.PythonTask(_double, 1)
        bad = vinecore.PythonTask(_double, threading.Lock())
        after = vinecore.PythonTask(_double, 2)
        with pytest.raises(vinecore.TaskSubmissionError, match="cannot be pickled"):
            m.submit_many([good, bad, after])
        assert good.id is not None and bad.id is None and after.id is None
        t = m.wait(5)
        assert t is good and t.output == 2 and m.empty()


def test_a_nan_priority_is_refused_with_the_value_named():
    t = vinecore.PythonTask(_double, 1)
    with pytest.raises(ValueError, match=r"set_priority\(nan\).*not NaN"):
        t.set_priority(float("nan"))
    t.set_priority("2.5")
    assert t.priority == 2.5
