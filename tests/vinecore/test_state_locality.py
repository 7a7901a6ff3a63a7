"""Event-driven tests of locality when a task becomes ready while its key's worker is free.

A consumer submitted behind its producer (a task group) becomes ready in the
same event that frees the producer's worker; it must go to that worker, not
to whichever free worker the round robin reaches first.
"""

from vinecore._events import Dispatch, Result, TaskFinished, TaskSubmitted, WorkerJoined
from vinecore._state import Scheduler


def dispatches(actions):
    return [(a.task_id, a.worker_id) for a in actions if isinstance(a, Dispatch)]


def test_ready_consumer_goes_to_the_free_worker_that_ran_its_key():
    s = Scheduler()
    s.handle(WorkerJoined("w1"), WorkerJoined("w2"))
    acts = s.handle(TaskSubmitted(1, outputs=("t1",), locality="g"))
    (tid, first), = dispatches(acts)
    other = "w2" if first == "w1" else "w1"
    acts = s.handle(TaskSubmitted(2, inputs=("t1",), temps=("t1",), outputs=("t2",), locality="g"))
    assert dispatches(acts) == []  # waits for t1; the other worker stays idle
    acts = s.handle(TaskFinished(1, first, Result.SUCCESS))
    assert dispatches(acts) == [(2, first)]
    # a task with another key still uses the idle worker
    acts = s.handle(TaskSubmitted(3, locality="h"))
    assert dispatches(acts) == [(3, other)]


def test_chain_of_three_stays_on_one_worker_while_the_other_is_idle():
    s = Scheduler()
    s.handle(WorkerJoined("w1"), WorkerJoined("w2"))
    (_, first), = dispatches(s.handle(TaskSubmitted(1, outputs=("a",), locality="g")))
    s.handle(TaskSubmitted(2, inputs=("a",), temps=("a",), outputs=("b",), locality="g"))
    s.handle(TaskSubmitted(3, inputs=("b",), temps=("b",), locality="g"))
    assert dispatches(s.handle(TaskFinished(1, first, Result.SUCCESS))) == [(2, first)]
    assert dispatches(s.handle(TaskFinished(2, first, Result.SUCCESS))) == [(3, first)]


def test_locality_on_becoming_ready_never_beats_priority():
    s = Scheduler()
    s.handle(WorkerJoined("w1"))
    s.handle(TaskSubmitted(1, outputs=("a",), locality="g"))
    s.handle(TaskSubmitted(2, inputs=("a",), temps=("a",), locality="g"), TaskSubmitted(3, priority=5))
    acts = s.handle(TaskFinished(1, "w1", Result.SUCCESS))
    assert dispatches(acts) == [(3, "w1")]


def test_busy_key_worker_does_not_hold_the_task_back():
    s = Scheduler()
    s.handle(WorkerJoined("w1"), WorkerJoined("w2"))
    (_, first), = dispatches(s.handle(TaskSubmitted(1, locality="g")))
    (_, other), = dispatches(s.handle(TaskSubmitted(9)))  # the other worker is busy too
    assert {first, other} == {"w1", "w2"}
    s.handle(TaskSubmitted(2, locality="g"))  # ready now, both busy
    acts = s.handle(TaskFinished(9, other, Result.SUCCESS))
    assert dispatches(acts) == [(2, other)]
