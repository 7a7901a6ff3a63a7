"""Adaptive chunk sizing: a pure policy (no clocks; measurements are passed in).

Policy, in the order it is applied:

1. **Start small.** Until the first chunk reports back, every chunk has
   ``initial`` events, so the first partial results arrive within seconds.
2. **Model the time.** Each finished chunk reports ``(events, wall seconds,
   peak MB)``. Over the last ``window`` reports, time is fitted as
   ``wall = a + b * events`` by least squares, so the fixed cost of a chunk
   (opening a file, building the events, starting the task) is not mistaken
   for per-event cost. The fit needs sizes that differ (the largest at least
   1.5 times the smallest); otherwise noise would decide the slope, and
   ``b = wall / events`` is used instead. That overestimates ``b`` when there
   is an overhead, but only below the target: aiming with it from size ``x``
   moves the size to where ``a + b * x`` equals the target, the same fixed
   point. A fit with no visible per-event cost (``b <= 0``) means the
   overhead dominates: chunks grow.
3. **Model the memory, safely.** MB per event is the largest ratio
   ``peak MB / events`` among the recent reports for the largest chunks
   (within 10% of the largest). The baseline memory makes this an
   overestimate for any larger size, so the cap is approached from below.
4. **Aim.** The next size is ``(target_seconds - a) / b`` (as large as
   step 5 allows when the overhead ``a`` alone exceeds the target); when
   ``memory_mb`` is given it is capped so that the predicted memory stays under
   ``memory_fraction * memory_mb``.
5. **Grow in steps.** The size is at most ``growth`` times the largest chunk
   that has finished, so evidence comes before big chunks, however many
   reports arrive about small ones. Shrinking is immediate. The default, 16,
   takes two steps from the first 10k-event chunks to 2M: on 16M narrow
   events with 2 workers the run took 1.6 s against 1.8 s with 4 (four
   steps of small chunks, each paying a chunk's fixed cost). A bigger step
   that runs out of memory is split and caps later sizes (7).
6. **Clamp** to ``[min_size, max_size]``.
7. **Learn from exhaustion.** :meth:`ChunkSizer.shrink_after_exhaustion`
   caps every later size at half of the size that failed (even below
   ``min_size``, and even with ``fixed``: handing out a size known to fail
   only causes more splits).
8. ``fixed`` turns 1 to 6 off (``--chunk-size``).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

__all__ = ["ChunkSizer", "SizerStatistics"]

_HISTORY_KEPT = 1000


@dataclass(frozen=True)
class SizerStatistics:
    """A snapshot of a :class:`ChunkSizer`, for reports."""

    handed_out: int  # number of sizes handed out
    smallest: int | None
    largest: int | None
    last: int | None
    observations: int
    seconds_per_event: float | None  # b of wall = a + b * events
    overhead_seconds: float | None  # a
    mb_per_event: float | None
    cap: int | None  # from exhaustion, if any


def _fit(xs: list[float], ys: list[float], min_spread: float = 1.5) -> tuple[float, float]:
    """``(a, b)`` of ``y = a + b * x``: least squares when the xs vary enough, else through the origin."""
    n = len(xs)
    if n >= 2 and max(xs) >= min_spread * min(xs):
        mx, my = sum(xs) / n, sum(ys) / n
        b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
        if b <= 0:
            return my, 0.0
        a = my - b * mx
        if a >= 0:
            return a, b
        # a negative intercept is noise: fall through to the fit through the origin
    return 0.0, sum(x * y for x, y in zip(xs, ys)) / sum(x * x for x in xs)


class ChunkSizer:
    """Hands out chunk sizes with :meth:`next_size` and learns from :meth:`observe`."""

    def __init__(self, *, initial: int = 10_000, target_seconds: float = 30.0, memory_mb: float | None = None,
                 memory_fraction: float = 0.5, min_size: int = 1_000, max_size: int = 2_000_000,
                 growth: float = 16.0, fixed: int | None = None, window: int = 16) -> None:
        if max_size < 1:
            raise ValueError(f"max_size must be at least 1, got {max_size}")
        if fixed is not None and fixed < 1:
            raise ValueError(f"fixed chunk size must be at least 1, got {fixed}")
        if target_seconds <= 0 or growth <= 1 or not 0 < memory_fraction <= 1:
            raise ValueError("need target_seconds > 0, growth > 1 and 0 < memory_fraction <= 1; got "
                             f"{target_seconds}, {growth}, {memory_fraction}")
        self.target_seconds = float(target_seconds)
        self.memory_mb = memory_mb
        self.memory_fraction = float(memory_fraction)
        self.max_size = int(max_size)
        self.min_size = max(1, min(int(min_size), self.max_size))
        self.growth = float(growth)
        self.fixed = fixed
        self.initial = min(max(int(initial), self.min_size), self.max_size)
        self._obs: deque[tuple[int, float, float | None]] = deque(maxlen=max(2, window))
        self._cap: int | None = None
        self._current = self.initial
        self._model: tuple[float, float] | None = None
        self._mb_per_event: float | None = None
        self._history: list[int] = []
        self._handed = 0
        self._smallest: int | None = None
        self._largest: int | None = None
        self._last: int | None = None

    # ------------------------------------------------------------ handing out
    def next_size(self) -> int:
        """The size of the next chunk."""
        size = self.fixed if self.fixed is not None else self._current
        if self._cap is not None:
            size = min(size, self._cap)
        self._handed += 1
        if len(self._history) < _HISTORY_KEPT:
            self._history.append(size)
        self._smallest = size if self._smallest is None else min(self._smallest, size)
        self._largest = size if self._largest is None else max(self._largest, size)
        self._last = size
        return size

    @property
    def history(self) -> list[int]:
        """The first 1000 sizes handed out (see :meth:`statistics` for the totals)."""
        return list(self._history)

    def statistics(self) -> SizerStatistics:
        a, b = self._model if self._model else (None, None)
        return SizerStatistics(self._handed, self._smallest, self._largest, self._last, len(self._obs), b, a,
                               self._mb_per_event, self._cap)

    # --------------------------------------------------------------- learning
    def observe(self, events: int, wall_seconds: float, memory_mb: float | None = None) -> None:
        """A chunk of ``events`` finished in ``wall_seconds`` with ``memory_mb`` peak memory."""
        if events <= 0 or not math.isfinite(wall_seconds) or wall_seconds < 0:
            return
        if memory_mb is not None and (not math.isfinite(memory_mb) or memory_mb <= 0):
            memory_mb = None
        self._obs.append((int(events), float(wall_seconds), memory_mb))
        self._refit()
        if self.fixed is None:
            self._current = self._target()

    def shrink_after_exhaustion(self, failed_size: int) -> None:
        """A chunk of ``failed_size`` events ran out of memory or time: stay below half of it from now on."""
        cap = max(1, int(failed_size) // 2)
        self._cap = cap if self._cap is None else min(self._cap, cap)
        self._current = min(self._current, self._cap)

    def _refit(self) -> None:
        xs = [float(e) for e, _, _ in self._obs]
        self._model = _fit(xs, [w for _, w, _ in self._obs])
        mem = [(e, m) for e, _, m in self._obs if m is not None]
        if mem:
            top = max(e for e, _ in mem)
            self._mb_per_event = max(m / e for e, m in mem if e >= 0.9 * top)

    def _target(self) -> int:
        assert self._model is not None
        a, b = self._model
        largest_done = max(e for e, _, _ in self._obs)
        limit = largest_done * self.growth
        target = limit if b <= 0 or a >= self.target_seconds else (self.target_seconds - a) / b
        if self.memory_mb and self._mb_per_event:
            target = min(target, self.memory_fraction * self.memory_mb / self._mb_per_event)
        target = min(target, limit, self.max_size)
        size = max(self.min_size, int(target))
        return size if self._cap is None else min(size, self._cap)
