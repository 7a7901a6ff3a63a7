"""Event-driven tests of the pure scheduler: no processes, no clocks, no sleeps."""

import pytest

from vinecore._events import (
    CancelRequested,
    Complete,
    Dispatch,
    Kill,
    Result,
    TaskFinished,
    TaskState,
    TaskSubmitted,
    WorkerJoined,
    WorkerRemoved,
)
from vinecore._state import Scheduler


def dispatches(actions):
    return [(a.task_id, a.worker_id) for a in actions if isinstance(a, Dispatch)]


def completes(actions):
    return {a.task_id: a.result for a in actions if isinstance(a, Complete)}


def finished(tid, wid, result=Result.SUCCESS):
    return TaskFinished(tid, wid, result)


def test_fifo_within_priority_and_priority_first():
    s = Scheduler()
    s.handle(*(TaskSubmitted(i, priority=p) for i, p in [(1, 0), (2, 5), (3, 0), (4, 5)]))
    acts = s.handle(WorkerJoined("w", slots=1))
    assert dispatches(acts) == [(2, "w")]
    order = [2]
    for _ in range(3):
        acts = s.handle(finished(order[-1], "w"))
        order += [d[0] for d in dispatches(acts)]
    assert order == [2, 4, 1, 3]


def test_a_worker_passes_over_tasks_it_cannot_fit_and_they_keep_their_place():
    """Across priorities: the small worker takes lower-priority tasks it fits; the ones passed over
    stay first in line, in submission order, for the worker that frees up."""
    s = Scheduler()
    s.handle(WorkerJoined("big", cores=1, memory=2000, slots=1))
    assert dispatches(s.handle(TaskSubmitted(0, priority=9, cores=1, memory=2000))) == [(0, "big")]
    s.handle(TaskSubmitted(1, priority=5, cores=1, memory=2000), TaskSubmitted(2, priority=5, cores=1, memory=2000),
             TaskSubmitted(3, priority=1, cores=1, memory=100), TaskSubmitted(4, priority=1, cores=1, memory=100),
             TaskSubmitted(5, priority=0, cores=1, memory=2000))
    assert dispatches(s.handle(WorkerJoined("small", cores=2, memory=1000, slots=2))) == [(3, "small"),
                                                                                        (4, "small")]
    order = []
    for done in (0, 1, 2):
        order += [tid for tid, w in dispatches(s.handle(finished(done, "big"))) if w == "big"]
    assert order == [1, 2, 5]


def test_many_priorities_each_in_submission_order():
    s = Scheduler()
    ids = list(range(1, 61))
    s.handle(*(TaskSubmitted(i, priority=i % 7, cores=1) for i in ids))
    order = [tid for tid, _ in dispatches(s.handle(WorkerJoined("w", cores=len(ids), slots=len(ids))))]
    assert order == sorted(ids, key=lambda i: (-(i % 7), i))


def test_task_waits_for_temp_even_before_its_producer_is_known():
    s = Scheduler()
    s.handle(WorkerJoined("w", slots=2, cores=2))
    acts = s.handle(TaskSubmitted(1, inputs=("temp-a",), temps=("temp-a",), cores=1))
    assert dispatches(acts) == [] and s.state_of(1) is TaskState.WAITING
    acts = s.handle(TaskSubmitted(2, outputs=("temp-a",), cores=1))
    assert dispatches(acts) == [(2, "w")]
    acts = s.handle(finished(2, "w"))
    assert dispatches(acts) == [(1, "w")]


def test_failed_producer_fails_consumers_without_running_them():
    s = Scheduler()
    s.handle(WorkerJoined("w"))
    s.handle(TaskSubmitted(1, outputs=("t",)), TaskSubmitted(2, inputs=("t",), temps=("t",)))
    acts = s.handle(finished(1, "w", Result.RESOURCE_EXHAUSTION))
    assert completes(acts) == {1: Result.RESOURCE_EXHAUSTION, 2: Result.EXCEPTION}
    reason = [a.reason for a in acts if isinstance(a, Complete) and a.task_id == 2][0]
    assert "input t missing" in reason and "resource exhaustion" in reason
    acts = s.handle(TaskSubmitted(3, inputs=("t",), temps=("t",)))
    assert completes(acts) == {3: Result.EXCEPTION}


