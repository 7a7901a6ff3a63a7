"""Lazy chunk planning: files -> (file, tree, start, stop) chunks, as pure generators.

Policy:

* Nothing is materialised. :func:`iter_file_chunks` is a generator that asks
  ``next_size()`` before each chunk, so a file of 10**9 entries starts
  yielding at once, and a size changed by adaptive sizing takes effect in the
  middle of a file.
* The last chunk is never tiny: when what remains is at most 1.5 times the
  size, it all goes in one chunk (so the last chunk of a file is between 0.5
  and 1.5 times the size it was cut with).
* A file with ``steps`` (coffea's preprocessed dialect) yields exactly those
  steps; empty steps and zero-entry files yield nothing.
* :meth:`Chunk.split` cuts a chunk into contiguous, balanced parts that cover
  exactly its range (used when a chunk exhausts its resources).

The range helpers (:func:`merge_ranges`, :func:`coverage_gaps`,
:func:`find_overlaps`) work on half-open ``(start, stop)`` entry ranges and
serve exactly-once accounting and resume: what part of a file is not covered
yet, and which entries would be counted twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

from ._datasets import FileSpec

__all__ = ["Chunk", "iter_file_chunks", "merge_ranges", "coverage_gaps", "gaps_within", "find_overlaps"]


@dataclass(frozen=True, order=True)
class Chunk:
    """Entries ``[start, stop)`` of ``tree`` in the file ``path`` of ``dataset``."""

    dataset: str
    path: str
    tree: str
    start: int
    stop: int
    uuid: str | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.start <= self.stop:
            raise ValueError(f"chunk of {self.path!r} has an invalid entry range [{self.start}, {self.stop}): "
                             "need 0 <= start <= stop")

    @property
    def size(self) -> int:
        return self.stop - self.start

    def split(self, parts: int = 2) -> tuple["Chunk", ...]:
        """``parts`` contiguous chunks, sizes differing by at most one, covering exactly ``[start, stop)``.

        A chunk smaller than ``parts`` splits into single entries; an empty
        chunk into itself.
        """
        if parts < 1:
            raise ValueError(f"cannot split {self.label()} into {parts} parts; need at least 1")
        n = self.size
        parts = max(1, min(parts, n))
        bounds = [self.start + (n * i) // parts for i in range(parts + 1)]
        return tuple(Chunk(self.dataset, self.path, self.tree, a, b, self.uuid) for a, b in zip(bounds, bounds[1:]))

    def label(self) -> str:
        """``"path [start, stop)"``, for messages."""
        return f"{self.path} [{self.start}, {self.stop})"


def iter_file_chunks(file: FileSpec, dataset: str, next_size: Callable[[], int]) -> Iterator[Chunk]:
    """Chunks of ``file``, cut lazily with sizes from ``next_size()`` (or its ``steps`` verbatim)."""
    if file.num_entries is None:
        raise ValueError(f"{file.path}: the number of entries of tree {file.tree!r} must be known before "
                         "planning chunks; count it first (ddr does this on the workers)")
    if file.steps is not None:
        for a, b in file.steps:
            if b > a:
                yield Chunk(dataset, file.path, file.tree, a, b, file.uuid)
        return
    start, n = 0, file.num_entries
    while start < n:
        size = next_size()
        if size < 1:
            raise ValueError(f"next_size() returned {size!r} while cutting {file.path}; chunk sizes must be >= 1")
        stop = n if n - start <= 1.5 * size else start + size
        yield Chunk(dataset, file.path, file.tree, start, stop, file.uuid)
        start = stop


def merge_ranges(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted union of the ranges; overlapping and touching ranges merge, empty ones vanish."""
    out: list[tuple[int, int]] = []
    for a, b in sorted((a, b) for a, b in ranges if b > a):
        if out and a <= out[-1][1]:
            if b > out[-1][1]:
                out[-1] = (out[-1][0], b)
        else:
            out.append((a, b))
    return out


def coverage_gaps(total: int, ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """The parts of ``[0, total)`` that no range covers, in order."""
    gaps: list[tuple[int, int]] = []
    pos = 0
    for a, b in merge_ranges(ranges):
        if a >= total:
            break
        if a > pos:
            gaps.append((pos, a))
        pos = max(pos, b)
    if pos < total:
        gaps.append((pos, total))
    return gaps


def gaps_within(start: int, stop: int, done: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """The parts of ``[start, stop)`` that no range of ``done`` covers, in order."""
    inside = [(max(s, start) - start, min(e, stop) - start) for s, e in done if s < stop and e > start]
    return [(s + start, e + start) for s, e in coverage_gaps(stop - start, inside)]


def find_overlaps(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Entries covered by more than one range, as merged ranges (empty when the ranges are disjoint)."""
    overlaps: list[tuple[int, int]] = []
    end: int | None = None
    for a, b in sorted((a, b) for a, b in ranges if b > a):
        if end is not None and a < end:
            overlaps.append((a, min(b, end)))
        end = b if end is None else max(end, b)
    return merge_ranges(overlaps)
