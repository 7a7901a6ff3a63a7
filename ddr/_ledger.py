"""Exactly-once accounting: what each partial result covers, per dataset.

Every partial result kept on the workers carries a :class:`Coverage`: the
number of events and chunks in it and, for file-based work, the merged entry
ranges per file. Merging two partials merges their coverage and refuses
overlaps, so an event can never be counted twice without the run noticing.
The final result's coverage is what the report calls ``events_processed``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from ._planning import Chunk, gaps_within, merge_ranges

__all__ = ["Coverage", "DoubleCountError", "DatasetLedger", "ChunkSizes", "failed_fileset"]


class DoubleCountError(RuntimeError):
    pass


@dataclass
class Coverage:
    events: int = 0
    chunks: int = 0
    ranges: dict[str, list[tuple[int, int]]] = field(default_factory=dict)

    @classmethod
    def of(cls, item: Any, size: int) -> "Coverage":
        if isinstance(item, Chunk):
            return cls(size, 1, {item.path: [(item.start, item.stop)]})
        return cls(size, 1, {})

    def merge(self, other: "Coverage") -> "Coverage":
        ranges = {k: list(v) for k, v in self.ranges.items()}
        for path, rs in other.ranges.items():
            mine = ranges.get(path)
            if mine is None:
                ranges[path] = list(rs)
                continue
            for a, b in rs:
                for c, d in mine:
                    if a < d and c < b:
                        raise DoubleCountError(
                            f"entries [{max(a, c)}, {min(b, d)}) of {path} would be counted twice; "
                            "this is a bug in ddr, please report it with the run directory")
            ranges[path] = merge_ranges(mine + list(rs))
        return Coverage(self.events + other.events, self.chunks + other.chunks, ranges)


class ChunkSizes:
    """The sizes of the chunks planned, as the report shows them: the first and last ``keep``, the
    smallest, the largest and how many. Constant memory however many chunks a run plans."""

    __slots__ = ("first", "last", "min", "max", "count", "keep")

    def __init__(self, keep: int = 20) -> None:
        self.keep = keep
        self.first: list[int] = []
        self.last: deque[int] = deque(maxlen=keep)
        self.min: int | None = None
        self.max: int | None = None
        self.count = 0

    def append(self, size: int) -> None:
        if self.count < self.keep:
            self.first.append(size)
        self.last.append(size)
        self.count += 1
        if self.min is None or size < self.min:
            self.min = size
        if self.max is None or size > self.max:
            self.max = size

    def __len__(self) -> int:
        return self.count

    def summary(self) -> dict[str, Any]:
        return {"first": list(self.first), "last": list(self.last), "min": self.min, "max": self.max,
                "count": self.count}


@dataclass
class DatasetLedger:
    name: str
    events_expected: int | None = None
    events_processed: int = 0  # events in partials that succeeded (still to be merged)
    chunks_done: int = 0
    chunks_failed: int = 0
    chunks_running: int = 0
    failed: list[dict[str, Any]] = field(default_factory=list)
    splits: list[dict[str, Any]] = field(default_factory=list)
    chunk_sizes: ChunkSizes = field(default_factory=ChunkSizes)  # bounded: not one entry per chunk
    files_bad: list[dict[str, Any]] = field(default_factory=list)
    events_resumed: int = 0  # taken from a checkpoint instead of processed in this run
    final: Coverage | None = None
    complete: bool = False
    error: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)  # sums of the tasks' vinecore metrics (issue 12)

    def fail_chunk(self, item: Any, size: int, error: str, kind: str = "error") -> None:
        """Record a work item that will not be in the result: ``kind`` is bad input, processor error,
        resource exhaustion, worker lost or unsatisfiable."""
        self.chunks_failed += 1
        entry: dict[str, Any] = {"kind": kind, "error": error, "events": size}
        if isinstance(item, Chunk):
            entry.update(file=item.path, tree=item.tree, start=item.start, stop=item.stop, uuid=item.uuid)
        else:
            entry["item"] = repr(item)[:200]
        self.failed.append(entry)

    def to_report(self, coverage: Coverage | None = None,
                  expected_files: dict[str, tuple[str, list[tuple[int, int]] | None]] | None = None
                  ) -> dict[str, Any]:
        """The dataset's part of the run report. ``coverage``: what the written result covers (the final
        coverage, or what a stopped run held); ``expected_files``: the planner's files and their ranges."""
        cov = coverage if coverage is not None else (self.final or Coverage())
        files = {}
        for path, (tree, expected) in (expected_files or {}).items():
            files[path] = {"tree": tree, "expected": None if expected is None else [list(r) for r in expected],
                           "covered": [list(r) for r in cov.ranges.get(path, [])]}
        return {
            "events_expected": self.events_expected,
            "events_processed": cov.events,
            "events_resumed": self.events_resumed,
            "complete": self.complete,
            "chunks_done": self.chunks_done,
            "chunks_failed": self.chunks_failed,
            "failed_chunks": self.failed,
            "bad_files": self.files_bad,
            "splits": self.splits,
            "chunk_sizes": self.chunk_sizes.summary(),
            "files": files,
            "error": self.error,
            # issue 12: bytes the tasks read, by source (ddr._remote: server, node cache, local disk)
            "bytes_read": {src: int(self.metrics.get(f"bytes_{src}", 0)) for src in ("remote", "cache", "local")},
        }


def failed_fileset(report_datasets: dict[str, dict[str, Any]],
                   metadata: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """What a run's result lacks, as a coffea fileset that ``ddr run`` accepts.

    Per incomplete dataset and file: the expected entry ranges that the result does not cover become
    ``steps`` (coffea's preprocessed dialect; they are disjoint from what is covered, so a redo merged
    with the result cannot count an event twice); files whose entries were never known (unreadable,
    or not reached before the run stopped) are listed whole.
    """
    out: dict[str, Any] = {}
    for ds, rep in report_datasets.items():
        if rep.get("complete"):
            continue
        files: dict[str, Any] = {}
        for path, f in rep.get("files", {}).items():
            if f["expected"] is None:
                files[path] = f["tree"]
                continue
            covered = [tuple(r) for r in f["covered"]]
            gaps = [g for a, b in f["expected"] for g in gaps_within(a, b, covered)]
            if gaps:
                files[path] = {"object_path": f["tree"], "steps": [list(g) for g in gaps]}
        if files:
            meta = {k: v for k, v in metadata.get(ds, {}).items() if k != "dataset"}
            out[ds] = {"files": files, "metadata": meta} if meta else {"files": files}
    return out