def test_retries_count_attempts_and_exhaustion_is_not_retried():
    s = Scheduler()
    s.handle(WorkerJoined("w"))
    s.handle(TaskSubmitted(1, retries=1), TaskSubmitted(2, retries=5))
    acts = s.handle(finished(1, "w", Result.EXCEPTION))
    assert completes(acts) == {} and dispatches(acts) == [(2, "w")]  # 1 requeued behind 2
    acts = s.handle(finished(2, "w", Result.RESOURCE_EXHAUSTION))
    assert completes(acts) == {2: Result.RESOURCE_EXHAUSTION}
    assert dispatches(acts) == [(1, "w")]
    acts = s.handle(finished(1, "w", Result.EXCEPTION))
    assert completes(acts) == {1: Result.EXCEPTION}
    assert [a.attempts for a in acts if isinstance(a, Complete)] == [2]


def test_worker_removed_requeues_running_task_elsewhere():
    s = Scheduler()
    s.handle(WorkerJoined("a"), WorkerJoined("b"))
    acts = s.handle(TaskSubmitted(1, retries=1), TaskSubmitted(2, retries=0))
    placed = dict(dispatches(acts))
    acts = s.handle(WorkerRemoved(placed[1]))
    assert completes(acts) == {}
    survivor = "b" if placed[1] == "a" else "a"
    # task 1 waits for the survivor, which is busy with task 2
    acts = s.handle(finished(2, survivor))
    assert dispatches(acts) == [(1, survivor)]
    acts = s.handle(WorkerRemoved(survivor))
    assert completes(acts) == {1: Result.WORKER_LOST}


def test_late_report_from_removed_worker_is_ignored():
    s = Scheduler()
    s.handle(WorkerJoined("a"), WorkerJoined("b"))
    s.handle(TaskSubmitted(1, retries=2))
    s.handle(WorkerRemoved("a"))
    acts = s.handle(finished(1, "a"))
    assert completes(acts) == {} and s.state_of(1) is TaskState.RUNNING


def test_cancel_waiting_and_running():
    s = Scheduler()
    s.handle(WorkerJoined("w"))
    s.handle(TaskSubmitted(1), TaskSubmitted(2))
    acts = s.handle(CancelRequested(2))
    assert completes(acts) == {2: Result.CANCELLED}
    acts = s.handle(CancelRequested(1))
    assert completes(acts) == {1: Result.CANCELLED}
    assert [a for a in acts if isinstance(a, Kill)] == [Kill(1, "w")]
    s.handle(TaskSubmitted(3))
    assert s.state_of(3) is TaskState.READY  # slot still held by the killed attempt
    acts = s.handle(finished(1, "w", Result.CANCELLED))
    assert completes(acts) == {} and dispatches(acts) == [(3, "w")]


def test_packing_by_cores_and_whole_worker_default():
    s = Scheduler()
    s.handle(WorkerJoined("big", cores=4, slots=4))
    acts = s.handle(TaskSubmitted(1, cores=1), TaskSubmitted(2, cores=2), TaskSubmitted(3, cores=2),
                    TaskSubmitted(4))
    assert dispatches(acts) == [(1, "big"), (2, "big")]
    # 3 cores used: task 3 (2 cores) and task 4 (whole worker) wait
    acts = s.handle(finished(1, "big"))
    assert dispatches(acts) == [(3, "big")]
    acts = s.handle(finished(2, "big"))
    assert dispatches(acts) == []  # task 4 needs all 4 cores
    acts = s.handle(finished(3, "big"))
    assert dispatches(acts) == [(4, "big")]  # no cores given: the whole worker


def test_locality_prefers_warm_worker_within_top_priority():
    s = Scheduler()
    s.handle(WorkerJoined("a"), WorkerJoined("b"))
    acts = s.handle(TaskSubmitted(1, locality="f1"), TaskSubmitted(2, locality="f2"))
    placed = dict(dispatches(acts))
    s.handle(TaskSubmitted(3, locality="f2"), TaskSubmitted(4, locality="f1"))
    acts = s.handle(finished(1, placed[1]))
    assert dispatches(acts) == [(4, placed[1])]  # f1's worker takes the later f1 chunk
    acts = s.handle(finished(2, placed[2]))
    assert dispatches(acts) == [(3, placed[2])]


def test_locality_never_beats_priority():
    s = Scheduler()
    s.handle(WorkerJoined("a"))
    s.handle(TaskSubmitted(1, locality="f1"))
    s.handle(TaskSubmitted(2, locality="f1"), TaskSubmitted(3, priority=9))
    acts = s.handle(finished(1, "a"))
    assert dispatches(acts) == [(3, "a")]


