"""Lazy planning: chunks cover files exactly, nothing is materialised, range bookkeeping is exact."""

import itertools
import pickle
import random
import time
import tracemalloc

import pytest

import vinecore
from ddr import DynamicDataReduction
from ddr._chunking import ChunkSizer
from ddr._datasets import Dataset, FileSpec
from ddr._planning import Chunk, coverage_gaps, find_overlaps, iter_file_chunks, merge_ranges
from ddr._planner import FilesetPlanner


def sizes_from(values):
    it = iter(values)
    calls = []

    def next_size():
        calls.append(1)
        return next(it)

    return next_size, calls


# ------------------------------------------------------------ cutting files
def test_chunks_cover_file_exactly_with_changing_sizes():
    next_size, _ = sizes_from([10, 10, 25, 3, 1000])
    chunks = list(iter_file_chunks(FileSpec("f.root", "Events", 100, "u"), "ds", next_size))
    assert [(c.start, c.stop) for c in chunks] == [(0, 10), (10, 20), (20, 45), (45, 48), (48, 100)]
    assert all(c.dataset == "ds" and c.path == "f.root" and c.tree == "Events" and c.uuid == "u" for c in chunks)


@pytest.mark.parametrize("n, size, expected", [
    (25, 10, [10, 15]),      # 15 left <= 1.5 * 10: taken whole
    (15, 10, [15]),
    (16, 10, [10, 6]),       # 16 left > 15: the last chunk is still more than half the size
    (26, 10, [10, 10, 6]),
    (9, 10, [9]),
    (1, 1000, [1]),
])
def test_last_chunk_is_never_tiny(n, size, expected):
    chunks = list(iter_file_chunks(FileSpec("f", "T", n), "ds", lambda: size))
    assert [c.size for c in chunks] == expected


def test_every_file_size_is_covered_once_and_balanced():
    for n in range(0, 200):
        chunks = list(iter_file_chunks(FileSpec("f", "T", n), "ds", lambda: 7))
        assert merge_ranges((c.start, c.stop) for c in chunks) == ([(0, n)] if n else [])
        assert sum(c.size for c in chunks) == n
        assert all(c.size >= 1 for c in chunks)
        if len(chunks) > 1:
            assert 3.5 < chunks[-1].size <= 10.5


def test_steps_are_yielded_verbatim_and_next_size_is_not_asked():
    next_size, calls = sizes_from([])
    f = FileSpec("f", "T", 40, "u", ((0, 14), (14, 14), (14, 28), (28, 40)))
    assert [(c.start, c.stop) for c in iter_file_chunks(f, "ds", next_size)] == [(0, 14), (14, 28), (28, 40)]
    assert calls == []


def test_zero_entry_files_yield_nothing():
    next_size, calls = sizes_from([])
    assert list(iter_file_chunks(FileSpec("f", "T", 0), "ds", next_size)) == []
    assert list(iter_file_chunks(FileSpec("f", "T", 0, None, ((0, 0),)), "ds", next_size)) == []
    assert calls == []


def test_uncounted_file_and_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="number of entries of tree 'T' must be known"):
        next(iter_file_chunks(FileSpec("f.root", "T"), "ds", lambda: 10))
    with pytest.raises(ValueError, match="chunk sizes must be >= 1"):
        next(iter_file_chunks(FileSpec("f.root", "T", 10), "ds", lambda: 0))


def test_a_billion_entry_file_starts_yielding_at_once_and_asks_sizes_lazily():
    next_size, calls = sizes_from(itertools.repeat(1000))
    t0 = time.perf_counter()
    gen = iter_file_chunks(FileSpec("f", "T", 10**9), "ds", next_size)
    first = list(itertools.islice(gen, 5))
    assert time.perf_counter() - t0 < 0.05
    assert [c.start for c in first] == [0, 1000, 2000, 3000, 4000]
    assert len(calls) == 5  # one size asked per chunk, just before it is cut


def test_sizes_changed_mid_file_take_effect_at_the_next_chunk():
    sizer = ChunkSizer(initial=1000, min_size=100)
    gen = iter_file_chunks(FileSpec("f", "T", 10**6), "ds", sizer.next_size)
    assert next(gen).size == 1000
    sizer.shrink_after_exhaustion(1000)
    assert next(gen).size == 500


