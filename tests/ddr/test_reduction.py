"""Event-driven tests of the reduction core (ddr/_reduction.py): no processes, no clocks, no sleeps."""

import random

import pytest

from ddr._chunking import ChunkSizer
from ddr._datasets import Dataset, FileSpec
from ddr._ledger import Coverage
from ddr._planner import FilesetPlanner, GenericPlanner
from ddr._planning import Chunk
from ddr._reduction import (
    CancelJob, CancelRun, Capacity, Finalize, JobEnded, Kind, Outcome, Release, ReductionState, RunEnded,
    RunStatus, Submit,
)


def files(*sizes, prefix="f"):
    return Dataset("ds", tuple(FileSpec(f"{prefix}{i}.root", "Events", n) for i, n in enumerate(sizes)), {})


def fileset_planner(*sizes, chunk=10, **kw):
    return FilesetPlanner(files(*sizes), ChunkSizer(fixed=chunk), **kw)


class World:
    """Plays the driver and the engine: runs submitted jobs with the outcomes a test chooses."""

    def __init__(self, machine):
        self.m = machine
        self.running: dict[int, Submit] = {}
        self.held: set[int] = set()  # partials on the "workers"
        self.final: dict[str, Finalize] = {}
        self.ended: RunEnded | None = None
        self.cancelled: list[int] = []
        self.log: list = []

    def apply(self, actions):
        self.log.extend(actions)
        for a in actions:
            if isinstance(a, Submit):
                self.running[a.job] = a
            elif isinstance(a, Release):
                assert a.partial in self.held or a.partial == self.seed_id(a), a
                self.held.discard(a.partial)
            elif isinstance(a, CancelJob):
                self.cancelled.append(self.running.pop(a.job).job)
            elif isinstance(a, Finalize):
                assert a.dataset not in self.final
                self.final[a.dataset] = a
            elif isinstance(a, RunEnded):
                assert self.ended is None
                self.ended = a
        return actions

    def seed_id(self, a):
        return None

    def capacity(self, n=4, now=0.0, workers=2):
        return self.apply(self.m.handle(Capacity(n, now, workers)))

    def end(self, job, outcome=Outcome.SUCCESS, **kw):
        sub = self.running.pop(job)
        if outcome is Outcome.SUCCESS and sub.kind is not Kind.COUNT:
            self.held.add(job)
        return self.apply(self.m.handle(JobEnded(job, outcome, **kw)))

    def jobs(self, kind=None):
        return [s for s in self.running.values() if kind is None or s.kind is kind]

    def run_all(self, pick=lambda subs: subs[0], now=0.0, outcome_of=lambda sub: Outcome.SUCCESS):
        """Succeed jobs one at a time (in the order ``pick`` chooses) until the run ends."""
        for _ in range(10_000):
            if self.ended:
                return
            self.capacity(now=now)
            if not self.running:
                continue
            sub = pick(list(self.running.values()))
            value = (sub.count.file.num_entries, "uuid") if sub.kind is Kind.COUNT else None
            self.end(sub.job, outcome_of(sub), value=value, now=now)
        raise AssertionError("the run did not end")


def test_every_chunk_is_processed_once_and_merged_into_one_final_partial():
    m = ReductionState({"ds": fileset_planner(35, 20, chunk=10)}, accumulation_size=3)
    w = World(m)
    w.run_all()
    fin = w.final["ds"]
    assert fin.complete and fin.coverage.events == 55 and len(fin.partials) == 1
    assert fin.coverage.ranges == {"f0.root": [(0, 35)], "f1.root": [(0, 20)]}
    assert w.ended.status is RunStatus.FINISHED and not w.held - set(fin.partials)


@pytest.mark.parametrize("seed", range(5))
def test_completion_order_and_accumulation_size_do_not_change_the_coverage(seed):
    rng = random.Random(seed)
    m = ReductionState({"a": fileset_planner(97, 13, chunk=7), "b": GenericPlanner("b", [(i, 2) for i in range(9)])},
                       accumulation_size=rng.randint(2, 5))
    w = World(m)
    w.run_all(pick=rng.choice)
    assert w.final["a"].coverage.events == 110 and w.final["b"].coverage.events == 18
    assert all(f.complete for f in w.final.values())


