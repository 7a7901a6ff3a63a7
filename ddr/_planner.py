"""Planners: the lazy supply of one dataset's work, and what becomes of work that failed.

A planner owns everything about one dataset's work items, for any item type:

* **cutting** them lazily (nothing is materialised: a fileset of a million
  chunks costs the memory of the files being cut right now);
* **counting** files whose number of entries is unknown (it asks for a count
  task with :class:`CountRequest` and is told the answer with ``counted``);
* **sizing** (an adaptive :class:`~ddr._chunking.ChunkSizer` learns from
  ``observe``);
* **resume gaps**: entry ranges a checkpoint already covers are never planned;
* **splitting** an item that ran out of memory or time (:meth:`split`): an
  item type says how it splits with a ``split(parts)`` method returning
  parts that have a ``size`` (as :class:`~ddr._planning.Chunk` does), or the planner is given a ``splitter``;
  otherwise it is not splittable and fails clearly;
* **retries**: work that must run again (split halves, retries after a lost
  worker or a transient read error, with a ``not_before`` time for backoff) is
  served before new work.

Planners are pure: no clocks, threads or I/O; times are passed in as ``now``.
``next(now)`` answers with :class:`Work`, a :class:`CountRequest`, or None
(nothing right now; ``exhausted`` tells whether ever again).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

from ._chunking import ChunkSizer
from ._datasets import Dataset, FileSpec
from ._planning import Chunk, gaps_within, iter_file_chunks, merge_ranges

__all__ = ["Work", "CountRequest", "Planner", "GenericPlanner", "FilesetPlanner"]


@dataclass(eq=False, slots=True)
class Work:
    """One work item of a dataset: ``size`` events (or units) of ``item``. (Slotted, with a tuple for
    ``history``: thousands are in flight at once, and each object the garbage collector tracks costs.)"""

    dataset: str
    item: Any
    size: int
    attempts: int = 0
    not_before: float = 0.0  # retries wait until then (backoff)
    history: tuple[str, ...] = ()


@dataclass(frozen=True, eq=False)
class CountRequest:
    """Count the entries of ``file`` on a worker (``args`` are the worker-side ``count`` arguments)."""

    dataset: str
    file: FileSpec
    attempts: int = 0
    not_before: float = 0.0

    @property
    def args(self) -> tuple[Any, ...]:
        return (self.file.path, self.file.tree)


class Planner:
    """Common part: the queue of work to redo, splitting, and the interface the reduction uses."""

    def __init__(self, dataset: str, *, splitter: Callable[[Any, int], Iterable[tuple[Any, int]]] | None = None,
                 min_split: int = 1) -> None:
        self.dataset = dataset
        self.splitter = splitter
        self.min_split = max(1, int(min_split))
        self._redo: deque[Work | CountRequest] = deque()
        self.spread = 1  # how many workers there are (the fileset planner cuts that many files at once)

    # -------------------------------------------------------- the interface
    @property
    def exhausted(self) -> bool:
        """Nothing will ever come from ``next`` again (counting and redo queue included)."""
        raise NotImplementedError

    @property
    def events_expected(self) -> int | None:
        """Events (units) of the whole dataset, once known."""
        raise NotImplementedError

    def next(self, now: float) -> Work | CountRequest | None:
        got = self._pop_redo(now)
        return got if got is not None else self._next_new()

    def _next_new(self) -> Work | CountRequest | None:
        raise NotImplementedError

    def observe(self, work: Work, wall_seconds: float, memory_mb: float | None) -> None:
        """A work item succeeded with these measurements (adaptive sizing learns from them)."""

    def locality(self, work: Work) -> str | None:
        """A key for workers that have what this item needs (an open file), or None."""
        return None

    def empty_item(self) -> Work | None:
        """Work of size 0 whose result has the shape of an empty dataset's (None: none exists)."""
        return None

    def expected_files(self) -> dict[str, tuple[str, list[tuple[int, int]] | None]]:
        """``{path: (tree, expected entry ranges or None while unknown)}`` for file-based datasets."""
        return {}

    # ----------------------------------------------------------- redo queue
    def requeue(self, work: Work | CountRequest, not_before: float = 0.0) -> None:
        """Serve ``work`` again, before new work, but not before ``not_before``."""
        if isinstance(work, Work):
            work.not_before = not_before
            self._redo.appendleft(work)
        else:
            self._redo.appendleft(CountRequest(work.dataset, work.file, work.attempts, not_before))

    def next_ready_at(self) -> float | None:
        """When the earliest waiting retry may start (None: nothing waits)."""
        return min((w.not_before for w in self._redo), default=None)

    def _pop_redo(self, now: float) -> Work | CountRequest | None:
        for _ in range(len(self._redo)):
            w = self._redo.popleft()
            if w.not_before <= now:
                return w
            self._redo.append(w)
        return None

    # ------------------------------------------------------------ splitting
    def split(self, work: Work, parts: int = 2) -> list[Work] | None:
        """``work`` cut in ``parts`` (None when it cannot be split further or its type cannot split)."""
        if work.size < 2 * self.min_split:
            return None
        if hasattr(work.item, "split") and hasattr(work.item, "size"):  # the protocol: Chunk has both
            pieces = [(p, int(getattr(p, "size"))) for p in work.item.split(parts)]
        elif self.splitter is not None:
            pieces = [(p, int(n)) for p, n in self.splitter(work.item, work.size)]
        else:
            return None
        if len(pieces) < 2 or sum(n for _, n in pieces) != work.size:
            return None  # a split must cover the item exactly, or accounting would break
        return [Work(work.dataset, p, n, history=(*work.history, "split")) for p, n in pieces]

    def shrink_after_exhaustion(self, size: int) -> None:
        """A work item of ``size`` ran out of its resources: plan smaller ones from now on."""