# ------------------------------------------------------------------- chunks
def test_split_halves_cover_range():
    a, b = Chunk("ds", "f", "Events", 7, 20).split(2)
    assert (a.start, a.stop, b.start, b.stop) == (7, 13, 13, 20)


def test_split_is_contiguous_balanced_and_exact():
    rng = random.Random(1)
    for _ in range(300):
        start = rng.randrange(0, 10**6)
        c = Chunk("ds", "f", "T", start, start + rng.randrange(0, 50), "u")
        parts = c.split(rng.randrange(1, 12))
        assert parts[0].start == c.start and parts[-1].stop == c.stop
        assert all(x.stop == y.start for x, y in zip(parts, parts[1:]))
        sizes = [p.size for p in parts]
        assert max(sizes) - min(sizes) <= 1
        assert all(p.size >= 1 for p in parts) or c.size == 0
        assert all((p.dataset, p.path, p.tree, p.uuid) == ("ds", "f", "T", "u") for p in parts)


def test_split_edge_cases():
    c = Chunk("ds", "f", "T", 5, 8)
    assert [p.size for p in c.split(10)] == [1, 1, 1]
    assert c.split(1) == (c,)
    assert Chunk("ds", "f", "T", 5, 5).split(4) == (Chunk("ds", "f", "T", 5, 5),)
    with pytest.raises(ValueError, match="at least 1"):
        c.split(0)


def test_chunk_label_order_validation_and_pickling():
    c = Chunk("ds", "/data/f.root", "Events", 10, 20)
    assert c.label() == "/data/f.root [10, 20)" and c.size == 10
    assert sorted([Chunk("ds", "f", "T", 5, 9), Chunk("ds", "f", "T", 0, 5)])[0].start == 0
    assert pickle.loads(pickle.dumps(c)) == c and hash(c) == hash(Chunk("ds", "/data/f.root", "Events", 10, 20))
    with pytest.raises(ValueError, match=r"invalid entry range \[9, 3\)"):
        Chunk("ds", "f", "T", 9, 3)


# ------------------------------------------------------------------- ranges
def test_merge_ranges():
    assert merge_ranges([(5, 6), (0, 2), (2, 4)]) == [(0, 4), (5, 6)]
    assert merge_ranges([(0, 10), (2, 3), (9, 12), (7, 7)]) == [(0, 12)]
    assert merge_ranges([]) == []


def test_coverage_gaps():
    assert coverage_gaps(30, [(0, 5), (10, 12), (11, 20)]) == [(5, 10), (20, 30)]
    assert coverage_gaps(30, []) == [(0, 30)]
    assert coverage_gaps(30, [(0, 30)]) == []
    assert coverage_gaps(10, [(3, 50)]) == [(0, 3)]
    assert coverage_gaps(10, [(12, 50)]) == [(0, 10)]
    assert coverage_gaps(0, [(0, 5)]) == []


def test_find_overlaps():
    assert find_overlaps([(0, 5), (5, 10)]) == []
    assert find_overlaps([(0, 5), (3, 10), (8, 12)]) == [(3, 5), (8, 10)]
    assert find_overlaps([(0, 10), (2, 3), (4, 6)]) == [(2, 3), (4, 6)]
    assert find_overlaps([(0, 10), (0, 10), (0, 10)]) == [(0, 10)]
    assert find_overlaps([(4, 4), (0, 10)]) == []


def test_gaps_and_overlaps_agree_with_a_brute_force_count():
    rng = random.Random(7)
    for _ in range(200):
        total = rng.randrange(0, 40)
        ranges = [(a, a + rng.randrange(0, 8)) for a in (rng.randrange(0, 40) for _ in range(rng.randrange(0, 6)))]
        hits = [sum(a <= i < b for a, b in ranges) for i in range(60)]
        gaps = {i for a, b in coverage_gaps(total, ranges) for i in range(a, b)}
        assert gaps == {i for i in range(total) if hits[i] == 0}
        assert {i for a, b in find_overlaps(ranges) for i in range(a, b)} == {i for i in range(60) if hits[i] > 1}