def test_held_partials_always_cover_exactly_what_succeeded():
    """The checkpoint invariant: between two handle calls, what held() reports is what succeeded."""
    rng = random.Random(7)
    m = ReductionState({"ds": fileset_planner(200, chunk=10)}, accumulation_size=3)
    w = World(m)
    succeeded = 0
    for _ in range(10_000):
        if w.ended:
            break
        w.capacity()
        if not w.running:
            continue
        sub = rng.choice(list(w.running.values()))
        w.end(sub.job)
        if sub.kind is Kind.PROCESS:
            succeeded += sub.work.size
        if "ds" not in w.final:
            parts, cov = m.held("ds")
            assert cov.events == succeeded and set(parts) <= w.held
    assert w.final["ds"].coverage.events == succeeded == 200


def test_exhausted_chunk_is_split_in_halves_and_later_chunks_shrink():
    planner = fileset_planner(100, chunk=40)
    m = ReductionState({"ds": planner})
    w = World(m)
    w.capacity(n=1)
    first = w.jobs(Kind.PROCESS)[0]
    assert (first.work.item.start, first.work.item.stop) == (0, 40)
    w.end(first.job, Outcome.EXHAUSTED)
    w.capacity(n=2)
    halves = sorted((s.work.item.start, s.work.item.stop) for s in w.jobs(Kind.PROCESS))
    assert halves == [(0, 20), (20, 40)]
    assert m.datasets["ds"].ledger.splits[0]["into"] == [{"file": "f0.root", "start": 0, "stop": 20},
                                                          {"file": "f0.root", "start": 20, "stop": 40}]
    w.run_all()
    assert w.final["ds"].complete and w.final["ds"].coverage.events == 100
    assert max(s.work.size for s in w.log if isinstance(s, Submit) and s.kind is Kind.PROCESS
               and s.work.item.start >= 40) <= 20  # the sizer learned the cap


def test_a_chunk_that_cannot_be_split_stops_the_run_unless_keep_going():
    for keep_going in (False, True):
        m = ReductionState({"ds": fileset_planner(3, chunk=1)}, keep_going=keep_going)
        w = World(m)
        w.capacity(n=1)
        job = w.jobs(Kind.PROCESS)[0]
        w.end(job.job, Outcome.EXHAUSTED, error=MemoryError("over 10 MB"))
        led = m.datasets["ds"].ledger
        assert led.failed[0]["kind"] == "resource exhaustion" and led.failed[0]["start"] == 0
        if keep_going:
            w.run_all()
            assert w.ended.status is RunStatus.FINISHED and not w.final["ds"].complete
            assert w.final["ds"].coverage.events == 2
        else:
            assert w.ended.status is RunStatus.FAILED and isinstance(w.ended.error, MemoryError)


