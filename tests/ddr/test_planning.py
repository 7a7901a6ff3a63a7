"""Lazy planning: nothing is materialised, whatever the number of chunks."""

import time
import tracemalloc

import vinecore
from ddr._chunking import ChunkSizer
from ddr._datasets import Dataset, FileSpec
from ddr._planning import Chunk, coverage_gaps, iter_file_chunks, merge_ranges
from ddr._sources import FilesetSource
from ddr import DynamicDataReduction


def test_chunks_cover_file_exactly_with_changing_sizes():
    sizes = iter([10, 10, 25, 3, 1000])
    f = FileSpec("f.root", "Events", 100)
    chunks = list(iter_file_chunks(f, "ds", lambda: next(sizes)))
    assert chunks[0].start == 0 and chunks[-1].stop == 100
    assert all(a.stop == b.start for a, b in zip(chunks, chunks[1:]))
    assert [c.size for c in chunks] == [10, 10, 25, 3, 52]


def test_split_halves_cover_range():
    c = Chunk("ds", "f", "Events", 7, 20)
    a, b = c.split(2)
    assert (a.start, a.stop, b.start, b.stop) == (7, 13, 13, 20)
    assert coverage_gaps(30, [(0, 5), (10, 12), (11, 20)]) == [(5, 10), (20, 30)]
    assert merge_ranges([(5, 6), (0, 2), (2, 4)]) == [(0, 4), (5, 6)]


def test_million_chunk_fileset_is_not_materialised():
    files = tuple(FileSpec(f"root://host//f{i}.root", "Events", 10_000_000) for i in range(1000))
    ds = Dataset("big", files, {"dataset": "big"})  # 1000 files x 10^4 chunks = 10^7 chunks
    tracemalloc.start()
    t0 = time.perf_counter()
    src = FilesetSource(ds, ChunkSizer(fixed=1000))
    first = [src.next() for _ in range(100)]
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
    import random

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
