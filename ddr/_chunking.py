"""Adaptive chunk sizing, a pure policy (measurements are passed in).

* The first chunks are ``initial`` events, so first partial results arrive
  within seconds.
* Each finished chunk reports (events, wall seconds, peak MB above baseline).
  The cost model is ``wall = a + b * events``, fitted by least squares over
  the recent observations (so the fixed per-chunk cost of small chunks does
  not inflate the per-event cost); memory per event is the largest recent
  ratio, to stay on the safe side.
* The next size aims at ``target_seconds`` of work, capped so that the memory
  estimate stays below ``memory_fraction * memory_mb`` when an allocation is
  given, grows by at most ``growth`` times per step, and stays in
  ``[min_size, max_size]``.
* After an exhaustion, sizes stay below half the failed size.
* ``fixed`` turns adaptation off (``--chunk-size``).
"""

from __future__ import annotations

from collections import deque

__all__ = ["ChunkSizer"]


class ChunkSizer:
    def __init__(self, *, initial: int = 10_000, target_seconds: float = 30.0, memory_mb: float | None = None,
                 memory_fraction: float = 0.5, min_size: int = 1_000, max_size: int = 2_000_000,
                 growth: float = 4.0, fixed: int | None = None, window: int = 32) -> None:
        self.initial, self.target, self.memory_mb = int(initial), float(target_seconds), memory_mb
        self.memory_fraction, self.min_size, self.max_size = memory_fraction, int(min_size), int(max_size)
        self.growth, self.fixed = growth, fixed
        self._obs: deque[tuple[int, float, float | None]] = deque(maxlen=window)
        self._cap = self.max_size
        self._current = min(max(self.initial, 1), self.max_size)
        self._history: list[int] = []
        self._handed = 0

    @property
    def history(self) -> list[int]:
        return list(self._history)

    def observe(self, events: int, wall_seconds: float, memory_mb: float | None = None) -> None:
        if events > 0 and wall_seconds >= 0:
            self._obs.append((events, wall_seconds, memory_mb))
            self._update()

    def shrink_after_exhaustion(self, failed_size: int) -> None:
        self._cap = max(self.min_size, min(self._cap, failed_size // 2))
        self._current = min(self._current, self._cap)

    def next_size(self) -> int:
        size = int(self.fixed) if self.fixed else self._current
        self._handed += 1
        if len(self._history) < 1000:
            self._history.append(size)
        return size

    def _per_event(self) -> float | None:
        xs = [o[0] for o in self._obs]
        ys = [o[1] for o in self._obs]
        n = len(xs)
        if n == 0:
            return None
        mx, my = sum(xs) / n, sum(ys) / n
        var = sum((x - mx) ** 2 for x in xs)
        if n >= 3 and var > 0:
            b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var
            if b > 0:
                return b
        return max(1e-9, sum(ys) / sum(xs))

    def _update(self) -> None:
        if self.fixed:
            return
        per_event = self._per_event()
        target = self.max_size if not per_event else self.target / per_event
        if self.memory_mb:
            mem = [o[2] / o[0] for o in self._obs if o[2]]
            if mem and max(mem) > 0:
                target = min(target, self.memory_fraction * self.memory_mb / max(mem))
        target = min(target, self._current * self.growth, self._cap, self.max_size)
        self._current = int(max(self.min_size, target))