class GenericPlanner(Planner):
    """Wraps a user ``preprocess`` generator of ``(item, size)`` pairs or items with a ``.size``."""

    def __init__(self, dataset: str, iterable: Iterable[Any], **kw: Any) -> None:
        super().__init__(dataset, **kw)
        self._it: Iterator[Any] | None = iter(iterable)
        self._seen = 0

    @property
    def exhausted(self) -> bool:
        return self._it is None and not self._redo

    @property
    def events_expected(self) -> int | None:
        return self._seen if self._it is None else None

    def _next_new(self) -> Work | None:
        if self._it is None:
            return None
        try:
            got = next(self._it)
        except StopIteration:
            self._it = None
            return None
        if isinstance(got, tuple) and len(got) == 2:
            item, size = got
        else:
            item, size = got, getattr(got, "size", 1)
        self._seen += int(size)
        return Work(self.dataset, item, int(size))


class FilesetPlanner(Planner):
    """Cuts a coffea dataset's files into :class:`~ddr._planning.Chunk` work, lazily.

    Files without ``num_entries`` are counted on the workers, at most
    ``max(lookahead, spread)`` at a time, while chunks of counted files are
    handed out. ``skip`` maps a file path to entry ranges already done
    (resume): only the gaps are planned.

    Chunks come from ``spread`` files at once, in turn (the driver sets it to
    the number of workers), so each worker can take a chunk of a file it has
    open already (vinecore's locality preference) instead of every worker
    opening the one file being cut: a wide NanoAOD file costs 0.2 to 0.5 s to
    open, per worker.
    """

    def __init__(self, dataset: Dataset, sizer: ChunkSizer, *, lookahead: int = 4,
                 skip: dict[str, list[tuple[int, int]]] | None = None, **kw: Any) -> None:
        super().__init__(dataset.name, **kw)
        self.ds = dataset
        self.sizer = sizer
        self.lookahead = lookahead
        self._skip = skip or {}
        self._files = iter(dataset.files)
        self._files_left = len(dataset.files)
        self._counted: deque[FileSpec] = deque()
        self._counting = 0
        self._active: deque[Iterator[Chunk]] = deque()  # files being cut, served in turn
        self._known: dict[str, FileSpec] = {f.path: f for f in dataset.files if f.num_entries is not None}
        self._first_readable: FileSpec | None = None
        self.known_entries = sum(_expected_events(f) for f in self._known.values())
        self.unknown_files = len(dataset.files) - len(self._known)
        self.failed_files: list[FileSpec] = []

    @property
    def events_expected(self) -> int | None:
        """Known once every file is counted; a file that could not be counted leaves it unknown."""
        return None if self.unknown_files or self.failed_files else self.known_entries

    @property
    def exhausted(self) -> bool:
        return (not self._active and not self._counted and self._counting == 0
                and self._files_left == 0 and not self._redo)

    def expected_files(self) -> dict[str, tuple[str, list[tuple[int, int]] | None]]:
        out: dict[str, tuple[str, list[tuple[int, int]] | None]] = {}
        for f in self.ds.files:
            known = self._known.get(f.path)
            out[f.path] = (f.tree, None if known is None else _expected_ranges(known))
        return out

    def counted(self, req: CountRequest, num_entries: int, uuid: str | None) -> None:
        self._counting -= 1
        self.unknown_files -= 1
        f = req.file
        spec = FileSpec(f.path, f.tree, num_entries, uuid or f.uuid, f.steps)
        self._known[f.path] = spec
        self.known_entries += _expected_events(spec)
        self._counted.append(spec)

    def count_failed(self, req: CountRequest) -> None:
        self._counting -= 1
        self.unknown_files -= 1
        self.failed_files.append(req.file)

    def count_retry(self, req: CountRequest, not_before: float) -> None:
        """Count this file again later (a transient error or a lost worker)."""
        self._counting -= 1
        self.requeue(CountRequest(req.dataset, req.file, req.attempts + 1, not_before), not_before)

    def observe(self, work: Work, wall_seconds: float, memory_mb: float | None) -> None:
        self.sizer.observe(work.size, wall_seconds, memory_mb)

    def shrink_after_exhaustion(self, size: int) -> None:
        self.sizer.shrink_after_exhaustion(size)

    def locality(self, work: Work) -> str | None:
        return getattr(work.item, "path", None)

    def empty_item(self) -> Work | None:
        f = self._first_readable
        if f is None:
            return None
        return Work(self.dataset, Chunk(self.dataset, f.path, f.tree, 0, 0, f.uuid), 0)

    # --------------------------------------------------------------- cutting
    def next(self, now: float) -> Work | CountRequest | None:
        got = self._pop_redo(now)
        if isinstance(got, CountRequest):
            self._counting += 1
        return got if got is not None else self._next_new()

    def _next_new(self) -> Work | CountRequest | None:
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
                return Work(self.dataset, chunk, chunk.size)
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
            return CountRequest(self.dataset, f)
        self._counted.append(f)
        return None

    def _plan(self, f: FileSpec) -> Iterator[Chunk]:
        if self._first_readable is None:
            self._first_readable = f
        done = self._skip.get(f.path)
        wanted = _expected_ranges(f)
        if done:
            wanted = [g for a, b in wanted for g in gaps_within(a, b, done)]
        return self._cut(f, wanted)

    def _cut(self, f: FileSpec, ranges: list[tuple[int, int]]) -> Iterator[Chunk]:
        if f.steps is not None and not self._skip.get(f.path):
            yield from iter_file_chunks(f, self.dataset, self.sizer.next_size)  # coffea's steps, verbatim
            return
        for start, stop in ranges:
            sub = FileSpec(f.path, f.tree, stop - start, f.uuid, None)
            for c in iter_file_chunks(sub, self.dataset, self.sizer.next_size):
                yield Chunk(c.dataset, c.path, c.tree, c.start + start, c.stop + start, c.uuid)


def _expected_ranges(f: FileSpec) -> list[tuple[int, int]]:
    """The entry ranges of a counted file that belong to the dataset: its steps, else all entries."""
    if f.steps is not None:
        return merge_ranges(tuple(s) for s in f.steps)
    return [(0, f.num_entries or 0)] if f.num_entries else []


def _expected_events(f: FileSpec) -> int:
    return sum(b - a for a, b in _expected_ranges(f))

