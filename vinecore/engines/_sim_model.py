"""What the simulated cluster draws from: measured task durations, and a bounded latency histogram.

:class:`Durations` holds, per task category, measured ``(wall_time s, memory MB)``
pairs of successful tasks: read from a manager's transactions log
(``RUN_DIR/transactions.jsonl``), from an extract of one (JSON), or made
constant. A draw picks one measured pair at random, so the simulated run has
the measured run's shape; :meth:`Durations.scaled` stretches one category to a
chosen mean (e.g. 2-second chunks) keeping that shape.

:class:`LogHistogram` keeps quantiles of millions of samples in a few hundred
counters, so the simulator's own memory does not grow with the run.
"""

from __future__ import annotations

import json
import math
import os
import random
from dataclasses import dataclass, field

__all__ = ["Durations", "LogHistogram"]


@dataclass(frozen=True)
class Durations:
    samples: dict[str, tuple[tuple[float, float], ...]] = field(default_factory=dict)
    partial_bytes: int = 30_000  # size of one partial result (a temp), for transfer times
    default: tuple[float, float] = (1.0, 0.0)  # categories without samples

    @classmethod
    def constant(cls, seconds: float = 1.0, partial_bytes: int = 30_000) -> "Durations":
        return cls({}, partial_bytes, (seconds, 0.0))

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "Durations":
        """A transactions log (``.jsonl``) or an extract written by :meth:`to_json`."""
        path = os.fspath(path)
        if path.endswith(".jsonl"):
            return cls.from_transactions(path)
        with open(path) as f:
            doc = json.load(f)
        try:
            samples = {cat: tuple((float(w), float(m)) for w, m in rows) for cat, rows in doc["categories"].items()}
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path} is not a durations extract: it needs {{'categories': {{name: [[wall_s, "
                             f"memory_mb], ...]}}}} ({type(exc).__name__}: {exc})") from None
        return cls(samples, int(doc.get("partial_bytes", 30_000)))

    @classmethod
    def from_transactions(cls, path: str | os.PathLike) -> "Durations":
        samples: dict[str, list[tuple[float, float]]] = {}
        with open(path) as f:
            for line in f:
                rec = json.loads(line)
                measured = rec.get("measured")
                if rec.get("state") != "result" or rec.get("detail") != "success" or not measured:
                    continue
                samples.setdefault(rec.get("category") or "default", []).append(
                    (float(measured["wall_time"]), float(measured.get("memory") or 0.0)))
        if not samples:
            raise ValueError(f"{path} has no successful task results with measurements; is it a vinecore "
                             "transactions log (RUN_DIR/transactions.jsonl) of a run that finished tasks?")
        return cls({cat: tuple(rows) for cat, rows in samples.items()})

    def to_json(self, **source: object) -> dict:
        return {"source": source, "partial_bytes": self.partial_bytes,
                "categories": {cat: [[round(w, 6), round(m, 3)] for w, m in rows]
                               for cat, rows in sorted(self.samples.items())}}

    def mean(self, category: str) -> float:
        rows = self.samples.get(category)
        return sum(w for w, _ in rows) / len(rows) if rows else self.default[0]

    def scaled(self, category: str, mean_seconds: float) -> "Durations":
        """The same shape, with ``category``'s mean wall time set to ``mean_seconds``."""
        rows = self.samples.get(category)
        if not rows:
            raise ValueError(f"no {category!r} samples to scale; categories: {sorted(self.samples)}")
        k = mean_seconds / self.mean(category)
        samples = dict(self.samples)
        samples[category] = tuple((w * k, m) for w, m in rows)
        return Durations(samples, self.partial_bytes, self.default)

    def draw(self, category: str, rng: random.Random) -> tuple[float, float]:
        rows = self.samples.get(category)
        if not rows:
            return self.default
        return rows[int(rng.random() * len(rows))]


class LogHistogram:
    """Counts in logarithmic bins (``per_decade`` per factor of 10) from 1 µs up; zero and below separately."""

    def __init__(self, per_decade: int = 20, low: float = 1e-6) -> None:
        self.per_decade = per_decade
        self.low = low
        self.counts: dict[int, int] = {}
        self.zero = 0
        self.n = 0
        self.total = 0.0
        self.max = 0.0

    def add(self, x: float) -> None:
        self.n += 1
        self.total += x
        if x > self.max:
            self.max = x
        if x <= self.low:
            self.zero += 1
            return
        b = int(math.log10(x / self.low) * self.per_decade)
        self.counts[b] = self.counts.get(b, 0) + 1

    def quantile(self, q: float) -> float:
        if self.n == 0:
            return 0.0
        rank = q * self.n
        seen = self.zero
        if seen >= rank:
            return 0.0
        for b in sorted(self.counts):
            seen += self.counts[b]
            if seen >= rank:
                return self.low * 10 ** ((b + 0.5) / self.per_decade)  # the bin's geometric middle
        return self.max

    def summary(self, scale: float = 1e3, digits: int = 3) -> dict[str, float]:
        """Mean and quantiles, multiplied by ``scale`` (default: seconds to milliseconds)."""
        return {"n": self.n, "mean": round(self.total / self.n * scale, digits) if self.n else 0.0,
                "median": round(self.quantile(0.5) * scale, digits), "p90": round(self.quantile(0.9) * scale, digits),
                "p99": round(self.quantile(0.99) * scale, digits), "max": round(self.max * scale, digits)}