def test_items_without_split_fail_clearly_and_a_splitter_makes_them_splittable():
    m = ReductionState({"g": GenericPlanner("g", [("big", 8)])}, keep_going=True)
    w = World(m)
    w.capacity()
    w.end(w.jobs()[0].job, Outcome.EXHAUSTED)
    assert "no split()" in m.datasets["g"].ledger.failed[0]["error"]

    halves = lambda item, size: [(f"{item}/1", size // 2), (f"{item}/2", size - size // 2)]  # noqa: E731
    m = ReductionState({"g": GenericPlanner("g", [("big", 8)], splitter=halves)})
    w = World(m)
    w.capacity()
    w.end(w.jobs()[0].job, Outcome.EXHAUSTED)
    w.capacity()
    assert sorted(s.work.item for s in w.jobs()) == ["big/1", "big/2"]
    w.run_all()
    assert w.final["g"].complete and w.final["g"].coverage.events == 8


def test_lost_workers_are_retried_then_fail_the_chunk():
    m = ReductionState({"ds": fileset_planner(10, chunk=10)}, retries=2, keep_going=True)
    w = World(m)
    for attempt in range(3):
        w.capacity()
        job = w.jobs(Kind.PROCESS)[0]
        assert job.work.attempts == attempt + 1
        w.end(job.job, Outcome.LOST)
    assert m.datasets["ds"].ledger.failed[0]["kind"] == "worker lost"
    w.run_all()
    assert not w.final["ds"].complete and w.final["ds"].coverage.events == 0


def test_transient_bad_input_backs_off_and_the_wakeup_says_when():
    m = ReductionState({"ds": fileset_planner(10, chunk=10)}, backoff=(2.0, 5.0))
    w = World(m)
    w.capacity(now=100.0)
    w.end(w.jobs()[0].job, Outcome.BAD_INPUT, transient=True, now=100.0)
    assert m.next_wakeup() == 102.0
    assert w.capacity(now=101.0) == [] and not w.running  # not before its time
    w.capacity(now=102.0)
    assert w.jobs()[0].work.attempts == 2
    w.run_all(now=102.0)
    assert w.final["ds"].complete


def test_permanent_bad_input_is_skipped_only_with_skip_bad_files():
    for skip in (False, True):
        m = ReductionState({"ds": fileset_planner(10, 10, chunk=10)}, skip_bad_files=skip)
        w = World(m)
        w.capacity(n=1)
        w.end(w.jobs()[0].job, Outcome.BAD_INPUT, error=OSError("truncated"))
        if skip:
            w.run_all()
            assert w.ended.status is RunStatus.FINISHED and w.final["ds"].coverage.events == 10
            assert not w.final["ds"].complete
        else:
            assert w.ended.status is RunStatus.FAILED and str(w.ended.error) == "truncated"


def test_processor_error_stops_but_other_finished_datasets_still_finalise():
    m = ReductionState({"done": GenericPlanner("done", [(i, 1) for i in range(4)]),
                        "bad": GenericPlanner("bad", [(i, 1) for i in range(4)])}, accumulation_size=2)
    w = World(m)
    w.capacity(n=8)
    for sub in w.jobs(Kind.PROCESS):
        if sub.dataset == "done":
            w.end(sub.job)
    bad = [s for s in w.jobs(Kind.PROCESS) if s.dataset == "bad"]
    w.end(bad[0].job)
    w.end(bad[1].job, Outcome.ERROR, error=ValueError("boom"))
    assert m.status is RunStatus.FAILED and w.ended is None  # the finished dataset is still merging
    assert {s.dataset for s in w.running.values()} == {"done"}  # bad's other chunks were cancelled
    while w.running:
        w.end(next(iter(w.running)))
    assert "done" in w.final and w.final["done"].complete and "bad" not in w.final
    assert w.ended.status is RunStatus.FAILED and str(w.ended.error) == "boom"
    parts, cov = m.held("bad")
    assert cov.events == 1 and set(parts) <= w.held  # the checkpoint keeps what bad had done


def test_cancel_stops_everything_and_keeps_accumulation_inputs_held():
    m = ReductionState({"ds": fileset_planner(60, chunk=10)}, accumulation_size=2)
    w = World(m)
    w.capacity(n=3)
    a, b = w.jobs(Kind.PROCESS)[:2]
    w.end(a.job)
    w.end(b.job)
    assert len(w.jobs(Kind.ACCUMULATE)) == 1
    w.apply(m.handle(CancelRun()))
    assert not w.running and w.ended.status is RunStatus.CANCELLED
    parts, cov = m.held("ds")
    assert sorted(parts) == sorted([a.job, b.job]) and cov.events == 20
    assert w.capacity() == []  # nothing new after a cancel


def test_exhausted_accumulation_splits_by_inputs_then_merges_on_the_manager():
    m = ReductionState({"ds": GenericPlanner("ds", [(i, 1) for i in range(4)])}, accumulation_size=4)
    w = World(m)
    w.capacity(n=4)
    for s in w.jobs(Kind.PROCESS):
        w.end(s.job)
    acc = w.jobs(Kind.ACCUMULATE)[0]
    assert len(acc.inputs) == 4
    w.end(acc.job, Outcome.EXHAUSTED)
    halves = w.jobs(Kind.ACCUMULATE)
    assert sorted(len(h.inputs) for h in halves) == [2, 2]
    w.end(halves[0].job, Outcome.EXHAUSTED)  # two inputs cannot be split: merge on the manager later
    w.end(halves[1].job)
    w.capacity()  # the planner finds its end
    assert not w.running
    fin = w.final["ds"]
    assert len(fin.partials) == 3 and fin.coverage.events == 4 and fin.complete


def test_resume_seed_is_merged_into_the_final_result_and_gaps_only_are_planned():
    seed = Coverage(30, 3, {"f0.root": [(0, 30)]})
    planner = fileset_planner(50, chunk=10, skip={"f0.root": [(0, 30)]})
    m = ReductionState({"ds": planner}, seed={"ds": seed})
    w = World(m)
    sid = m.seed_partial("ds")
    w.held.add(sid)
    w.run_all()
    done = [s.work.item for s in w.log if isinstance(s, Submit) and s.kind is Kind.PROCESS]
    assert sorted((c.start, c.stop) for c in done) == [(30, 40), (40, 50)]
    fin = w.final["ds"]
    assert sid in fin.partials and fin.coverage.events == 50 and fin.complete
    assert m.datasets["ds"].ledger.events_resumed == 30


def test_a_dataset_of_empty_files_runs_one_empty_chunk_for_the_result_shape():
    m = ReductionState({"ds": fileset_planner(0, 0)})
    w = World(m)
    w.capacity()
    (job,) = w.jobs(Kind.PROCESS)
    assert job.work.size == 0 and isinstance(job.work.item, Chunk) and job.work.item.stop == 0
    w.end(job.job)
    fin = w.final["ds"]
    assert fin.partials == (job.job,) and fin.complete and fin.coverage.events == 0


def test_counting_unknown_files_then_planning_them():
    ds = Dataset("ds", (FileSpec("a.root", "Events", None), FileSpec("b.root", "Events", 5)), {})
    m = ReductionState({"ds": FilesetPlanner(ds, ChunkSizer(fixed=10))})
    w = World(m)
    w.capacity(n=1)
    count = w.jobs(Kind.COUNT)
    assert len(count) == 1 and count[0].count.file.path == "a.root"
    assert m.datasets["ds"].planner.events_expected is None
    w.end(count[0].job, value=(12, "u"))
    w.run_all()
    assert w.final["ds"].coverage.events == 17 and w.final["ds"].complete


def test_an_unsatisfiable_task_is_fatal_even_with_keep_going():
    m = ReductionState({"ds": fileset_planner(10)}, keep_going=True, skip_bad_files=True)
    w = World(m)
    w.capacity()
    w.end(w.jobs()[0].job, Outcome.UNSATISFIABLE, error=RuntimeError("needs 2 cores"))
    assert w.ended.status is RunStatus.FAILED and "2 cores" in str(w.ended.error)


def test_a_failing_reducer_stops_the_run():
    m = ReductionState({"ds": GenericPlanner("ds", [(i, 1) for i in range(2)])}, accumulation_size=2)
    w = World(m)
    w.capacity()
    for s in w.jobs(Kind.PROCESS):
        w.end(s.job)
    w.end(w.jobs(Kind.ACCUMULATE)[0].job, Outcome.ERROR, error=TypeError("cannot add"))
    assert w.ended.status is RunStatus.FAILED
    assert m.held("ds")[1].events == 2  # the inputs are still held


def test_a_setup_error_is_fatal_even_with_keep_going():
    m = ReductionState({"ds": fileset_planner(30)}, keep_going=True)
    w = World(m)
    w.capacity()
    w.end(w.jobs()[0].job, Outcome.SETUP, error=OSError(28, "No space left on device"))
    assert w.ended.status is RunStatus.FAILED and w.ended.error.errno == 28


def test_a_counts_setup_error_stops_without_calling_the_file_bad():
    ds = Dataset("ds", (FileSpec("root://h//a.root", "Events", None),), {})
    m = ReductionState({"ds": FilesetPlanner(ds, ChunkSizer(fixed=10))}, skip_bad_files=True)
    w = World(m)
    w.capacity(n=1)
    (count,) = w.jobs(Kind.COUNT)
    w.end(count.job, Outcome.SETUP, error=ModuleNotFoundError("No module named 'fsspec_xrootd'"))
    assert w.ended.status is RunStatus.FAILED and "fsspec_xrootd" in str(w.ended.error)
    assert m.datasets["ds"].ledger.files_bad == []


def test_task_metrics_are_summed_per_dataset_whatever_the_outcome():
    m = ReductionState({"a": fileset_planner(20, chunk=10), "b": GenericPlanner("b", [(0, 1)])},
                       keep_going=True)
    w = World(m)
    w.capacity()
    a1, a2 = w.jobs(Kind.PROCESS)[:2]
    w.end(a1.job, metrics=(("bytes_local", 100.0), ("bytes_remote", 7.0)))
    w.end(a2.job, Outcome.ERROR, error=ValueError("cut"), metrics=(("bytes_local", 50.0),))
    w.run_all()
    assert m.datasets["a"].ledger.metrics == {"bytes_local": 150.0, "bytes_remote": 7.0}
    assert m.datasets["b"].ledger.metrics == {}
    rep = m.datasets["a"].ledger.to_report()
    assert rep["bytes_read"] == {"remote": 7, "cache": 0, "local": 150}
