"""Work sources: the lazy supply of work items, one per dataset.

A source answers ``next()`` with one of

* :class:`Work` — process this item (``size`` events);
* :class:`CountRequest` — the entries of this file are unknown: count them on
  a worker, then call ``counted()``;
* ``None`` — nothing right now (waiting for counts) or nothing ever again
  (``exhausted`` tells which).

Nothing is materialised: a fileset of a million chunks costs the memory of the
files being cut right now, never a list of chunks. Work that must run again
(split halves after an exhaustion, retries) goes through ``requeue`` and is
served before new work.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

from ._chunking import ChunkSizer
from ._datasets import Dataset, FileSpec
from ._planning import Chunk, iter_file_chunks

__all__ = ["Work", "CountRequest", "GenericSource", "FilesetSource"]


@dataclass
class Work:
    dataset: str
    item: Any
    size: int
    attempts: int = 0
    not_before: float = 0.0  # monotonic time before which a retry must not start
    history: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class CountRequest:
    dataset: str
    file: FileSpec


class _Requeue:
    def __init__(self) -> None:
        self.redo: deque[Work] = deque()

    def requeue(self, work: Work) -> None:
        self.redo.appendleft(work)

    def _pop_redo(self, now: float) -> Work | None:
        for _ in range(len(self.redo)):
            w = self.redo.popleft()
            if w.not_before <= now:
                return w
            self.redo.append(w)
        return None


class GenericSource(_Requeue):
    """Wraps a user ``preprocess`` generator of ``(item, size)`` or items with ``.size``."""

    def __init__(self, dataset: str, iterable: Iterable[Any]) -> None:
        super().__init__()
        self.dataset = dataset
        self._it: Iterator[Any] | None = iter(iterable)
        self.events_expected: int | None = None
        self._seen = 0

    @property
    def exhausted(self) -> bool:
        return self._it is None and not self.redo

    def next(self, now: float = 0.0) -> Work | CountRequest | None:
        w = self._pop_redo(now)
        if w is not None or self._it is None:
            return w
        try:
            got = next(self._it)
        except StopIteration:
            self._it = None
            self.events_expected = self._seen
            return None
        if isinstance(got, tuple) and len(got) == 2:
            item, size = got
        else:
            item, size = got, getattr(got, "size", 1)
        self._seen += int(size)
        return Work(self.dataset, item, int(size))


class FilesetSource(_Requeue):
    """Cuts a coffea dataset's files into :class:`~ddr._planning.Chunk` work, lazily.

    Files without ``num_entries`` are counted on the workers, at most
    ``max(lookahead, spread)`` at a time, while chunks of counted files are handed out.
    ``skip`` gives, per file path, entry ranges already done (resume): only the
    gaps are planned.

    Chunks come from ``spread`` files at once, in turn (the driver sets it to the
    number of workers). With chunks of several files waiting, each worker can
    take one of a file it already has open (vinecore's locality preference),
    instead of every worker opening the one file being cut: a wide NanoAOD file
    costs 0.2 to 0.5 s to open, per worker.
    """

    def __init__(self, dataset: Dataset, sizer: ChunkSizer, *, lookahead: int = 4,
                 skip: Callable[[str], list[tuple[int, int]]] | None = None) -> None:
        super().__init__()
        self.dataset = dataset
        self.sizer = sizer
        self.lookahead = lookahead
        self._files = iter(dataset.files)
        self._files_left = len(dataset.files)
        self._counted: deque[FileSpec] = deque()
        self._counting = 0
        self._active: deque[Iterator[Chunk]] = deque()  # files being cut, served in turn
        self.spread = 1
        self._skip = skip
        self.known_entries = sum(f.events for f in dataset.files if f.num_entries is not None)
        self.unknown_files = sum(1 for f in dataset.files if f.num_entries is None)
        self.failed_files: list[FileSpec] = []
        self.counted_entries: dict[str, int] = {}  # path -> entries, of files counted on the workers

    @property
    def events_expected(self) -> int | None:
        return None if self.unknown_files else self.known_entries

    @property
    def exhausted(self) -> bool:
        return (not self._active and not self._counted and self._counting == 0
                and self._files_left == 0 and not self.redo)

    def counted(self, file: FileSpec, num_entries: int, uuid: str | None) -> None:
        self._counting -= 1
        self.unknown_files -= 1
        self.known_entries += num_entries
        self.counted_entries[file.path] = num_entries
        self._counted.append(FileSpec(file.path, file.tree, num_entries, uuid or file.uuid, file.steps))

    def count_failed(self, file: FileSpec) -> None:
        self._counting -= 1
        self.unknown_files -= 1
        self.failed_files.append(file)

    def next(self, now: float = 0.0) -> Work | CountRequest | None:
        w = self._pop_redo(now)
        if w is not None:
            return w
        spread = max(1, self.spread)
        while True:
            while self._counted and len(self._active) < spread:
                self._active.append(self._plan(self._counted.popleft()))
            # keep enough files counted (or counting) to cut `spread` of them at once
            if (self._files_left and len(self._active) + len(self._counted) + self._counting < spread
                    and self._counting < max(self.lookahead, spread)):
                got = self._take_file()
                if got is not None:
                    return got
                continue
            if self._active:
                chunks = self._active.popleft()
                chunk = next(chunks, None)
                if chunk is None:
                    continue
                self._active.append(chunks)
                return Work(self.dataset.name, chunk, chunk.size)
            if self._counted:
                continue
            if self._files_left and self._counting < max(self.lookahead, spread):
                got = self._take_file()
                if got is not None:
                    return got
                continue
            return None

    def _take_file(self) -> CountRequest | None:
        """The next file: a count request if its entries are unknown, else queued for cutting (None)."""
        f = next(self._files)
        self._files_left -= 1
        if f.num_entries is None:
            self._counting += 1
            return CountRequest(self.dataset.name, f)
        self._counted.append(f)
        return None

    def _plan(self, f: FileSpec) -> Iterator[Chunk]:
        done = self._skip(f.path) if self._skip else []
        if not done:
            return iter_file_chunks(f, self.dataset.name, self.sizer.next_size)
        return self._plan_gaps(f, done)

    def _plan_gaps(self, f: FileSpec, done: list[tuple[int, int]]) -> Iterator[Chunk]:
        from ._planning import coverage_gaps

        wanted = f.steps if f.steps is not None else ((0, f.num_entries or 0),)
        for a, b in wanted:
            inside = [(max(s, a) - a, min(e, b) - a) for s, e in done if s < b and e > a]
            for start, stop in ((s + a, e + a) for s, e in coverage_gaps(b - a, inside)):
                yield from self._cut(f, start, stop)

    def _cut(self, f: FileSpec, start: int, stop: int) -> Iterator[Chunk]:
        sub = FileSpec(f.path, f.tree, stop - start, f.uuid, None)
        for c in iter_file_chunks(sub, self.dataset.name, self.sizer.next_size):
            yield Chunk(c.dataset, c.path, c.tree, c.start + start, c.stop + start, c.uuid)