def test_hungry_tracks_slots_and_queue():
    s = Scheduler(hungry_factor=2)
    s.handle(WorkerJoined("a", slots=1), WorkerJoined("b", slots=2, cores=2))
    assert s.hungry() == 6
    s.handle(*(TaskSubmitted(i, cores=1) for i in range(4)))
    assert s.hungry() == 2
    c = s.counts()
    assert (c.running, c.ready, c.workers, c.slots) == (3, 1, 2, 3)


def test_task_that_fits_nowhere_fails_and_does_not_block_others():
    s = Scheduler()
    s.handle(WorkerJoined("w", cores=2, slots=2))
    acts = s.handle(TaskSubmitted(1, cores=8), TaskSubmitted(2, cores=1))
    assert dispatches(acts) == [(2, "w")]
    assert completes(acts) == {1: Result.UNSATISFIABLE}


def test_duplicate_submission_is_an_error():
    s = Scheduler()
    s.handle(TaskSubmitted(1))
    with pytest.raises(ValueError, match="submitted twice"):
        s.handle(TaskSubmitted(1))


def test_many_tasks_scale_linearly():
    s = Scheduler()
    s.handle(WorkerJoined("w", slots=4, cores=4))
    s.handle(*(TaskSubmitted(i, cores=1) for i in range(20_000)))
    done = 0
    running = [i for i in range(4)]
    while running:
        tid = running.pop(0)
        acts = s.handle(finished(tid, "w"))
        done += 1
        running += [d[0] for d in dispatches(acts)]
    assert done == 20_000 and s.counts().done == 20_000


def test_a_task_no_worker_can_ever_fit_fails_at_once_with_the_reason():
    s = Scheduler()
    s.handle(WorkerJoined("a", cores=1), WorkerJoined("b", cores=1))
    acts = s.handle(TaskSubmitted(1, cores=2), TaskSubmitted(2, cores=1))
    done = {a.task_id: a for a in acts if isinstance(a, Complete)}
    assert set(done) == {1} and done[1].result is Result.UNSATISFIABLE
    assert "2 core(s)" in done[1].reason and "offers 1 core(s)" in done[1].reason
    assert dispatches(acts) == [(2, "a")]
    assert s.state_of(1) is None  # done and forgotten


def test_memory_beyond_every_worker_is_unsatisfiable_but_a_busy_worker_is_not():
    s = Scheduler()
    s.handle(WorkerJoined("a", cores=2, memory=1000))
    acts = s.handle(TaskSubmitted(1, cores=2, memory=800), TaskSubmitted(2, cores=2, memory=800),
                    TaskSubmitted(3, cores=1, memory=2000))
    assert completes(acts) == {3: Result.UNSATISFIABLE}
    assert dispatches(acts) == [(1, "a")] and s.state_of(2) is TaskState.READY  # waits for the busy worker


def test_tasks_wait_while_there_are_no_workers_and_the_first_worker_decides():
    s = Scheduler()
    acts = s.handle(TaskSubmitted(1, cores=4), TaskSubmitted(2, cores=1))
    assert completes(acts) == {}
    acts = s.handle(WorkerJoined("a", cores=2))
    assert completes(acts) == {1: Result.UNSATISFIABLE} and dispatches(acts) == [(2, "a")]


def test_losing_the_only_large_worker_fails_what_only_it_could_run():
    s = Scheduler()
    s.handle(WorkerJoined("big", cores=4, slots=1), WorkerJoined("small", cores=1))
    s.handle(TaskSubmitted(1, cores=4, retries=1), TaskSubmitted(2, cores=4))
    assert s.state_of(1) is TaskState.RUNNING and s.state_of(2) is TaskState.READY
    acts = s.handle(WorkerRemoved("big"))  # 1 would be retried, 2 was waiting: neither can run now
    assert completes(acts) == {1: Result.UNSATISFIABLE, 2: Result.UNSATISFIABLE}


def test_done_tasks_are_forgotten_so_memory_stays_flat():
    s = Scheduler()
    s.handle(WorkerJoined("w", slots=4, cores=4))
    for i in range(1, 1001):
        s.handle(TaskSubmitted(i, cores=1))
        s.handle(finished(i, "w"))
    assert len(s.tasks) == 0 and s.counts().done == 1000


def test_a_cancelled_waiter_is_forgotten_and_its_producer_still_finishes():
    s = Scheduler()
    s.handle(WorkerJoined("w"))
    s.handle(TaskSubmitted(1, outputs=("t",)), TaskSubmitted(2, inputs=("t",), temps=("t",)))
    assert completes(s.handle(CancelRequested(2))) == {2: Result.CANCELLED}
    assert completes(s.handle(finished(1, "w"))) == {1: Result.SUCCESS}  # no KeyError for the gone waiter