# ----------------------------------------------- planning through the driver
def test_million_chunk_fileset_is_not_materialised():
    files = tuple(FileSpec(f"root://host//f{i}.root", "Events", 10_000_000) for i in range(1000))
    ds = Dataset("big", files, {"dataset": "big"})  # 1000 files x 10^4 chunks = 10^7 chunks
    tracemalloc.start()
    t0 = time.perf_counter()
    src = FilesetPlanner(ds, ChunkSizer(fixed=1000))
    first = [src.next(0.0) for _ in range(100)]
    elapsed = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert all(w.size == 1000 for w in first)
    assert elapsed < 0.5, elapsed
    assert peak < 5_000_000, peak  # bytes: flat, not proportional to the 10^7 chunks
    assert src.events_expected == 10_000_000_000


def test_driver_pulls_only_what_workers_can_take():
    pulled = []

    def preprocess(spec):
        for i in range(spec["n"]):
            pulled.append(i)
            yield i, 1

    ddr = DynamicDataReduction({"ds": {"n": 10**6}}, lambda x: x, preprocess=preprocess, reducer=lambda a, b: a + b)
    with vinecore.Manager(engine="sync", workers=1) as m:
        run = ddr._start(m)
        t0 = time.perf_counter()
        run.step(0)
        assert time.perf_counter() - t0 < 1.0
        assert len(pulled) <= 2 * m.statistics().workers + 2


def test_generic_reduction_is_order_independent():
    def preprocess(spec):
        items = list(range(spec["n"]))
        random.Random(spec["seed"]).shuffle(items)
        for i in items:
            yield i, 1

    def square(x):
        return {"sum": x * x, "seen": {x}}

    results = []
    for seed in range(3):
        ddr = DynamicDataReduction({"ds": {"n": 200, "seed": seed}}, square, preprocess=preprocess,
                                   engine="sync", accumulation_size=3 + seed)
        results.append(ddr.compute())
    assert results[0] == results[1] == results[2]
    assert results[0]["ds"]["sum"] == sum(i * i for i in range(200))
    assert results[0]["ds"]["seen"] == set(range(200))
    assert ddr.report["datasets"]["ds"]["events_processed"] == 200


def test_source_cuts_as_many_files_at_once_as_its_spread():
    files = tuple(FileSpec(f"f{i}.root", "Events", 3000) for i in range(3))
    one = FilesetPlanner(Dataset("ds", files, {}), ChunkSizer(fixed=1000))
    assert [one.next(0.0).item.path for _ in range(4)] == ["f0.root"] * 3 + ["f1.root"]
    two = FilesetPlanner(Dataset("ds", files, {}), ChunkSizer(fixed=1000))
    two.spread = 2  # the driver sets it to the number of workers
    got = [two.next(0.0).item for _ in range(9)]
    assert [c.path for c in got[:4]] == ["f0.root", "f1.root", "f0.root", "f1.root"]
    assert sorted((c.path, c.start) for c in got) == [(f"f{i}.root", s) for i in range(3) for s in (0, 1000, 2000)]
    assert two.next(0.0) is None and two.exhausted


def test_source_counts_enough_files_to_feed_its_spread():
    files = tuple(FileSpec(f"f{i}.root", "Events", None) for i in range(10))
    src = FilesetPlanner(Dataset("ds", files, {}), ChunkSizer(fixed=1000), lookahead=2)
    src.spread = 6
    asks = []
    while (got := src.next(0.0)) is not None:
        asks.append(got)
    assert [a.file.path for a in asks] == [f"f{i}.root" for i in range(6)]  # max(lookahead, spread) in flight
    for a in asks:
        src.counted(a, 1500, None)
    first = [src.next(0.0) for _ in range(6)]
    assert {w.item.path for w in first} == {f"f{i}.root" for i in range(6)}


def test_chunk_sizes_summary_is_the_report_of_every_size_in_constant_memory():
    from ddr._ledger import ChunkSizes

    for sizes in ([], [7], list(range(30, 0, -1)), [5, 9, 2, 2, 40] * 11):
        kept = ChunkSizes()
        for s in sizes:
            kept.append(s)
        assert kept.summary() == {"first": sizes[:20], "last": sizes[-20:], "min": min(sizes, default=None),
                                  "max": max(sizes, default=None), "count": len(sizes)}
        assert len(kept.first) <= 20 and len(kept.last) <= 20
