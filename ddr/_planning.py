"""Lazy chunk planning: files -> (file, tree, start, stop) chunks, as pure generators.

``iter_file_chunks`` never builds a list: it asks ``next_size()`` before each
chunk (so adaptive sizing takes effect mid-file) and avoids a tiny last chunk
by taking the remainder when it is at most 1.5 times the size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

__all__ = ["Chunk", "iter_file_chunks", "merge_ranges", "coverage_gaps", "find_overlaps"]


@dataclass(frozen=True, order=True)
class Chunk:
    dataset: str
    path: str
    tree: str
    start: int
    stop: int
    uuid: str | None = None

    @property
    def size(self) -> int:
        return self.stop - self.start

    def split(self, parts: int = 2) -> tuple["Chunk", ...]:
        n = self.size
        parts = max(1, min(parts, n))
        bounds = [self.start + (n * i) // parts for i in range(parts + 1)]
        return tuple(Chunk(self.dataset, self.path, self.tree, a, b, self.uuid) for a, b in zip(bounds, bounds[1:]))

    def label(self) -> str:
        return f"{self.path} [{self.start}, {self.stop})"


def iter_file_chunks(file, dataset: str, next_size: Callable[[], int]) -> Iterator[Chunk]:
    if file.num_entries is None:
        raise ValueError(f"{file.path}: entries must be counted before planning chunks")
    if file.steps:
        for a, b in file.steps:
            if b > a:
                yield Chunk(dataset, file.path, file.tree, int(a), int(b), file.uuid)
        return
    start, n = 0, int(file.num_entries)
    while start < n:
        size = max(1, int(next_size()))
        stop = n if n - start <= 1.5 * size else start + size
        yield Chunk(dataset, file.path, file.tree, start, stop, file.uuid)
        start = stop


def merge_ranges(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a, b in sorted(r for r in ranges if r[1] > r[0]):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def coverage_gaps(total: int, ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    gaps, pos = [], 0
    for a, b in merge_ranges(ranges):
        if a > pos:
            gaps.append((pos, min(a, total)))
        pos = max(pos, b)
    if pos < total:
        gaps.append((pos, total))
    return [g for g in gaps if g[1] > g[0]]


def find_overlaps(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    out, end = [], None
    for a, b in sorted(ranges):
        if end is not None and a < end:
            out.append((a, min(b, end)))
        end = b if end is None else max(end, b)
    return out
